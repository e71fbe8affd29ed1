"""``transformers``' RG-LRU (RecurrentGemma's ``RecurrentGemmaRglru``) as a measurable layer: a
diagonal linear recurrence, one scalar state per channel,

    h_t = a_t h_{t-1} + b_t u_t,    a_t = exp(-8 r_t softplus(Lambda)),    b_t = i_t sqrt(1 - a_t^2)

with the recurrence gate ``r_t`` and input gate ``i_t`` read from the input ``u`` (``b_t = i_t``
where a document starts, position 0): a :class:`~ess_reg.operators.StateSpaceOperator` of batch
shape ``(B, lru_width)`` and state 1, whose output is the layer's output. A reset inside the
sequence (another position 0) cuts the recurrence there. Built from the layer's forward (its
position ids are an argument of it). Nothing here imports ``transformers``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..operators import StateSpaceOperator

__all__ = ["rglru_operator", "rglru_from_forward"]

_CUT = -1e4  # log of a decay that is 0 in every float dtype: a reset, without -inf in the sums


def _gates(module, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, length, width = u.shape
    blocks = u.reshape(batch * length, module.num_attention_heads, module.block_width).permute(1, 0, 2)

    def gate(weight, bias):
        return torch.sigmoid(torch.baddbmm(bias[:, None, :], blocks, weight).transpose(0, 1)
                             .reshape(batch, length, width))

    return gate(module.input_gate_weight, module.input_gate_bias), gate(module.recurrent_gate_weight,
                                                                        module.recurrent_gate_bias)


def rglru_operator(module, u: torch.Tensor, position_ids: torch.Tensor) -> StateSpaceOperator:
    input_gate, recurrent_gate = _gates(module, u)
    log_a = -8.0 * recurrent_gate * F.softplus(module.recurrent_param)
    reset = (position_ids == 0)[:, :, None].expand_as(log_a)
    b = torch.where(reset, input_gate, input_gate * torch.sqrt(1 - torch.exp(2 * log_a)))
    log_a = torch.where(reset, torch.full_like(log_a, _CUT), log_a)
    shape = lambda t: t.transpose(1, 2).unsqueeze(-1)  # noqa: E731  (B, L, W) -> (B, W, L, 1)
    return StateSpaceOperator(shape(log_a), shape(b), torch.ones_like(shape(b)), check_values=False)


def rglru_from_forward(module, args, kwargs, output) -> StateSpaceOperator:
    u = args[0] if args else kwargs["activations"]
    position_ids = args[1] if len(args) > 1 else kwargs["position_ids"]
    return rglru_operator(module, u, position_ids)
