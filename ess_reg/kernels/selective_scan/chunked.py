"""S6's scan with its shared structure kept: ``h_t = exp(dt_t A) h_{t-1} + w_t B_t``, ``y_t = C_t . h_t``.

Per channel ``e`` (of ``E``) and state ``n`` (of ``N``): the decay's exponent is the outer
product ``dt[b, e, t] * A[e, n]`` and ``B, C`` are shared by all channels.  The generic
``StateSpaceOperator.apply`` would take them materialized as ``(B, E, L, N)`` tensors and stream
several such tensors (134 MB each at batch 8, E 256, L 1024, N 16) through memory on every pass
and again in autograd's backward.  Here they stay factored:

* time is cut into chunks and every ``(B, E, c, N)`` temporary lives for one chunk only, so the
  work stays in cache;
* inside a chunk the states are ``h_t = e^{A s_t} (a_0 h_start + cumsum_{j<=t} e^{-A s_j} w_j B_j)``
  with ``s_t = sum_{r=t_0+1..t} dt_r`` (the chunk's first step excluded), so only elementwise
  work and a cumsum run, no loop over positions.  The chunk is sized from the data so that
  ``|A| s_t <= MAX_EXPONENT`` (the bound of every kernel, in ``segments``): no factor
  overflows, and the rounding error is that of the plain recurrence (every product
  ``e^{A s_t} e^{-A s_j} <= 1`` is formed before summing);
* the backward pass is written out (the adjoint ``lambda_t = C_t gy_t + a_{t+1} lambda_{t+1}`` is
  the same scan run backwards), recomputing each chunk's states from the chunk's starting
  state, the only thing the forward keeps besides its inputs.

``selective_scan_reference`` (:mod:`.naive`) is the step-by-step recurrence it is tested against.
"""

from __future__ import annotations

import functools
import math

import torch

from ..segments import bounded_chunk

__all__ = ["selective_scan", "MAX_CHUNK"]

MAX_CHUNK = 64  # longer chunks stop paying: their temporaries leave the cache
BLOCK = 8  # the cumsum matmuls run on blocks of this many steps


def selective_scan(dt: torch.Tensor, A: torch.Tensor, w: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   max_chunk: int = MAX_CHUNK) -> torch.Tensor:
    """``y (B, L, E)`` from ``dt, w (B, L, E)``, ``A (E, N)``, ``B, C (B, L, N)``; ``dt >= 0``, ``A <= 0``.

    Computed in float32 at least (half-precision inputs are upcast, as Mamba's kernels do, and
    autocast is off inside).
    """
    _check_shapes(dt, A, w, B, C)
    dtype = torch.promote_types(dt.dtype, torch.float32)
    # Time-major inside: a chunk is then one contiguous block and its cumsum one matmul.
    dt, w, B, C = (t.to(dtype).transpose(0, 1).contiguous() for t in (dt, w, B, C))
    A = A.to(dtype).contiguous()
    bounds = _chunk_bounds(dt, A, max_chunk)
    # Autocast would run the cumsum matmuls in half precision: 5e-3 relative error, measured.
    with torch.autocast(device_type=dt.device.type, enabled=False):
        return _SelectiveScan.apply(dt, A, w, B, C, bounds).transpose(0, 1)


def _check_shapes(dt, A, w, B, C) -> None:
    if dt.dim() != 3 or w.shape != dt.shape:
        raise ValueError(f"dt and w must both be (batch, L, channels), got {tuple(dt.shape)} and {tuple(w.shape)}")
    batch, length, channels = dt.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, N), got {tuple(A.shape)}")
    expected = (batch, length, A.shape[1])
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must be (batch, L, N) = {expected}, got {tuple(t.shape)}")


