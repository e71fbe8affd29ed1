"""What the finite-state kinds (state-space, delta rule) share: their shape read off one
``(..., L, N)`` factor, the rank bound ``min(i, L - i, N)``, and the plain recurrence as the
reference of their ``apply``."""

from __future__ import annotations

import torch

from .checks import shape_rank


class FiniteStateOperator:
    """Base of the kinds whose state has ``N`` coordinates; a subclass sets ``_factor`` (one of
    its ``(..., L, N)`` factors) and ``_batch_shape``."""

    _factor: torch.Tensor
    _batch_shape: torch.Size
    io_width = (1, 1)

    @property
    def seq_len(self) -> int:
        return self._factor.shape[-2]

    @property
    def state_size(self) -> int:
        return self._factor.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        return self._batch_shape

    @property
    def dtype(self) -> torch.dtype:
        return self._factor.dtype

    @property
    def device(self) -> torch.device:
        return self._factor.device

    def max_rank(self, idx: torch.Tensor) -> torch.Tensor:
        """The most rank ``H_i`` can have: ``min(i, L - i, N)``."""
        return torch.clamp(shape_rank(idx, self.seq_len), max=self.state_size)

    def apply_reference(self, v: torch.Tensor) -> torch.Tensor:
        """``T @ v`` by the plain step-by-step recurrence (a loop over L)."""
        return self.apply(v, method="sequential")
