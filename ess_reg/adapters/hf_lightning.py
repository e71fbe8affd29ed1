"""``transformers``' lightning attention (MiniMax's ``MiniMaxLightningAttention``) as a measurable
layer: linear attention with a fixed decay per head,

    o_i = sum_{j <= i} exp(-s_h (i - j)) (q_i . k_j) v_j,

a :class:`~ess_reg.operators.StateSpaceOperator` per head (batch shape ``(B, heads)``, state
``head_dim``, each serving ``head_dim`` value channels), whatever block size the layer computes
it in. Its class name ends in ``Attention`` but it returns its key-value state, not attention
probabilities: the generic attention rule must not read it. Nothing here imports
``transformers``.
"""

from __future__ import annotations

import torch

from ..operators import StateSpaceOperator

__all__ = ["lightning_streams", "lightning_operator", "lightning_readout"]


def lightning_streams(module, x: torch.Tensor):
    """``q, k, v`` ``(B, heads, L, head_dim)``."""
    batch, length, _ = x.shape
    qkv = module.act_fn(module.qkv_proj(x)).reshape(batch, length, module.num_attention_heads, 3 * module.head_dim)
    return (t.transpose(1, 2) for t in torch.split(qkv, module.head_dim, dim=3))


def lightning_operator(module, x: torch.Tensor) -> StateSpaceOperator:
    q, k, _ = lightning_streams(module, x)
    slope = module.slope_rate.reshape(-1).to(x.dtype)  # (heads,)
    log_decay = (-slope)[None, :, None, None].expand(k.shape)
    return StateSpaceOperator(log_decay, k, q, multiplicity=module.head_dim, check_values=False)


def lightning_readout(module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The layer's output from the operator's output ``y`` ``(B, heads, L, head_dim)``: norm, gate,
    projection."""
    out = module.norm(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
    return module.out_proj(torch.sigmoid(module.output_gate(x)) * out)
