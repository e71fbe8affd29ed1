"""S6's recurrence one step per position: the reference the fused scan is tested against."""

from __future__ import annotations

import torch

__all__ = ["selective_scan_reference"]


def selective_scan_reference(dt, A, w, B, C) -> torch.Tensor:
    """``h_t = exp(dt_t A) h_{t-1} + w_t B_t``, ``y_t = C_t . h_t``; same layout as ``selective_scan``:
    ``dt, w (B, L, E)``, ``A (E, N)``, ``B, C (B, L, N)`` -> ``y (B, L, E)``."""
    h = dt.new_zeros(dt.shape[0], dt.shape[2], A.shape[-1])
    out = []
    for t in range(dt.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + w[:, t, :, None] * B[:, t, None, :]
        out.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(out, dim=1)
