"""Segment numerics shared by the scans: decays summed over segments of steps, and chunk sizes.

A diagonal recurrence decays its state by ``exp(log_decay_t)`` per step, so what an input at
step ``j`` still weighs at step ``i`` is ``exp`` of the decay summed over the segment
``j+1..i``.  Summing each segment directly keeps short segments exact at any decay strength;
the fast kernels instead split ``exp(a - b)`` into ``exp(a) exp(-b)``, which is exact only while
``|a|, |b|`` stay bounded: hence chunks sized from the data.
"""

from __future__ import annotations

import math

import torch

__all__ = ["MAX_EXPONENT", "segment_sums", "decayed_columns", "bounded_chunk", "in_chunks"]

# The largest exponent a kernel splits into two factors, one bound for every kernel: the
# factored scan's e^{+-cs} and the selective scan's e^{+-A s} are then at most e^40 ~ 2e17 and
# at least e^-40 ~ 4e-18, far inside float32's range (1e-38 .. 3e38), which bf16 shares; a
# factor times the inputs summed over a chunk stays far from overflow, and every product of
# two factors that enters the output is <= 1.
MAX_EXPONENT = 40.0


def segment_sums(log_decay: torch.Tensor) -> torch.Tensor:
    """``seg[..., i, j, n] = sum_{t=j+1..i} log_decay[..., t, n]`` for ``j <= i``, ``-inf`` above.

    Summed directly per segment (masked cumsum), not as a difference of two prefix sums:
    with strong decays the prefix sums reach ``-20 L`` and their difference would lose the
    short segments' precision.  Costs ``L^2 N``; used for materializing and small chunks.
    """
    length = log_decay.shape[-2]
    ones = torch.ones(length, length, dtype=torch.bool, device=log_decay.device)
    strictly_after = torch.tril(ones, diagonal=-1)  # [t, j]: t > j
    # x[..., j, t, n] = log_decay[t, n] for t > j, else 0; cumsum over t gives the segment sums.
    x = log_decay.unsqueeze(-3) * strictly_after.transpose(0, 1).unsqueeze(-1).to(log_decay.dtype)
    seg = torch.cumsum(x, dim=-2).transpose(-3, -2)  # [..., i, j, n]
    causal = torch.tril(ones).unsqueeze(-1)
    return seg.masked_fill(~causal, float("-inf"))


def decayed_columns(log_decay: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Inputs of a segment carried to its last step: ``exp(sum_{t=q+1..end} log_decay_t) B_q``.

    ``(..., steps, N)`` inputs -> ``(..., N, steps)``.  The exponent is a reversed cumsum of the
    steps after ``q``, not a difference of prefix sums (exact at any decay strength).
    """
    after = torch.nn.functional.pad(log_decay[..., 1:, :], (0, 0, 0, 1))
    to_end = torch.flip(torch.cumsum(torch.flip(after, dims=[-2]), dim=-2), dims=[-2])
    return (to_end.exp() * B).transpose(-1, -2)


def bounded_chunk(rate: float, limit: int, first_step_free: bool = False) -> int:
    """The longest chunk, at most ``limit`` steps, whose decay summed over the chunk stays
    within ``MAX_EXPONENT`` when no step decays by more than ``rate`` (a log-decay magnitude).

    That is ``floor(MAX_EXPONENT / rate)`` steps, one more with ``first_step_free`` (a kernel
    whose sums start after the chunk's first step), and at least one: a single step is exact
    at any strength.  Without a decay (``rate`` 0, or NaN) the chunk is ``limit``.
    """
    if not rate > 0:
        return limit
    return max(1, min(limit, math.floor(MAX_EXPONENT / rate) + int(first_step_free)))


def in_chunks(c: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Zero-pad ``(..., L, F)`` tensors to a multiple of ``c`` steps and view them as ``(..., M, c, F)``.

    Zero steps at the end: they add nothing to a state, and a caller drops their outputs.
    """
    length = tensors[-1].shape[-2]
    num_chunks = math.ceil(length / c)
    pad = num_chunks * c - length
    out = []
    for t in tensors:
        t = torch.nn.functional.pad(t, (0, 0, 0, pad)) if pad else t
        out.append(t.reshape(*t.shape[:-2], num_chunks, c, t.shape[-1]))
    return out
