"""The delta rule one step per position: the reference the chunked forms are tested against.

State ``x_t`` (``N x K``: N key features for each of K value channels), transitions
``A_t = alpha_t (I - beta_t k_t k_t^T)`` (DeltaNet: ``alpha = 1``; Gated DeltaNet: a gate):

    x_t = A_t x_{t-1} + beta_t k_t v_t^T,    y_t = x_t^T q_t
"""

from __future__ import annotations

import torch

__all__ = ["delta_rule_transition", "sequential_delta_rule"]


def delta_rule_transition(log_alpha: torch.Tensor, beta: torch.Tensor, k: torch.Tensor,
                          x: torch.Tensor) -> torch.Tensor:
    """``alpha (x - beta k (k^T x))`` for ``x`` ``(..., N, W)``, one step's ``log_alpha``, ``beta``
    ``(..., 1)`` and ``k`` ``(..., N)``: the transition applied without forming the ``N x N`` matrix."""
    kx = (k.unsqueeze(-1) * x).sum(-2, keepdim=True)  # (..., 1, W)
    return log_alpha.exp().unsqueeze(-1) * (x - beta.unsqueeze(-1) * k.unsqueeze(-1) * kx)


def sequential_delta_rule(log_alpha: torch.Tensor, beta: torch.Tensor, K: torch.Tensor, Q: torch.Tensor,
                          v: torch.Tensor) -> torch.Tensor:
    """``y = T v`` of the delta rule: ``log_alpha``, ``beta`` ``(..., L, 1)``, ``K``, ``Q`` ``(..., L, N)``,
    ``v`` ``(..., L, W)`` -> ``(..., L, W)``, with ``x_{-1} = 0``."""
    state = None
    out = []
    for t in range(v.shape[-2]):
        update = (beta[..., t, :] * K[..., t, :]).unsqueeze(-1) * v[..., t, None, :]  # (..., N, W)
        state = update if state is None else delta_rule_transition(log_alpha[..., t, :], beta[..., t, :],
                                                                   K[..., t, :], state) + update
        out.append((Q[..., t, :, None] * state).sum(-2))
    return torch.stack(out, dim=-2)
