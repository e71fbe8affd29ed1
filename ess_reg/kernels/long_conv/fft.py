"""A causal convolution as long as the sequence, by FFT: ``L log L`` instead of ``L^2``."""

from __future__ import annotations

import torch

__all__ = ["causal_fft_conv"]


def causal_fft_conv(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``y[..., i] = sum_{j <= i} h[..., i - j] u[..., j]`` by FFT, over the last dim."""
    length = u.shape[-1]
    n = 2 * length  # zero padding to 2L turns the circular convolution into a linear one
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(h, n=n), n=n)
    return y[..., :length]