@torch.no_grad()
def _chunk_bounds(dt: torch.Tensor, A: torch.Tensor, max_chunk: int) -> list[tuple[int, int]]:
    """``[(t0, t1), ...]`` covering ``0..L``: as long as ``max_chunk`` allows while every
    exponent ``|A| s_t`` stays below ``MAX_EXPONENT`` (``s`` sums ``c - 1`` steps), and a
    multiple of ``BLOCK`` when longer than one block (see ``_cumsum``)."""
    length = dt.shape[0]
    rate = float(dt.amax()) * float(A.abs().amax()) if dt.numel() and A.numel() else 0.0
    if not math.isfinite(rate):
        raise ValueError("dt or A has NaN/Inf entries")
    if dt.numel() and float(dt.amin()) < 0:
        raise ValueError(f"dt must be >= 0 (a step size), got min {float(dt.amin()):.3g}")
    if A.numel() and float(A.amax()) > 0:
        raise ValueError(f"A must be <= 0 (a decay), got max {float(A.amax()):.3g}")
    c = bounded_chunk(rate, max_chunk, first_step_free=True)  # s_t leaves out the chunk's first step
    if c > BLOCK:
        c -= c % BLOCK
    return [(t0, min(t0 + c, length)) for t0 in range(0, length, c)]


class _Workspace:
    """Buffers of the largest chunk, ``(c, B, E, N)``, reused by every chunk: allocating fresh
    multi-MB tensors per chunk costs more than the arithmetic on them (measured: a chunk's
    cumsum into a new tensor 0.99 ms, into a reused one 0.25 ms)."""

    def __init__(self, bounds, dt: torch.Tensor, A: torch.Tensor, count: int):
        c = max(t1 - t0 for t0, t1 in bounds)
        shape = (c, dt.shape[1], dt.shape[2], A.shape[-1])
        self.buffers = [dt.new_empty(shape) for _ in range(count)]

    def views(self, c: int) -> list[torch.Tensor]:
        return [b[:c] for b in self.buffers]


