"""Sliding-window attention: softmax attention restricted to ``i - j < window``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import check_positive, merge_heads
from .sa import SoftmaxAttention


class SlidingWindowAttention(SoftmaxAttention):
    """Each position attends to itself and the ``window - 1`` positions before it.

    TSS is ``window - 1``: between steps the KV cache must carry the last ``window - 1``
    tokens (the current one arrives with its own query), and indeed ``rank H_i <= window - 1``.

    ``forward`` works in blocks of ``window`` queries, each against the keys of its own block and
    the one before (``2 window`` keys): ``O(L window)`` scores instead of the ``O(L^2)`` of a
    banded mask over the full score matrix.  ``operator_and_values`` builds the full ``T``.
    """

    def __init__(self, d_model: int, num_heads: int = 1, window: int = 64, bias: bool = False):
        check_positive("window", window)
        super().__init__(d_model, num_heads, bias)
        self.window = window

    def attention_mask(self, length: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(length, device=device)
        lag = pos.unsqueeze(1) - pos.unsqueeze(0)  # i - j
        return (lag >= 0) & (lag < self.window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length, w = x.shape[1], self.window
        if 2 * w >= length:  # the blocks would span the sequence: the full banded mask costs no more
            return super().forward(x)
        q, k, v = self._qkv(x)  # (B, H, L, d)
        blocks = math.ceil(length / w)
        # Pad the end to whole blocks (padded keys are only in padded queries' past) and put one
        # block of zeros in front, so block b's keys are blocks b - 1 and b of the padded keys.
        q = F.pad(q, (0, 0, 0, blocks * w - length)).unflatten(2, (blocks, w))
        k, v = (F.pad(t, (0, 0, w, blocks * w - length)).unflatten(2, (blocks + 1, w)) for t in (k, v))
        k, v = (torch.cat([t[:, :, :-1], t[:, :, 1:]], dim=3) for t in (k, v))  # (B, H, blocks, 2w, d)
        # 4-d inputs and a 4-d mask, or SDPA takes its math path on CPU, which materializes the
        # scores (measured: 2x slower, more memory) instead of its fused kernel.
        heads = q.shape[1]
        q, k, v = (t.flatten(1, 2) for t in (q, k, v))  # (B, H blocks, ., d)
        mask = self._block_mask(blocks, x.device).repeat(heads, 1, 1).unsqueeze(0)  # (1, H blocks, w, 2w)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).unflatten(1, (heads, blocks))
        return self.out(merge_heads(y.flatten(2, 3)[:, :, :length]))

    def _block_mask(self, blocks: int, device: torch.device) -> torch.Tensor:
        """``(blocks, w, 2w)``: query ``a`` of block ``b`` (position ``b w + a``) sees key ``c`` of
        the pair (position ``(b - 1) w + c``) when ``0 <= a + w - c < w`` and the key exists."""
        w = self.window
        a = torch.arange(w, device=device).view(1, w, 1)
        c = torch.arange(2 * w, device=device).view(1, 1, 2 * w)
        b = torch.arange(blocks, device=device).view(blocks, 1, 1)
        return (c > a) & (c <= a + w) & ((b > 0) | (c >= w))

    def state_size(self):
        return self.window - 1

    @classmethod
    def state_kwargs(cls, state_size: int, **kwargs) -> dict:
        """A window of ``state_size + 1``: the cache carried between steps holds ``window - 1`` tokens."""
        check_positive("state_size", state_size)
        return {"window": state_size + 1}
