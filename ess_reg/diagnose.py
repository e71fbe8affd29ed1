"""Theoretical state size (TSS): the capacity a layer actually runs, to set ESS against."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .spectra import resolve_indices

__all__ = ["StateSize", "growing_state_size", "tss_at"]

# A mixer's TSS per channel: a number (SSM state N, linear-attention feature size, SWA window),
# or a function of (indices, L) for layers whose state grows with the sequence.
StateSize = int | float | Callable[[torch.Tensor, int], torch.Tensor]


def growing_state_size(indices: torch.Tensor, seq_len: int) -> torch.Tensor:
    """TSS of softmax attention and long convolutions: ``min(i, L - i)``.

    The KV cache (or the convolution's input history) holds all ``i`` past tokens, and no block
    ``H_i`` can have rank above ``min(i, L - i)``.
    """
    return torch.minimum(indices, seq_len - indices)


def tss_at(
    tss: StateSize, indices: "int | Sequence[int] | torch.Tensor | None", seq_len: int
) -> torch.Tensor:
    """TSS at each requested index, as a float64 tensor ``(len(indices),)``."""
    idx = resolve_indices(indices, seq_len)
    if callable(tss):
        return torch.as_tensor(tss(idx, seq_len), dtype=torch.float64)
    if isinstance(tss, bool) or not isinstance(tss, (int, float)) or not tss >= 0:
        raise ValueError(f"a state size must be a non-negative number or a function of (indices, L), got {tss!r}")
    return torch.full(idx.shape, float(tss), dtype=torch.float64)
