"""Causal long convolution: by FFT, ``L log L`` instead of ``L^2`` (:func:`causal_fft_conv`), and
beside it the references it is tested against: its Toeplitz matrix (:func:`toeplitz`) and the
direct sum over lags (:func:`causal_conv_reference`)."""

from __future__ import annotations

import torch

__all__ = ["causal_fft_conv", "causal_conv_reference", "toeplitz"]


def causal_fft_conv(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``y[..., i] = sum_{j <= i} h[..., i - j] u[..., j]`` by FFT, over the last dim."""
    length = u.shape[-1]
    n = 2 * length  # zero padding to 2L turns the circular convolution into a linear one
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(h, n=n), n=n)
    return y[..., :length]


# ---- the references ----------------------------------------------------------------------------


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
