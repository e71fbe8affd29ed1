"""``y = T v`` for a diagonal state-space operator without forming ``T``.

Every method computes ``x_i = exp(log_decay_i) * x_{i-1} + B_i v_i^T`` (state ``N x K``) and
``y_i = C_i^T x_i``: ``"chunked"`` and ``"factored"`` in chunks (:func:`chunk_scan`),
``"sequential"`` one step per position (:func:`sequential_scan`, the reference, below).
"""

from __future__ import annotations

import torch

from .._checks import check_floating, check_int
from .segments import bounded_chunk, decayed_columns, in_chunks, segment_sums

__all__ = ["scan_apply", "SCAN_METHODS"]

SCAN_METHODS = ("chunked", "factored", "sequential")


def scan_apply(
    log_decay: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    v: torch.Tensor,
    method: str = "chunked",
    chunk_size: int = 32,
) -> torch.Tensor:
    """``T v`` with ``log_decay, B, C`` of shape ``(..., L, N)`` and ``v`` of ``(..., L, K)``."""
    if not isinstance(method, str) or method not in SCAN_METHODS:
        raise ValueError(f"unknown apply method {method!r}; choose one of {SCAN_METHODS}")
    check_int("chunk_size", chunk_size, 1)
    for name, t in (("log_decay", log_decay), ("B", B), ("C", C), ("v", v)):
        check_floating(name, t)
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., L, features), got a {t.dim()}-d tensor")
    if v.shape[-2] != B.shape[-2]:
        raise ValueError(f"v must have shape (..., L={B.shape[-2]}, K), got {tuple(v.shape)}")
    if method == "sequential":
        return sequential_scan(log_decay, B, C, v)
    return chunk_scan(log_decay, B, C, v, chunk_size, factored=method == "factored")


# ---- the chunked scans -------------------------------------------------------------------------
# The chunked scans: a local ``c x c`` operator inside each chunk, the state carried between.
#
# * ``chunked``: the local operator from segment sums, so every exponent is <= 0 and any decay
#   strength is exact; costs ``c^2 N`` per chunk.
# * ``factored``: the local operator as one matmul, ``(C e^{cs}) (B e^{-cs})^T`` with ``cs`` the
#   decay summed from the chunk's start (the chunked form of flash-linear-attention).  The factor
#   ``e^{-cs}`` grows inside a chunk, so the chunk is sized from the data: at most
#   ``MAX_EXPONENT / max|log_decay|`` steps, which keeps every factor within ``e^MAX_EXPONENT``
#   and shrinks chunks only when decays are strong.
#
# Between chunks the ``(N, K)`` state is carried by ``L / c`` sequential steps.


def chunk_scan(log_decay, B, C, v, chunk_size: int, factored: bool) -> torch.Tensor:
    """``T v`` with ``log_decay, B, C (..., L, N)``, ``v (..., L, K)``, in chunks of at most ``chunk_size``."""
    length = v.shape[-2]
    c = min(chunk_size, length)
    if factored:
        with torch.no_grad():
            strongest = float(-log_decay.min()) if log_decay.numel() else 0.0
        c = bounded_chunk(strongest, c)
    log_decay, B, C, v = in_chunks(c, log_decay, B, C, v)
    num_chunks = v.shape[-3]
    from_start = torch.cumsum(log_decay, dim=-2)  # decay from the chunk's start to step i, inclusive
    if factored:
        causal = torch.ones(c, c, dtype=torch.bool, device=v.device).tril()
        scores = ((C * from_start.exp()) @ (B * (-from_start).exp()).transpose(-1, -2)).masked_fill(~causal, 0)
    else:
        scores = torch.einsum("...in,...ijn,...jn->...ij", C, segment_sums(log_decay).exp(), B)
    y = scores @ v  # contributions from inside the chunk
    chunk_in = decayed_columns(log_decay, B) @ v  # (..., M, N, K): the state a chunk adds
    chunk_decay = from_start[..., -1, :].exp().unsqueeze(-1)  # (..., M, N, 1)

    y = y + (C * from_start.exp()) @ _carry_states(chunk_decay, chunk_in)
    return y.reshape(*y.shape[:-3], num_chunks * c, y.shape[-1])[..., :length, :]


def _carry_states(chunk_decay: torch.Tensor, chunk_in: torch.Tensor) -> torch.Tensor:
    """The state entering each chunk, ``(..., M, N, K)``: the only sequential part."""
    # unbind, not indexing in the loop: the backward of M slices would allocate M full-size grads.
    decays, inputs = chunk_decay.unbind(-3), chunk_in.unbind(-3)
    states = [torch.zeros_like(inputs[0])]
    for m in range(len(inputs) - 1):
        states.append(decays[m] * states[-1] + inputs[m])
    return torch.stack(states, dim=-3)


# ---- the reference -------------------------------------------------------------------------------


def sequential_scan(log_decay: torch.Tensor, B: torch.Tensor, C: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x_i = exp(log_decay_i) x_{i-1} + B_i v_i^T``, ``y_i = C_i^T x_i``, with ``x_{-1} = 0``."""
    state = None
    out = []
    for i in range(v.shape[-2]):
        update = B[..., i, :, None] * v[..., i, None, :]  # (..., N, K)
        state = update if state is None else log_decay[..., i, :, None].exp() * state + update
        out.append((C[..., i, :, None] * state).sum(-2))
    return torch.stack(out, dim=-2)