@functools.lru_cache(maxsize=64)
def _triangle(size: int, reverse: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    ones = torch.ones(size, size, dtype=dtype, device=device)
    return ones.triu() if reverse else ones.tril()


def _cumsum(x: torch.Tensor, out: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Cumulative sum over time (dim 0) of ``x (c, ...)`` into ``out``, from the end if ``reverse``.

    As matmuls with a triangle of ones (torch's cumsum over a leading dim is ~10x slower): within
    blocks of ``BLOCK`` steps, then the blocks' running totals added on, so the matmuls cost
    ``2 BLOCK`` flops per element instead of ``2 c``."""
    c = x.shape[0]
    x2, out2 = x.view(c, -1), out.view(c, -1)
    if c <= BLOCK or c % BLOCK:
        return torch.mm(_triangle(c, reverse, x.dtype, x.device), x2, out=out2).view_as(out)
    k = c // BLOCK
    blocks = out2.view(k, BLOCK, -1)
    torch.matmul(_triangle(BLOCK, reverse, x.dtype, x.device), x2.view(k, BLOCK, -1), out=blocks)
    totals = blocks[:, 0 if reverse else -1]  # (k, M): each block's sum
    carried = torch.mm(_triangle(k, reverse, x.dtype, x.device), totals)  # running totals of the blocks
    if reverse:  # block i gets the sums of blocks i+1..k-1
        blocks[:-1].add_((carried[1:]).unsqueeze(1))
    else:
        blocks[1:].add_((carried[:-1]).unsqueeze(1))
    return out


def _decays(dt_chunk: torch.Tensor, A: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """Fills ``decay (c, B, E, N)`` with ``e^{A s_t}``, ``s`` summed from the chunk's second
    step (so ``decay[0] = 1``); returns the first step's decay ``a_0 = e^{A dt_0}`` ``(B, E, N)``."""
    s = torch.mm(_triangle(dt_chunk.shape[0], False, dt_chunk.dtype, dt_chunk.device),
                 dt_chunk.flatten(1)).view_as(dt_chunk) - dt_chunk[:1]
    torch.mul(s.unsqueeze(-1), A, out=decay).exp_()
    return torch.exp(dt_chunk[0].unsqueeze(-1) * A)


def _scaled_inputs(decay, first_decay, w, B, h_start, out) -> torch.Tensor:
    """``out = w_t B_t / e^{A s_t}``, with the carried state ``a_0 h_start`` folded into step 0
    (where ``e^{A s_0} = 1``), so that ``h_t = e^{A s_t} cumsum(out)_t``."""
    torch.mul(w.unsqueeze(-1), B.unsqueeze(-2), out=out).div_(decay)
    out[0].addcmul_(first_decay, h_start)
    return out


class _SelectiveScan(torch.autograd.Function):
    """Time-major: ``dt, w (L, B, E)``, ``A (E, N)``, ``B, C (L, B, N)`` -> ``y (L, B, E)``."""

    @staticmethod
    def forward(ctx, dt, A, w, B, C, bounds):
        space = _Workspace(bounds, dt, A, 3)
        y = torch.empty_like(dt)
        h_start = dt.new_zeros(dt.shape[1:] + A.shape[-1:])
        starts = []
        for t0, t1 in bounds:
            starts.append(h_start)
            decay, scaled, h = space.views(t1 - t0)
            first_decay = _decays(dt[t0:t1], A, decay)
            _cumsum(_scaled_inputs(decay, first_decay, w[t0:t1], B[t0:t1], h_start, scaled), h).mul_(decay)
            torch.sum(torch.mul(h, C[t0:t1].unsqueeze(-2), out=scaled), dim=-1, out=y[t0:t1])
            h_start = h[-1].clone()
        ctx.save_for_backward(dt, A, w, B, C, torch.stack(starts))
        ctx.bounds = bounds
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        dt, A, w, B, C, starts = ctx.saved_tensors
        gy = gy.contiguous()
        space = _Workspace(ctx.bounds, dt, A, 4)
        g_dt, g_w = torch.empty_like(dt), torch.empty_like(w)
        g_B, g_C = torch.empty_like(B), torch.empty_like(C)
        g_A = torch.zeros_like(A)
        carry = torch.zeros_like(starts[0])  # a_{t1} lambda_{t1}, handed back by the next chunk
        for k in reversed(range(len(ctx.bounds))):
            t0, t1 = ctx.bounds[k]
            dt_c, w_c, B_c, C_c, gy_c = dt[t0:t1], w[t0:t1], B[t0:t1], C[t0:t1], gy[t0:t1]
            decay, before, buf, lam = space.views(t1 - t0)
            first_decay = _decays(dt_c, A, decay)
            scaled = _scaled_inputs(decay, first_decay, w_c, B_c, starts[k], before)
            _cumsum(scaled, buf)
            # h_t - w_t B_t = a_t h_{t-1} = e^{A s_t} (cumsum(scaled)_t - scaled_t)
            torch.sub(buf, scaled, out=before)
            torch.mul(first_decay, starts[k], out=before[0])  # step 0's a_0 h_{-1} was folded into scaled
            g_C[t0:t1] = _bmm(gy_c.unsqueeze(-2), buf.mul_(decay)).squeeze(-2)  # buf: h
            # lambda_t = e^{-A s_t} (sum_{s>=t} e^{A s_s} C_s gy_s + e^{A s_end} carry)
            torch.mul(gy_c.unsqueeze(-1), C_c.unsqueeze(-2), out=buf).mul_(decay)
            buf[-1].addcmul_(decay[-1], carry)
            _cumsum(buf, lam, reverse=True)  # lam: e^{A s_t} lambda_t
            carry = lam[0] * first_decay  # = a_{t0} lambda_{t0}, as e^{A s_{t0}} = 1
            # d y / d (dt_t A) = lambda_t a_t h_{t-1}: the e^{A s_t} factors cancel
            grad_log_decay = before.mul_(lam)
            lam.div_(decay)
            g_w[t0:t1] = torch.mul(lam, B_c.unsqueeze(-2), out=decay).sum(-1)
            g_B[t0:t1] = _bmm(w_c.unsqueeze(-2), lam).squeeze(-2)
            g_dt[t0:t1] = torch.mul(grad_log_decay, A, out=buf).sum(-1)
            g_A += grad_log_decay.mul_(dt_c.unsqueeze(-1)).sum((0, 1))
        return g_dt, g_A, g_w, g_B, g_C, None


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched matmul over the leading ``(c, B)`` dims."""
    c, batch = a.shape[:2]
    return torch.bmm(a.reshape(c * batch, *a.shape[2:]), b.reshape(c * batch, *b.shape[2:])).view(
        c, batch, a.shape[-2], b.shape[-1])
