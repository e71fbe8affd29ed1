"""Certified bounds on an ESS from part of a spectrum: what the singular values not yet computed
can do to it.

Known about a block ``H`` with ``r`` possibly non-zero singular values ``s_1 >= ... >= s_r``:

* ``a_1 >= ... >= a_k`` (``k <= r``): Ritz values, the singular values of ``K^T H`` for a basis
  ``K`` with orthonormal columns.  By interlacing ``a_j <= s_j``: each is a lower bound.
* ``F^2 = ||H||_F^2 = sum_j s_j^2``, exactly (a sum of the block's squared entries).

So ``s = a + w`` with ``w >= 0`` (``a_j = 0`` past ``k``) and ``||a + w||^2 = F^2``.

**Entropy-ESS** ``exp(H(p))``, ``p = s / sum(s)``.  Write ``p = (1 - lam) p0 + lam v`` with
``p0 = a / sum(a)``, ``v = w / sum(w)`` in the simplex of ``r`` entries and
``lam = W / (A + W)`` (``A = sum(a)``, ``W = sum(w)``).  ``W`` is at most ``W_max``, the largest
``sum(s) - A`` the constraints allow: ``s_j = max(a_j, h)`` with ``h`` set by
``sum max(a_j, h)^2 = F^2`` (water-filling; a linear function on a sphere cut by a box).  The sets
``{(1 - lam) p0 + lam v}`` grow with ``lam``, so every possible ``p`` lies in the one at
``lam_max``; over it

* the entropy is concave in ``v``, so its minimum is at a vertex: all of ``lam_max`` on one
  entry (one of the ``k``, or one tail entry);
* its maximum puts ``lam_max`` on the smallest entries, levelling them (water-filling again).

The interval drops what else is known (the order of the ``s_j``, each tail value's own square
at most ``F^2 - sum a^2``), so it is valid and may be loose; it shrinks to a point when the
Ritz values take all of ``F^2``.

**Tolerance-ESS** (count of ``s_j > tol * s_1``).  ``s_1`` lies in ``[a_1, sqrt(a_1^2 + E)]``
with ``E = F^2 - sum a^2``; a value surely counts when ``a_j`` exceeds the largest threshold,
may count when ``sqrt(a_j^2 + E)`` exceeds the smallest, and at most ``E / threshold^2`` of
the tail values can.

Rounding: Ritz values and ``F^2`` carry errors of order ``eps * ||H||``; ``E`` gets an
allowance of ``8 (k + 64) eps F^2`` for it, and the entropy bound one of ``2 r * ENTROPY_EPS`` for the
smoothing ``p log(p + eps)`` of :func:`~ess_reg.ess.entropy_ess_from_svdvals` (its shift, and as
much again for its rounding: a rank-one block's exact value is ``exp(-log(1 + eps))``, one unit in
the last place from ``exp(-eps)``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["entropy_ess_bounds", "tolerance_ess_bounds"]

_BISECTIONS = 100  # halvings of [0, F]: far past float64's 53 bits


def _deficit(ritz: torch.Tensor, frob_sq: torch.Tensor) -> torch.Tensor:
    """``E = F^2 - sum a^2`` (never below 0), with its rounding allowance."""
    eps = torch.finfo(ritz.dtype).eps
    k = ritz.shape[-1]
    return (frob_sq - ritz.square().sum(-1)).clamp(min=0) + 8 * (k + 64) * eps * frob_sq


def _total(values: torch.Tensor, extra: torch.Tensor, h: torch.Tensor, power: int) -> torch.Tensor:
    return torch.maximum(values, h.unsqueeze(-1)).pow(power).sum(-1) + extra * h.pow(power)


def _full_range_top(values: torch.Tensor, target: torch.Tensor, power: int) -> torch.Tensor:
    """An ``h`` whose sum is never short: ``max(target^(1/power), max values)``."""
    top = target.clamp(min=0) ** (1 / power)
    return torch.maximum(top, values.amax(-1)) if values.shape[-1] else top.clone()


def _bisect_level(values: torch.Tensor, extra: torch.Tensor, target: torch.Tensor, power: int,
                  lo: torch.Tensor | None = None, hi: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_level` by bisection of ``[lo, hi]`` (``lo`` short of the target or 0, ``hi`` not
    short), by default ``[0, max(target^(1/power), max values)]``; it stops once every bracket is
    two neighbouring floats, where further halvings change nothing."""
    if lo is None:
        lo = torch.zeros_like(target)
    if hi is None:
        hi = _full_range_top(values, target, power)
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        if bool(((mid == lo) | (mid == hi)).all()):
            break
        short = _total(values, extra, mid, power) < target
        lo = torch.where(short, mid, lo)
        hi = torch.where(short, hi, mid)
    return hi


