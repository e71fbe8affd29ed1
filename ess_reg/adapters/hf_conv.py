"""``transformers``' gated short convolutions (LFM2's ``Lfm2ShortConv``) as measurable layers:
``y = C * conv(B * x)`` per channel, a depthwise causal convolution of ``K`` taps between an
input gate ``B`` and an output gate ``C`` (both read from the layer's input), so per channel

    T[i, j] = C_i w_{i - j} B_j   for 0 <= i - j < K,

a banded Toeplitz operator between two diagonal gates: a :class:`~ess_reg.operators.DenseOperator`
of batch shape ``(B, hidden_size)``, state ``K - 1`` (the inputs the convolution keeps). The
convolution's bias adds ``C * bias``, which does not depend on ``x``: it is in the readout, not in
``T``. Nothing here imports ``transformers``.
"""

from __future__ import annotations

import torch

from ..operators import DenseOperator

__all__ = ["short_conv_streams", "short_conv_operator", "short_conv_readout"]


def short_conv_streams(module, x: torch.Tensor):
    """The gates and values ``B, C, v`` ``(batch, hidden, L)``."""
    return module.in_proj(x).transpose(-1, -2).chunk(3, dim=-2)


def short_conv_operator(module, x: torch.Tensor) -> DenseOperator:
    B, C, _ = short_conv_streams(module, x)
    length = x.shape[1]
    taps = module.conv.weight[:, 0, :].flip(-1)  # (hidden, K): the weight at lag 0, 1, ..., K - 1
    lag = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    inside = (lag >= 0) & (lag < taps.shape[-1])
    toeplitz = torch.where(inside, taps[:, lag.clamp(0, taps.shape[-1] - 1)], torch.zeros((), dtype=taps.dtype))
    return DenseOperator(C[..., :, None] * toeplitz * B[..., None, :])


def short_conv_readout(module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The layer's output from the operator's output ``y`` ``(batch, hidden, L)``."""
    _, C, _ = short_conv_streams(module, x)
    if module.conv.bias is not None:
        y = y + C * module.conv.bias[:, None]
    return module.out_proj(y.transpose(-1, -2))
