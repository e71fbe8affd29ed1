"""The long convolution without the FFT: its matrix, and the sum over lags.

``toeplitz`` is also how a convolution mixer materializes its dense operator.
"""

from __future__ import annotations

import torch

__all__ = ["toeplitz", "causal_conv_reference"]


def toeplitz(h: torch.Tensor) -> torch.Tensor:
    """Lower-triangular Toeplitz ``T[..., i, j] = h[..., i - j]`` for ``j <= i``."""
    length = h.shape[-1]
    lag = torch.arange(length, device=h.device)
    lag = lag.unsqueeze(1) - lag.unsqueeze(0)
    T = h[..., lag.clamp(min=0)]
    return T * (lag >= 0).to(h.dtype)


def causal_conv_reference(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``y[..., i] = sum_{j <= i} h[..., i - j] u[..., j]``, one lag at a time (``L^2`` work)."""
    length = u.shape[-1]
    y = torch.zeros(torch.broadcast_shapes(u.shape, h.shape), dtype=torch.promote_types(u.dtype, h.dtype),
                    device=u.device)
    for lag in range(length):
        y[..., lag:] += h[..., lag : lag + 1] * u[..., : length - lag]
    return y
