"""Causal softmax attention: ``T[i, j] = softmax_j(q_i . k_j / sqrt(d))`` over ``j <= i``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ess_reg import DenseOperator
from ess_reg.state_size import growing_state_size

from .base import Mixer, MixerTrace, head_dim, merge_heads, split_heads


class SoftmaxAttention(Mixer):
    """Multi-head causal softmax attention; each head's ``d_v`` value channels share its ``T``."""

    def __init__(self, d_model: int, num_heads: int = 1, bias: bool = False):
        super().__init__(d_model)
        self.num_heads = num_heads
        self.head_dim = head_dim(d_model, num_heads)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def attention_mask(self, length: int, device: torch.device) -> torch.Tensor | None:
        """Boolean ``(L, L)`` mask of allowed ``(i, j)``; None means plain causal."""
        return None

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        mask = self.attention_mask(x.shape[1], x.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.out(merge_heads(y))

    def operator_and_values(self, x: torch.Tensor, check_values: bool = True) -> MixerTrace:
        q, k, v = self._qkv(x)
        length = x.shape[1]
        mask = self.attention_mask(length, x.device)
        if mask is None:
            mask = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        scores = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5
        T = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        op = DenseOperator(T, multiplicity=self.head_dim, check_values=check_values)
        return MixerTrace(op, v, lambda y: self.out(merge_heads(y)))

    def state_size(self):
        return growing_state_size
