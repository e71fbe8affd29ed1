"""The delta rule in chunks: ``C + L / C`` sequential steps instead of ``L``, exact.

Within a chunk every step is run for all chunks at once (``C`` steps, parallel over chunks):
the chunk's own output from a zero state, its end state from a zero state, the product
``A_1^T ... A_t^T`` of its transitions (right-multiplying by ``A_t^T`` costs ``O(N^2)``, with
``A_t = (I - beta k k^T) diag(alpha)``, ``alpha`` one gate or one per key channel) and from it
``r_t = A_1^T ... A_t^T q_t``, the readout of the state the chunk starts from. Then the
chunk-start states are carried across chunks (``L / C`` steps):
``x_{m+1} = (A_C ... A_1) x_m + end_m``, and each output adds ``r_t . x_m``. Every ``A_t`` is a
contraction (``DeltaRuleOperator`` checks it), so nothing grows.

The reference, one step per position, lives beside it (:func:`sequential_delta_rule`), with the
step both share (:func:`delta_rule_transition`).
"""

from __future__ import annotations

import torch

__all__ = ["delta_rule_transition", "sequential_delta_rule", "chunked_delta_rule"]


def delta_rule_transition(log_alpha: torch.Tensor, beta: torch.Tensor, k: torch.Tensor,
                          x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``A x`` with ``A = (I - beta k k^T) diag(alpha)`` for ``x`` ``(..., N, W)``, one step's
    ``beta`` ``(..., 1)``, ``k`` ``(..., N)`` and ``log_alpha`` ``(..., 1)`` (one gate for the state:
    Gated DeltaNet, where ``A`` is symmetric) or ``(..., N)`` (one per key channel: Kimi's delta
    attention); ``transpose``: ``A^T x = diag(alpha) (x - beta k (k^T x))``. Applied without
    forming the ``N x N`` matrix."""
    alpha = log_alpha.exp().unsqueeze(-1)  # (..., 1 or N, 1)
    if transpose:
        kx = (k.unsqueeze(-1) * x).sum(-2, keepdim=True)  # (..., 1, W)
        return alpha * (x - beta.unsqueeze(-1) * k.unsqueeze(-1) * kx)
    x = alpha * x
    kx = (k.unsqueeze(-1) * x).sum(-2, keepdim=True)
    return x - beta.unsqueeze(-1) * k.unsqueeze(-1) * kx


def sequential_delta_rule(log_alpha: torch.Tensor, beta: torch.Tensor, K: torch.Tensor, Q: torch.Tensor,
                          v: torch.Tensor) -> torch.Tensor:
    """``y = T v`` of the delta rule: ``log_alpha`` ``(..., L, 1)`` or ``(..., L, N)``, ``beta``
    ``(..., L, 1)``, ``K``, ``Q`` ``(..., L, N)``, ``v`` ``(..., L, W)`` -> ``(..., L, W)``, with
    ``x_{-1} = 0``."""
    state = None
    out = []
    for t in range(v.shape[-2]):
        update = (beta[..., t, :] * K[..., t, :]).unsqueeze(-1) * v[..., t, None, :]  # (..., N, W)
        state = update if state is None else delta_rule_transition(log_alpha[..., t, :], beta[..., t, :],
                                                                   K[..., t, :], state) + update
        out.append((Q[..., t, :, None] * state).sum(-2))
    return torch.stack(out, dim=-2)


# ---- the chunked form ----------------------------------------------------------------------------


def _pad_steps(t: torch.Tensor, steps: int, value: float = 0.0) -> torch.Tensor:
    if steps == 0:
        return t
    return torch.nn.functional.pad(t, (0, 0, 0, steps), value=value)


def chunked_delta_rule(log_alpha: torch.Tensor, beta: torch.Tensor, K: torch.Tensor, Q: torch.Tensor,
                       v: torch.Tensor, chunk_size: int = 32) -> torch.Tensor:
    """``y = T v`` of the delta rule, as :func:`sequential_delta_rule` (same shapes)."""
    length, state, width = v.shape[-2], K.shape[-1], v.shape[-1]
    c = max(1, min(chunk_size, length))
    pad = -length % c
    batch = torch.broadcast_shapes(log_alpha.shape[:-2], beta.shape[:-2], K.shape[:-2], Q.shape[:-2], v.shape[:-2])
    # padded steps: alpha 1, beta 0 (identity, no input), q 0 (no output): they change nothing
    log_alpha, beta, K, Q, v = (_pad_steps(t.expand(*batch, *t.shape[-2:]), pad)
                                for t in (log_alpha, beta, K, Q, v))
    chunks = (length + pad) // c
    log_alpha, beta, K, Q, v = (t.reshape(*batch, chunks, c, t.shape[-1]) for t in (log_alpha, beta, K, Q, v))

    end = v.new_zeros(*batch, chunks, state, width)  # each chunk's state from a zero start
    product = torch.eye(state, dtype=v.dtype, device=v.device).expand(*batch, chunks, state, state)  # A_1 ... A_t
    local, readout = [], []
    for t in range(c):
        a, b, k, q = log_alpha[..., t, :], beta[..., t, :], K[..., t, :], Q[..., t, :]
        end = delta_rule_transition(a, b, k, end) + (b * k).unsqueeze(-1) * v[..., t, None, :]
        local.append((q.unsqueeze(-1) * end).sum(-2))  # (..., M, W)
        # product = A_1^T ... A_t^T, right-multiplied by A_t^T = diag(alpha) (I - beta k k^T)
        scaled = product * a.exp().unsqueeze(-2)  # columns scaled by alpha (a scalar or one per channel)
        pk = scaled @ k.unsqueeze(-1)  # (..., M, N, 1)
        product = scaled - b.unsqueeze(-1) * pk * k.unsqueeze(-2)
        readout.append((product @ q.unsqueeze(-1)).squeeze(-1))  # r_t = A_1^T ... A_t^T q_t
    local, readout = torch.stack(local, dim=-2), torch.stack(readout, dim=-2)  # (..., M, c, W), (..., M, c, N)

    carry = product.transpose(-1, -2)  # A_c ... A_1 of each chunk
    start = v.new_zeros(*batch, state, width)
    starts = []
    for m in range(chunks):
        starts.append(start)
        start = carry[..., m, :, :] @ start + end[..., m, :, :]
    starts = torch.stack(starts, dim=-3)  # (..., M, N, W)
    y = local + readout @ starts
    return y.reshape(*batch, chunks * c, width)[..., :length, :]
