"""Sliding-window attention: softmax attention restricted to ``i - j < window``."""

from __future__ import annotations

import torch

from .base import check_positive
from .sa import SoftmaxAttention


class SlidingWindowAttention(SoftmaxAttention):
    """Each position attends to itself and the ``window - 1`` positions before it.

    TSS is ``window - 1``: between steps the KV cache must carry the last ``window - 1``
    tokens (the current one arrives with its own query), and indeed ``rank H_i <= window - 1``.
    """

    def __init__(self, d_model: int, num_heads: int = 1, window: int = 64, bias: bool = False):
        check_positive("window", window)
        super().__init__(d_model, num_heads, bias)
        self.window = window

    def attention_mask(self, length: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(length, device=device)
        lag = pos.unsqueeze(1) - pos.unsqueeze(0)  # i - j
        return (lag >= 0) & (lag < self.window)

    def state_size(self):
        return self.window - 1
