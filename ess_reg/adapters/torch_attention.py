"""``torch.nn.MultiheadAttention`` as a measurable layer: its per-head attention probabilities
under a causal mask, as dense operators of batch shape ``(B, heads)``, each applied to its
head's ``embed_dim / heads`` value channels.

The probe records only the query a layer is called with, so the adapter recomputes the
attention of that sequence with itself (self-attention) under the causal mask: ESS is defined
for causal operators, and a layer called without a mask is not one.
"""

from __future__ import annotations

import torch
from torch import nn

from ..state_size import growing_state_size
from ..operators import DenseOperator
from .registry import Adapter, register_adapter

__all__ = ["attention_operator", "attention_values", "maybe_register"]


def _check(module: nn.MultiheadAttention) -> None:
    if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
        raise ValueError("ess-reg measures nn.MultiheadAttention as self-attention with one embed_dim, "
                         "no bias_k/bias_v and no add_zero_attn")


def _batch_first(module: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    return x if module.batch_first or x.dim() == 2 else x.transpose(0, 1)


def _projections(module: nn.MultiheadAttention, x: torch.Tensor):
    """Queries, keys and values per head: each ``(B, H, L, head_dim)``."""
    _check(module)
    x = _batch_first(module, x)
    b, length, _ = x.shape
    q, k, v = nn.functional.linear(x, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.view(b, length, module.num_heads, module.head_dim).transpose(1, 2)  # noqa: E731
    return split(q), split(k), split(v)


def attention_operator(module: nn.MultiheadAttention, x: torch.Tensor) -> DenseOperator:
    """The causal attention probabilities of ``module`` on ``x``, ``(B, H, L, L)``."""
    q, k, _ = _projections(module, x)
    length = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / module.head_dim**0.5
    mask = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
    probabilities = scores.masked_fill(mask, float("-inf")).softmax(-1)
    return DenseOperator(probabilities, multiplicity=module.head_dim, check_values=False)


def attention_values(module: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """The value stream each head's operator acts on, ``(B, H, L, head_dim)``."""
    return _projections(module, x)[2]


def maybe_register(cls: type) -> None:
    if issubclass(cls, nn.MultiheadAttention):
        register_adapter(nn.MultiheadAttention, Adapter(operator=attention_operator,
                                                        state_size=lambda module: growing_state_size))