def _level(values: torch.Tensor, extra: torch.Tensor, target: torch.Tensor, power: int) -> torch.Tensor:
    """The smallest ``h >= 0`` with ``sum_j max(values_j, h)^power + extra * h^power >= target``
    (an upper end: the sum it gives is never short of ``target``).

    With the values sorted, ``h`` between the m-th and (m+1)-th smallest gives
    ``(m + extra) h^power + (the larger ones' powers)``: one closed-form candidate per segment,
    and the one inside its segment is the answer up to rounding. The bisection then settles it
    to neighbouring floats from a bracket of 1e-9 around it (about 30 halvings instead of 100
    from 0), after checking that the bracket holds the answer; where it does not, or where no
    candidate fits (no room for the target), the bisection starts from the whole range."""
    if values.shape[-1] == 0 or target.numel() == 0:
        return _bisect_level(values, extra, target, power)
    u = values.sort(-1).values  # ascending
    k = u.shape[-1]
    powers = u.pow(power)
    larger = torch.cat([powers.flip(-1).cumsum(-1).flip(-1), torch.zeros_like(powers[..., :1])], -1)  # m = 0..k
    count = torch.arange(k + 1, dtype=u.dtype, device=u.device) + extra.unsqueeze(-1)  # m + extra
    room = (target.unsqueeze(-1) - larger).clamp(min=0)
    candidate = (room / count.clamp(min=torch.finfo(u.dtype).tiny)).pow(1 / power)
    below = torch.cat([torch.zeros_like(u[..., :1]), u], -1)  # the segment of m: [u_(m), u_(m+1)]
    above = torch.cat([u, torch.full_like(u[..., :1], math.inf)], -1)
    inside = (count > 0) & (candidate >= below) & (candidate <= above)
    h = torch.where(inside, candidate, torch.full_like(candidate, math.inf)).amin(-1)
    found = torch.isfinite(h)
    h = torch.where(found, h, torch.zeros_like(h))
    lo, hi = h * (1 - 1e-9), h * (1 + 1e-9)
    hi_holds = _total(values, extra, hi, power) >= target
    lo_short = _total(values, extra, lo, power) < target
    whole = ~found | ~hi_holds
    if bool(whole.any()):  # no usable candidate: the whole range there
        hi = torch.where(whole, _full_range_top(values, target, power), hi)
        lo = torch.where(whole, torch.zeros_like(lo), lo)
    lo = torch.where(lo_short | whole, lo, torch.zeros_like(lo))  # a lower end that is not short: from 0
    return _bisect_level(values, extra, target, power, lo, hi)


def _xlogx(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x * torch.log(x.clamp(min=torch.finfo(x.dtype).tiny)), torch.zeros_like(x))


