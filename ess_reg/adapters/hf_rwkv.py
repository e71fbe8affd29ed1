"""``transformers``' RWKV (RWKV-4's ``RwkvSelfAttention``) as a measurable layer. Per channel, its
WKV is

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / Z_t,
    Z_t   =  sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t},

with ``w = exp(time_decay)`` and the bonus ``u = time_first`` of the current token. For the keys
the layer computes, it is linear in the values: ``T[t, i] = e^{-(t-1-i) w + k_i} / Z_t`` below the
diagonal, ``e^{u + k_t} / Z_t`` on it, and ``Z_t`` reads keys up to ``t`` only (causal). Below
the diagonal this is a :class:`~ess_reg.operators.StateSpaceOperator` with one state per
channel (log-decay ``-w``, input factor ``e^{k_i - m}``, output factor ``e^{w + m} / Z_t``, ``m``
the largest key, for range), whose own diagonal is ``e^{w + k_t} / Z_t``. The bonus only changes
the diagonal, which no block ``H_i = T[i:, :i]`` contains: the ESS is the state-space operator's,
and :func:`rwkv_readout` adds the diagonal's difference, so that operator and readout reproduce
the layer. State 1 per channel: the numerator; the denominator depends on the keys alone.

Measured from a fresh state (the whole sequence in one pass), as ``analyze`` runs a model.
Nothing here imports ``transformers``.
"""

from __future__ import annotations

import torch

from ..operators import StateSpaceOperator

__all__ = ["rwkv_streams", "rwkv_operator", "rwkv_readout"]


def rwkv_streams(module, x: torch.Tensor):
    """Receptance, keys and values ``(B, L, C)``, as the layer computes them."""
    receptance, key, value, _ = module.extract_key_value(x)
    return receptance, key, value


def _log_normalizer(module, key: torch.Tensor) -> torch.Tensor:
    """``log Z_t`` ``(B, L, C)``, by the recurrence ``a_{t+1} = logaddexp(a_t - w, k_t)`` (no
    difference of large numbers, unlike a cumulative sum of ``k_i + i w``)."""
    w = torch.exp(module.time_decay).to(key.dtype)
    u = module.time_first.to(key.dtype)
    past = torch.full_like(key[:, 0], float("-inf"))  # log of the sum over i < t: empty at t = 0
    out = []
    for t in range(key.shape[1]):
        out.append(torch.logaddexp(past, u + key[:, t]))
        past = torch.logaddexp(past - w, key[:, t])
    return torch.stack(out, dim=1)


def rwkv_operator(module, x: torch.Tensor) -> StateSpaceOperator:
    _, key, _ = rwkv_streams(module, x)
    w = torch.exp(module.time_decay).to(key.dtype)
    log_z = _log_normalizer(module, key)
    top = key.amax(dim=1, keepdim=True)  # per example and channel: e^{k - top} <= 1
    shape = lambda t: t.transpose(1, 2).unsqueeze(-1)  # noqa: E731  (B, L, C) -> (B, C, L, 1)
    return StateSpaceOperator(shape((-w).expand_as(key)), shape(torch.exp(key - top)),
                              shape(torch.exp(w + top - log_z)), check_values=False)


def rwkv_readout(module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The layer's output from the operator's output ``y`` ``(B, C, L, 1)``: the bonus's share of
    the diagonal added, then the receptance gate and the output projection."""
    receptance, key, value = rwkv_streams(module, x)
    w = torch.exp(module.time_decay).to(key.dtype)
    log_z = _log_normalizer(module, key)
    bonus = torch.exp(module.time_first + key - log_z) - torch.exp(w + key - log_z)
    wkv = y.squeeze(-1).transpose(1, 2) + bonus * value
    return module.output(receptance * wkv)
