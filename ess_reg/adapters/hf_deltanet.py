"""``transformers``' Gated DeltaNet layers (Qwen3-Next's ``Qwen3NextGatedDeltaNet``) as
measurable layers: per value head, the delta-rule operator from its values to its outputs,

    S_t = exp(g_t) S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,    o_t = S_t q_t,

with ``q, k`` L2-normalized and ``q`` scaled by ``1 / sqrt(d_k)`` as the layer's kernel does,
and key heads shared by ``num_v_heads / num_k_heads`` value heads: a
:class:`~ess_reg.operators.DeltaRuleOperator` of batch shape ``(B, num_v_heads)``, state
``head_k_dim``, each serving ``head_v_dim`` value channels. The operator of the layer's
full-sequence forward (no cache, no padding mask). Nothing here imports ``transformers``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..operators import DeltaRuleOperator

__all__ = ["gated_deltanet_streams", "gated_deltanet_operator", "gated_deltanet_readout"]

_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu}


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:  # as the layer's kernel (and fla) do
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


def gated_deltanet_streams(module, x: torch.Tensor):
    """What the layer computes before its recurrence: ``q, k`` ``(B, L, num_k_heads, d_k)``,
    ``v, z`` ``(B, L, num_v_heads, d_v)``, ``beta, g`` ``(B, L, num_v_heads)``."""
    batch, length, _ = x.shape
    q, k, v, z, b, a = module.fix_query_key_value_ordering(module.in_proj_qkvz(x), module.in_proj_ba(x))
    mixed = torch.cat([t.reshape(batch, length, -1) for t in (q, k, v)], dim=-1).transpose(1, 2)
    mixed = _ACTIVATIONS[module.activation](module.conv1d(mixed)[..., :length]).transpose(1, 2)
    q, k, v = mixed.split([module.key_dim, module.key_dim, module.value_dim], dim=-1)
    q, k = (t.reshape(batch, length, -1, module.head_k_dim) for t in (q, k))
    v = v.reshape(batch, length, -1, module.head_v_dim)
    beta = b.sigmoid()
    g = (-module.A_log.float().exp() * F.softplus(a.float() + module.dt_bias)).to(x.dtype)
    return q, k, v, z, beta, g


def gated_deltanet_operator(module, x: torch.Tensor) -> DeltaRuleOperator:
    q, k, _, _, beta, g = gated_deltanet_streams(module, x)
    shared = module.num_v_heads // module.num_k_heads
    q, k = (_l2norm(t).repeat_interleave(shared, dim=2).transpose(1, 2) for t in (q, k))  # (B, Hv, L, d_k)
    q = q * q.shape[-1] ** -0.5
    return DeltaRuleOperator(g.transpose(1, 2), beta.transpose(1, 2), k, q, multiplicity=module.head_v_dim,
                             check_values=False)


def gated_deltanet_readout(module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The layer's output from the operator's output ``y`` ``(B, num_v_heads, L, d_v)``: the
    gated norm and the projection."""
    z = gated_deltanet_streams(module, x)[3]
    core = y.transpose(1, 2).reshape(-1, module.head_v_dim)
    normed = module.norm(core, z.reshape(-1, module.head_v_dim))
    return module.out_proj(normed.reshape(x.shape[0], x.shape[1], -1))
