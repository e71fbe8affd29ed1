"""An operator built only for the examples and channels someone looks at (``s6``'s decays are
an expansion of much smaller streams); :func:`resolve` builds it."""

from __future__ import annotations

import torch

from .checks import _check_multiplicity


class DeferredOperator:
    """An operator built only for the examples and channels someone looks at.

    ``build(examples, channels)`` returns the concrete operator of the first ``examples``
    examples (``None``: all) and of the channels ``channels`` (an index tensor; ``None``: all)
    of an operator of batch shape ``(batch, channels)``. A layer whose factors are expansions
    of much smaller streams hands this over instead (``s6``: its decay ``dt x A`` is
    ``(B, E, L, N)``, built from ``(B, L, E)`` and ``(E, N)``), so that a probe that takes 8
    examples and 16 channels never expands the rest. :meth:`batch_head` and :meth:`index_batch`
    narrow it as they narrow any operator; :meth:`resolve` builds it.
    """

    def __init__(self, build, batch_shape: tuple[int, int], seq_len: int, multiplicity: int = 1, *,
                 examples: int | None = None, channels: torch.Tensor | None = None):
        if not callable(build):
            raise TypeError(f"build must be a function (examples, channels) -> operator, got {build!r}")
        if len(batch_shape) != 2:
            raise ValueError(f"a deferred operator has batch shape (batch, channels), got {tuple(batch_shape)}")
        self.build, self.full_batch_shape, self.seq_len = build, tuple(batch_shape), seq_len
        self.multiplicity = _check_multiplicity(multiplicity)
        self.examples, self.channels = examples, channels

    @property
    def batch_shape(self) -> torch.Size:
        b, c = self.full_batch_shape
        return torch.Size((b if self.examples is None else min(self.examples, b),
                           c if self.channels is None else len(self.channels)))

    def batch_head(self, n: int) -> DeferredOperator:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"batch head size must be a positive int, got {n!r}")
        return DeferredOperator(self.build, self.full_batch_shape, self.seq_len, self.multiplicity,
                                examples=min(n, self.batch_shape[0]), channels=self.channels)

    def index_batch(self, dim: int, index: torch.Tensor) -> DeferredOperator:
        if dim != 1:
            raise ValueError(f"a deferred operator selects along its channel dim (1) only, got dim={dim!r}")
        index = torch.as_tensor(index, dtype=torch.long)
        channels = index if self.channels is None else self.channels[index]
        return DeferredOperator(self.build, self.full_batch_shape, self.seq_len, self.multiplicity,
                                examples=self.examples, channels=channels)

    def resolve(self):
        """The concrete operator of the chosen examples and channels."""
        return self.build(self.examples, self.channels)

    def __repr__(self) -> str:
        return f"DeferredOperator(batch_shape={tuple(self.batch_shape)}, L={self.seq_len})"


def resolve(op):
    """``op`` itself, or the operator a :class:`DeferredOperator` builds."""
    return op.resolve() if isinstance(op, DeferredOperator) else op