def entropy_ess_bounds(ritz: torch.Tensor, frob_sq: torch.Tensor, rank: torch.Tensor | int,
                       eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds on the entropy-ESS of a block.

    ``ritz`` ``(..., k)``: lower bounds on its ``k`` leading singular values (descending);
    ``frob_sq`` ``(...)``: its squared Frobenius norm; ``rank``: how many of its singular values
    can be non-zero (``>= k``).  Both bounds are ``(...)``; 0 for a zero block.
    """
    ritz = ritz.clamp(min=0)
    rank = torch.as_tensor(rank, dtype=ritz.dtype, device=ritz.device).expand(frob_sq.shape)
    k = ritz.shape[-1]
    tail = (rank - k).clamp(min=0)  # entries not among the Ritz values
    deficit = _deficit(ritz, frob_sq)
    total_a = ritz.sum(-1)
    # W_max: the most the singular-value sum can exceed sum(a).
    h = _level(ritz, tail, ritz.square().sum(-1) + deficit, 2)
    w_max = (torch.maximum(ritz, h.unsqueeze(-1)).sum(-1) + tail * h - total_a).clamp(min=0)
    mass = total_a + w_max
    zero = mass <= 0
    lam = torch.where(zero, torch.ones_like(mass), w_max / torch.where(zero, torch.ones_like(mass), mass))
    x = (1 - lam).unsqueeze(-1) * ritz / torch.where(total_a > 0, total_a, torch.ones_like(total_a)).unsqueeze(-1)
    base = -_xlogx(x).sum(-1)
    # Lowest: lam on one entry, a Ritz one or (if any) a tail one.
    on_ritz = base.unsqueeze(-1) + _xlogx(x) - _xlogx(x + lam.unsqueeze(-1))
    lowest = on_ritz.amin(-1) if k else torch.full_like(base, float("inf"))
    lowest = torch.where(tail > 0, torch.minimum(lowest, base - _xlogx(lam)), lowest)
    # Highest: lam levels the smallest entries (the tail ones first) to one height.
    level = _level(x, tail, torch.ones_like(base), 1)
    y = torch.maximum(x, level.unsqueeze(-1))
    highest = -_xlogx(y).sum(-1) - tail * _xlogx(level)
    highest = torch.minimum(highest, torch.log(rank.clamp(min=1)))  # never above the rank
    smoothing = 2 * rank * eps
    lower = torch.where(zero, torch.zeros_like(base), torch.exp(lowest - smoothing))
    upper = torch.where(zero, torch.zeros_like(base), torch.exp(highest))
    return lower, torch.maximum(upper, lower)


def tolerance_ess_bounds(ritz: torch.Tensor, frob_sq: torch.Tensor, rank: torch.Tensor | int,
                         tol: float = 1e-3, relative: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds on the tolerance-ESS (count of singular values ``> tol * s_1``, or
    ``> tol`` when ``relative=False``) of a block; arguments as :func:`entropy_ess_bounds`."""
    ritz = ritz.clamp(min=0)
    rank = torch.as_tensor(rank, dtype=ritz.dtype, device=ritz.device).expand(frob_sq.shape)
    k = ritz.shape[-1]
    tail = (rank - k).clamp(min=0)
    deficit = _deficit(ritz, frob_sq)
    top = ritz[..., 0] if k else torch.zeros_like(frob_sq)
    if relative:
        low_threshold, high_threshold = tol * top, tol * torch.sqrt(top.square() + deficit)
    else:
        low_threshold = high_threshold = torch.full_like(frob_sq, tol)
    surely = (ritz > high_threshold.unsqueeze(-1)).sum(-1).to(ritz.dtype)
    maybe = (torch.sqrt(ritz.square() + deficit.unsqueeze(-1)) > low_threshold.unsqueeze(-1)).sum(-1).to(ritz.dtype)
    positive = low_threshold > 0
    tail_count = torch.where(positive, torch.floor(deficit / torch.where(positive, low_threshold, 1).square()),
                             torch.where(deficit > 0, tail, torch.zeros_like(tail)))
    maybe = maybe + torch.minimum(tail, tail_count)
    return surely, torch.maximum(maybe, surely)
