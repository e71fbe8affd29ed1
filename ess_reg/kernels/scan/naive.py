"""The diagonal scan one step per position: the reference the chunked scans are tested against."""

from __future__ import annotations

import torch

__all__ = ["sequential_scan"]


def sequential_scan(log_decay: torch.Tensor, B: torch.Tensor, C: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x_i = exp(log_decay_i) x_{i-1} + B_i v_i^T``, ``y_i = C_i^T x_i``, with ``x_{-1} = 0``."""
    state = None
    out = []
    for i in range(v.shape[-2]):
        update = B[..., i, :, None] * v[..., i, None, :]  # (..., N, K)
        state = update if state is None else log_decay[..., i, :, None].exp() * state + update
        out.append((C[..., i, :, None] * state).sum(-2))
    return torch.stack(out, dim=-2)
