"""The chunked scans: a local ``c x c`` operator inside each chunk, the state carried between.

* ``chunked``: the local operator from segment sums, so every exponent is <= 0 and any decay
  strength is exact; costs ``c^2 N`` per chunk.
* ``factored``: the local operator as one matmul, ``(C e^{cs}) (B e^{-cs})^T`` with ``cs`` the
  decay summed from the chunk's start (the chunked form of flash-linear-attention).  The factor
  ``e^{-cs}`` grows inside a chunk, so the chunk is sized from the data: at most
  ``MAX_EXPONENT / max|log_decay|`` steps, which keeps every factor within ``e^MAX_EXPONENT``
  and shrinks chunks only when decays are strong.

Between chunks the ``(N, K)`` state is carried by ``L / c`` sequential steps.
"""

from __future__ import annotations

import torch

from ..segments import bounded_chunk, decayed_columns, in_chunks, segment_sums

__all__ = ["chunk_scan"]


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
