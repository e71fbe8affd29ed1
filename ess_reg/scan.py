"""``y = T v`` for a state-space operator without forming ``T``: chunked scans.

All three methods compute ``x_i = exp(log_decay_i) * x_{i-1} + B_i v_i^T`` (state ``N x K``)
and ``y_i = C_i^T x_i``:

* ``"chunked"``: inside a chunk the local ``c x c`` operator is built from segment sums, so
  every exponent is <= 0 and any decay strength is exact; costs ``c^2 N`` per chunk.
* ``"factored"``: the local operator as one matmul, ``(C e^{cs}) (B e^{-cs})^T`` with ``cs`` the
  decay summed from the chunk's start (the chunked form of flash-linear-attention).  The factor
  ``e^{-cs}`` grows inside a chunk, so the chunk is sized from the data: at most
  ``max_exponent / max|log_decay|`` steps, which keeps every factor below ``e^max_exponent``
  (exact, no overflow) and shrinks chunks only when decays are strong.
* ``"cumulative"``: the states themselves, ``x_i = e^{cs_i} (x_start + cumsum_j e^{-cs_j} B_j v_j)``,
  with the same data-sized chunks: only elementwise work and a cumsum, ``N K`` per position.
  Best when ``K`` is small (one value channel per operator, as in S6).
* ``"sequential"``: one step per position; the reference.

Between chunks the ``(N, K)`` state is carried by ``L / c`` sequential steps.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_int, check_number
from .operators import _check_floating, _decayed_columns, _segment_sums

__all__ = ["scan_apply", "SCAN_METHODS"]

SCAN_METHODS = ("chunked", "factored", "cumulative", "sequential")
MAX_EXPONENT = 20.0  # e^20 ~ 5e8: far from overflow in float32, and no precision is lost


def scan_apply(
    log_decay: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    v: torch.Tensor,
    method: str = "chunked",
    chunk_size: int = 32,
    max_exponent: float = MAX_EXPONENT,
) -> torch.Tensor:
    """``T v`` with ``log_decay, B, C`` of shape ``(..., L, N)`` and ``v`` of ``(..., L, K)``."""
    if not isinstance(method, str) or method not in SCAN_METHODS:
        raise ValueError(f"unknown apply method {method!r}; choose one of {SCAN_METHODS}")
    check_int("chunk_size", chunk_size, 1)
    check_number("max_exponent", max_exponent, minimum=0, strict=True)
    for name, t in (("log_decay", log_decay), ("B", B), ("C", C), ("v", v)):
        _check_floating(name, t)
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., L, features), got a {t.dim()}-d tensor")
    if v.shape[-2] != B.shape[-2]:
        raise ValueError(f"v must have shape (..., L={B.shape[-2]}, K), got {tuple(v.shape)}")
    if method == "sequential":
        return _sequential(log_decay, B, C, v)
    length = v.shape[-2]
    c = min(chunk_size, length)
    if method in ("factored", "cumulative"):
        with torch.no_grad():
            strongest = float(-log_decay.min()) if log_decay.numel() else 0.0
        if strongest > 0:
            c = max(1, min(c, math.floor(max_exponent / strongest)))
    if method == "cumulative":
        return _cumulative_scan(log_decay, B, C, v, c)
    return _chunk_scan(log_decay, B, C, v, c, factored=method == "factored")


def _sequential(log_decay, B, C, v):
    state = None
    out = []
    for i in range(v.shape[-2]):
        update = B[..., i, :, None] * v[..., i, None, :]  # (..., N, K)
        state = update if state is None else log_decay[..., i, :, None].exp() * state + update
        out.append((C[..., i, :, None] * state).sum(-2))
    return torch.stack(out, dim=-2)


def _in_chunks(c: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Zero-pad ``(..., L, F)`` tensors to a multiple of ``c`` steps and view them as ``(..., M, c, F)``.
    Zero steps at the end: their inputs and outputs are dropped afterwards."""
    length = tensors[-1].shape[-2]
    num_chunks = math.ceil(length / c)
    pad = num_chunks * c - length
    out = []
    for t in tensors:
        t = torch.nn.functional.pad(t, (0, 0, 0, pad)) if pad else t
        out.append(t.reshape(*t.shape[:-2], num_chunks, c, t.shape[-1]))
    return out


def _carry_states(chunk_decay: torch.Tensor, chunk_in: torch.Tensor) -> torch.Tensor:
    """The state entering each chunk, ``(..., M, N, K)``: the only sequential part."""
    # unbind, not indexing in the loop: the backward of M slices would allocate M full-size grads.
    decays, inputs = chunk_decay.unbind(-3), chunk_in.unbind(-3)
    states = [torch.zeros_like(inputs[0])]
    for m in range(len(inputs) - 1):
        states.append(decays[m] * states[-1] + inputs[m])
    return torch.stack(states, dim=-3)


def _cumulative_scan(log_decay, B, C, v, c: int) -> torch.Tensor:
    length = v.shape[-2]
    log_decay, B, C, v = _in_chunks(c, log_decay, B, C, v)
    from_start = torch.cumsum(log_decay, dim=-2).unsqueeze(-1)  # (..., M, c, N, 1), >= -max_exponent
    inputs = (-from_start).exp() * (B.unsqueeze(-1) * v.unsqueeze(-2))  # (..., M, c, N, K)
    local = torch.cumsum(inputs, dim=-3)  # states from inside the chunk, scaled by e^{-cs}
    chunk_decay = from_start[..., -1, :, :].exp()  # (..., M, N, 1)
    chunk_in = chunk_decay * local[..., -1, :, :]
    states = from_start.exp() * (local + _carry_states(chunk_decay, chunk_in).unsqueeze(-3))
    y = (C.unsqueeze(-1) * states).sum(-2)  # (..., M, c, K)
    return y.reshape(*y.shape[:-3], -1, y.shape[-1])[..., :length, :]


def _chunk_scan(log_decay, B, C, v, c: int, factored: bool) -> torch.Tensor:
    length = v.shape[-2]
    log_decay, B, C, v = _in_chunks(c, log_decay, B, C, v)
    num_chunks = v.shape[-3]
    from_start = torch.cumsum(log_decay, dim=-2)  # decay from the chunk's start to step i, inclusive
    if factored:
        causal = torch.ones(c, c, dtype=torch.bool, device=v.device).tril()
        scores = ((C * from_start.exp()) @ (B * (-from_start).exp()).transpose(-1, -2)).masked_fill(~causal, 0)
    else:
        scores = torch.einsum("...in,...ijn,...jn->...ij", C, _segment_sums(log_decay).exp(), B)
    y = scores @ v  # contributions from inside the chunk
    chunk_in = _decayed_columns(log_decay, B) @ v  # (..., M, N, K): the state a chunk adds
    chunk_decay = from_start[..., -1, :].exp().unsqueeze(-1)  # (..., M, N, 1)

    y = y + (C * from_start.exp()) @ _carry_states(chunk_decay, chunk_in)
    return y.reshape(*y.shape[:-3], num_chunks * c, y.shape[-1])[..., :length, :]
