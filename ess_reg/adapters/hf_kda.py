"""``transformers``' Kimi delta attention (Kimi-Linear's ``KimiLinearDeltaAttention``) as a
measurable layer: per head, the delta rule with one forget gate per key channel,

    S_t = (I - beta_t k_t k_t^T) diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,    o_t = S_t^T q_t,

with ``q, k`` L2-normalized and ``q`` scaled by ``1 / sqrt(d_k)`` as the layer's kernel does: a
:class:`~ess_reg.operators.DeltaRuleOperator` with ``log_alpha = g`` of shape ``(B, heads, L,
d_k)``, batch shape ``(B, heads)``, state ``d_k``, each head serving ``d_v`` value channels. The
operator of the layer's full-sequence forward (no cache, no padding mask). Nothing here imports
``transformers``.
"""

from __future__ import annotations

import torch

from ..operators import DeltaRuleOperator
from .hf_deltanet import _ACTIVATIONS, _l2norm

__all__ = ["kda_streams", "kda_operator", "kda_readout"]


def kda_streams(module, x: torch.Tensor):
    """What the layer computes before its recurrence: ``q, k, v`` ``(B, L, heads, d)`` after the
    short convolution, the per-channel log forget gates ``g`` ``(B, L, heads, d_k)`` and the
    strengths ``beta`` ``(B, L, heads)``."""
    batch, length, _ = x.shape
    mixed = torch.cat([module.q_proj(x), module.k_proj(x), module.v_proj(x)], dim=-1).transpose(1, 2)
    mixed = _ACTIVATIONS[module.activation](module.conv1d(mixed)[..., :length]).transpose(1, 2)
    q, k, v = (t.reshape(batch, length, -1, module.head_dim) for t in mixed.split([module.qkv_dim] * 3, dim=-1))
    g = module.forget_gate(x).to(x.dtype)  # computed in float32 by the layer
    beta = torch.sigmoid(module.b_proj(x))
    return q, k, v, g, beta


def kda_operator(module, x: torch.Tensor) -> DeltaRuleOperator:
    q, k, _, g, beta = kda_streams(module, x)
    q, k = (_l2norm(t).transpose(1, 2) for t in (q, k))  # (B, heads, L, d_k)
    q = q * q.shape[-1] ** -0.5
    return DeltaRuleOperator(g.transpose(1, 2), beta.transpose(1, 2), k, q, multiplicity=module.head_dim,
                             check_values=False)


def kda_readout(module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The layer's output from the operator's output ``y`` ``(B, heads, L, d_v)``: the gated norm
    and the projection."""
    batch, length, _ = x.shape
    gate = module.g_b_proj(module.g_a_proj(x)).reshape(batch, length, -1, module.head_dim)
    return module.o_proj(module.o_norm(y.transpose(1, 2), gate).reshape(batch, length, -1))
