"""``transformers``' xLSTM (its mLSTM layer, ``xLSTMLayer``) as a measurable layer. Per head, with
forget gate ``f_t = sigmoid(f~_t)`` and input gate ``i_t = exp(i~_t)`` (both pre-activations
soft-capped as the layer does),

    C_t = f_t C_{t-1} + i_t k_t v_t^T,    n_t = f_t n_{t-1} + i_t k_t,
    h_t = C_t^T q_t / D_t,    D_t = max(|q_t . n_t|, 1) + eps e^{m_t},

with ``q`` scaled by ``1 / sqrt(d_qk)`` and ``m_t = max(log f_t + m_{t-1}, i~_t)`` the layer's
stabilizer (the kernels carry ``C e^{-m}``; in true units only the ``eps`` term sees ``m``). The
denominator reads queries, keys and gates, never values: for the layer's own gates and keys
``h`` is linear in ``v``, a :class:`~ess_reg.operators.StateSpaceOperator` per head with state
``d_qk`` (log-decay ``log f_t``, input factor ``i_t k_t``, output factor ``q_t / D_t``), each
head serving ``d_v`` value channels. Exact for the sequence and chunkwise kernels in float32
(the default ``autocast_kernel_dtype`` is bfloat16: the operator is then exact up to the
layer's own rounding). Nothing here imports ``transformers``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..operators import StateSpaceOperator

__all__ = ["mlstm_streams", "mlstm_operator", "mlstm_readout"]


def _soft_cap(x: torch.Tensor, cap) -> torch.Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


def mlstm_streams(module, x: torch.Tensor):
    """``q, k, v`` ``(B, heads, L, d)``, the gate pre-activations ``i~, f~`` ``(B, heads, L)`` and
    the output gate's pre-activation ``(B, L, v_dim)``."""
    config, (batch, length, _) = module.config, x.shape
    if config.weight_mode == "single":
        q, k, v, o = module.q(x), module.k(x), module.v(x), module.ogate_preact(x)
        i, f = (_soft_cap(gate(x), config.gate_soft_cap) for gate in (module.igate_preact, module.fgate_preact))
    else:  # "fused"
        q, k, v, o = torch.tensor_split(module.qkv_opreact(x), (module.qk_dim, 2 * module.qk_dim,
                                                                2 * module.qk_dim + module.v_dim), dim=-1)
        i, f = torch.tensor_split(_soft_cap(module.ifgate_preact(x), config.gate_soft_cap), (config.num_heads,), -1)
    q, k, v = (t.reshape(batch, length, config.num_heads, -1).transpose(1, 2) for t in (q, k, v))
    return q, k, v, i.transpose(1, 2), f.transpose(1, 2), o


def mlstm_operator(module, x: torch.Tensor) -> StateSpaceOperator:
    q, k, v, i, f, _ = mlstm_streams(module, x)
    log_f = F.logsigmoid(f)  # (B, heads, L)
    inputs = i.exp().unsqueeze(-1) * k
    q = q * q.shape[-1] ** -0.5
    normalizer, stabilizer = torch.zeros_like(k[:, :, 0]), torch.zeros_like(i[:, :, 0])
    denominators = []
    for t in range(k.shape[2]):  # n_t and m_t, as the layer's recurrence carries them
        normalizer = log_f[:, :, t, None].exp() * normalizer + inputs[:, :, t]
        stabilizer = torch.maximum(log_f[:, :, t] + stabilizer, i[:, :, t])
        dot = (q[:, :, t] * normalizer).sum(-1).abs()
        denominators.append(torch.clamp(dot, min=1.0) + module.config.eps * stabilizer.exp())
    denominator = torch.stack(denominators, dim=2).unsqueeze(-1)  # (B, heads, L, 1)
    return StateSpaceOperator(log_f.unsqueeze(-1).expand_as(k), inputs, q / denominator,
                              multiplicity=v.shape[-1], check_values=False)


def mlstm_readout(module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The layer's output from the operator's output ``y`` ``(B, heads, L, d_v)``: the multi-head
    norm, the output gate and the projection."""
    o = mlstm_streams(module, x)[5]
    normed = module.multihead_norm(y.transpose(1, 2)).reshape(x.shape[0], x.shape[1], -1)
    return module.out_proj(module.ogate_act_fn(o) * normed)
