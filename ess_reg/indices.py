"""Which sequence indices to measure ESS at: small rules shared by the probe, the penalty and
the init search.

A rule is called with the operator's length ``L``, the index where the task's context ends
(or None) and a ``torch.Generator`` (for random rules), and returns a 1-D int64 tensor of
indices in ``1..L-1``.  :func:`index_rule` turns the short forms users write (``"all"``,
``"random"``, ``"context_end"``, a list) into a rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ._checks import check_int

__all__ = ["resolve_indices", "IndexRule", "AllIndices", "EvenIndices", "RandomIndices", "ContextEnd", "GivenIndices",
           "index_rule"]


def resolve_indices(indices: "int | Sequence[int] | torch.Tensor | None", seq_len: int) -> torch.Tensor:
    """Validate sequence indices (each in ``1..L-1``) and return them as a 1-D int64 tensor.

    ``indices``: None (all), an int, a sequence of ints (list, tuple, range...) or an integer
    tensor of at most one dim."""
    check_int("seq_len", seq_len, 2)
    if isinstance(indices, torch.Tensor) and not indices.is_inference() and \
            getattr(indices, _VALID, None) == (seq_len, indices._version):
        return indices  # this very tensor was validated for this length, and not changed since
    if indices is None:
        idx = torch.arange(1, seq_len, dtype=torch.long)
    else:
        idx = _index_tensor(indices)
        bad = idx[(idx < 1) | (idx > seq_len - 1)]
        if bad.numel():
            raise ValueError(
                f"indices must lie in 1..L-1 = 1..{seq_len - 1} (H_i = T[i:, :i] is empty otherwise); "
                f"got {bad.tolist()[:8]}"
            )
    if not idx.is_inference():  # an inference tensor keeps no version counter: it is checked every time
        setattr(idx, _VALID, (seq_len, idx._version))
    return idx


# The mark resolve_indices leaves on a tensor it returns: (L, the tensor's version counter). The
# probe resolves a layer's indices once; the spectra, the TSS and the reach it hands them to
# then take them as they are (an in-place change bumps the version and voids the mark).
_VALID = "_ess_reg_valid_for"


def _index_tensor(indices: "int | Sequence[int] | torch.Tensor") -> torch.Tensor:
    """``indices`` as a non-empty 1-D int64 CPU tensor, its type and shape checked (not its range)."""
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"indices must be integers, got a tensor of dtype {indices.dtype}")
        if indices.dim() > 1:
            raise ValueError(f"indices must be a 1-D tensor, got shape {tuple(indices.shape)}")
        idx = indices.detach().to("cpu", torch.long).reshape(-1)
    else:
        if isinstance(indices, int) and not isinstance(indices, bool):
            indices = [indices]
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
            raise ValueError(
                f"indices must be None, an int, a sequence of ints or an integer tensor, got {indices!r}"
            )
        if any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
            raise ValueError(f"indices must be integers, got {list(indices)!r}")
        idx = torch.tensor(list(indices), dtype=torch.long)
    if idx.numel() == 0:
        raise ValueError("indices is empty: ask for at least one sequence index in 1..L-1")
    return idx


class IndexRule(Protocol):
    def __call__(self, seq_len: int, context_end: int | None, generator: torch.Generator | None) -> torch.Tensor: ...


def _context_end(context_end: int | None, seq_len: int, who: str) -> int:
    if context_end is None:
        raise ValueError(f"{who} needs context_end (the index where the task's context ends): pass it, or a task")
    if not 1 <= context_end <= seq_len - 1:
        raise ValueError(f"context_end={context_end} lies outside the sequence (indices 1..L-1 = 1..{seq_len - 1})")
    return context_end


@dataclass(frozen=True)
class AllIndices:
    """Every index ``1..L-1``: exact, and the costliest."""

    def __call__(self, seq_len, context_end=None, generator=None) -> torch.Tensor:
        return resolve_indices(None, seq_len)


@dataclass(frozen=True)
class EvenIndices:
    """``count`` evenly spaced indices in ``1..L-1``, plus the end of the context when known
    (where ESS/kv is read): the fixed indices of a run's probe."""

    count: int = 16
    with_context_end: bool = True

    def __post_init__(self):
        check_int("count", self.count, 1)

    def __call__(self, seq_len, context_end=None, generator=None) -> torch.Tensor:
        idx = torch.linspace(1, seq_len - 1, self.count).round().long()
        if self.with_context_end and context_end is not None and 1 <= context_end <= seq_len - 1:
            idx = torch.cat([idx, torch.tensor([context_end])])
        return idx.unique()


@dataclass(frozen=True)
class RandomIndices:
    """``count`` distinct random indices, fresh at every call: the mean over calls is an
    unbiased estimate of the mean over all indices, at a fraction of the cost."""

    count: int = 8

    def __post_init__(self):
        check_int("count", self.count, 1)

    def __call__(self, seq_len, context_end=None, generator=None) -> torch.Tensor:
        k = min(self.count, seq_len - 1)
        return torch.randperm(seq_len - 1, generator=generator)[:k] + 1


@dataclass(frozen=True)
class ContextEnd:
    """The one index where the task's context ends (MQAR: every key-value pair has been read)."""

    def __call__(self, seq_len, context_end=None, generator=None) -> torch.Tensor:
        return torch.tensor([_context_end(context_end, seq_len, "indices='context_end'")])


@dataclass(frozen=True)
class GivenIndices:
    """A fixed list of indices; their upper end is checked against each operator's length."""

    indices: tuple[int, ...]

    def __post_init__(self):
        listed = _index_tensor(list(self.indices) if not isinstance(self.indices, torch.Tensor) else self.indices)
        if bool((listed < 1).any()):
            raise ValueError(f"indices must lie in 1..L-1 (H_i = T[i:, :i] is empty otherwise); got "
                             f"{listed[listed < 1].tolist()[:8]}")
        object.__setattr__(self, "indices", tuple(listed.tolist()))

    def __call__(self, seq_len, context_end=None, generator=None) -> torch.Tensor:
        return resolve_indices(list(self.indices), seq_len)


_NAMED = {"all": AllIndices, "random": RandomIndices, "context_end": ContextEnd}


def index_rule(spec: "str | IndexRule | Sequence[int] | torch.Tensor | int | None") -> IndexRule:
    """A rule from what a user writes: ``None`` or ``"all"``, ``"random"`` (8 per call),
    ``"context_end"``, an int or a list of indices, or a rule (returned as it is)."""
    if spec is None:
        return AllIndices()
    if isinstance(spec, str):
        if spec not in _NAMED:
            raise ValueError(f"unknown indices {spec!r}; choose one of {sorted(_NAMED)}, give a list of indices "
                             "or an index rule (ess_reg.indices)")
        return _NAMED[spec]()
    if isinstance(spec, (AllIndices, EvenIndices, RandomIndices, ContextEnd, GivenIndices)):
        return spec
    if isinstance(spec, (int, Sequence, torch.Tensor)) and not isinstance(spec, bytes):
        return GivenIndices(tuple(_index_tensor(spec).tolist()))
    if callable(spec):
        return spec
    raise ValueError(f"indices must be None, 'all', 'random', 'context_end', a list of indices or an index rule, "
                     f"got {spec!r}")
