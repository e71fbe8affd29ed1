"""ESS with a certified error, from products with the blocks ``H_i`` instead of their SVDs.

For an operator that can apply ``H_i`` and ``H_i^T`` to a block of vectors and knows
``||H_i||_F``, :func:`certified_ess` runs a randomized block Krylov iteration per index: a
basis ``K`` of ``range(H_i H_i^T ... H_i Omega)`` grown one block at a time, the Ritz values
``svdvals(K^T H_i)`` (each a lower bound on a singular value), and after every block the bounds
of :mod:`ess_reg.certificate` on what the rest of the spectrum can do.  It stops when every
interval is narrower than ``rtol`` (relative half-width), and falls back to the exact path when
the block is small, when the basis would pass a fraction of the block's rank bound, or when the
rate at which blocks shrink the interval says it will not get there (a long spectral tail).  The
value returned is the interval's midpoint, so it is within ``rtol`` of the exact ESS.  A basis
that reaches the rank bound spans the block's range: its Ritz values are the spectrum, which is
how an operator whose ``||H_i||_F`` is unknown (a linearized module) is certified.

An operator offers this through the :class:`BlockProducts` protocol (``DenseOperator``,
``ToeplitzOperator`` and ``LinearizedOperator`` do); any other operator is measured exactly
through its own spectra path, and the result says which path each index took.

An index the Krylov basis cannot settle (a small block, a long spectral tail) of an operator
that can hand over ``H_i`` as a matrix (the :class:`ExplicitBlocks` protocol: ``DenseOperator``,
``ToeplitzOperator``) first tries the Gramian: the
eigenvalues of ``H_i^T H_i`` (its smaller side), cheaper than a float64 SVD (about 1.6x on a CPU
for blocks of 256-1024; about a float32 SVD's cost) and accurate to an absolute
``2 (m + n) eps ||H_i||_F^2`` in each squared singular value (the product's rounding and a
backward-stable symmetric eigensolver's); lowered
by that much they are lower bounds, and with ``||H_i||_F`` the same certificate bounds the ESS.
Squaring loses the small singular values' digits, so where they matter the interval is wide
and the index takes the SVD after all.  Measurement
only: no gradient flows (the penalty uses the exact, differentiable paths).

Always in float64, whatever the operator's dtype: the certificate rests on
``||H_i||_F^2 - sum(Ritz^2)``, and in float32 the round-off of that difference alone (about
``1e-6 ||H_i||_F^2``) leaves room for a tail of about ``1e-3 sqrt(rank) ||H_i||_F`` of
singular-value mass, too wide to certify anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ._checks import check_int, check_number
from .certificate import entropy_ess_bounds, tolerance_ess_bounds
from .ess import (DEFAULT_TOL, ENTROPY_EPS, LayerESS, _check_tol, check_layer_batch, entropy_ess_from_svdvals,
                  tolerance_ess_from_svdvals)
from .operators import Operator, as_operator
from .operators.batching import DEFAULT_MEMORY_BUDGET, block_svdvals
from .spectra import hankel_svdvals
from .indices import resolve_indices

__all__ = ["BlockProducts", "ExplicitBlocks", "CertifiedESS", "certified_ess", "certified_layer_ess", "KINDS"]

KINDS = ("entropy", "tolerance")
DEFAULT_BLOCK = 16
DEFAULT_MAX_FRACTION = 0.25
DEFAULT_MIN_SIZE = 256
# Where the basis reaches the rank bound, each Ritz value is taken to be within
# ROUNDOFF * eps * sigma_1 of its singular value (eps of the operator's dtype, in which the
# products of a linearized module run), and the certificate covers that.
ROUNDOFF = 256
# A squared singular value from the Gramian route is within GRAM_ROUNDOFF (m + n) eps ||H||_F^2 of
# the true one: the product's rounding (m eps ||H||_F^2) and the eigensolver's backward error
# (n eps ||M||_2 <= n eps ||H||_F^2), each taken twice over.
GRAM_ROUNDOFF = 2


@runtime_checkable
class BlockProducts(Protocol):
    """What the matrix-free path needs from an operator, for one index ``i`` at a time, besides
    the :class:`~ess_reg.operators.Operator` protocol (whose ``io_width`` ``(D_in, D_out)``
    gives the block's shape, ``(L - i) D_out`` rows by ``i D_in`` columns).

    ``block_apply(i, X)``: ``H_i X`` for ``X`` ``(*batch, i D_in, b)`` -> ``(*batch, (L - i) D_out, b)``;
    ``block_apply_transpose(i, Y)``: ``H_i^T Y``, the other way;
    ``block_frobenius_sq(i, dtype)``: ``||H_i||_F^2``, ``(*batch,)``, exactly (it anchors the
    certificate), or None where it is not known cheaply: then only a basis that reaches the
    rank bound (``max_rank``, e.g. a recurrence's state size) certifies.  All in the dtype of the
    vectors given."""

    def block_apply(self, i: int, X: torch.Tensor) -> torch.Tensor: ...
    def block_apply_transpose(self, i: int, Y: torch.Tensor) -> torch.Tensor: ...
    def block_frobenius_sq(self, i: int, dtype: torch.dtype) -> torch.Tensor: ...


@runtime_checkable
class ExplicitBlocks(Protocol):
    """An operator that can hand over one Hankel block as a matrix cheaply (it holds ``T``, or
    the few numbers each entry is made of), which opens the Gramian route to it:
    ``block_matrix(i, dtype, items)``: ``H_i`` in ``dtype`` for the batch elements ``items`` (a
    slice of the flattened batch), ``(len(items), (L - i) D_out, i D_in)``, a new tensor of that
    size and no more (never the whole ``T``), so the route can go through a large batch in
    chunks."""

    def block_matrix(self, i: int, dtype: torch.dtype, items: slice) -> torch.Tensor: ...


@dataclass
class CertifiedESS:
    """ESS per index with a certified interval: ``lower <= exact <= upper``, each
    ``(*batch, len(indices))``; ``value`` is the midpoint (for tolerance-ESS, the integer
    nearest it).  ``rank``: the Krylov basis size each index ended with (its rank bound where
    it was computed exactly); ``path``: per index,
    ``"krylov"``, ``"gram"`` (the Gramian's eigenvalues with their certificate) or ``"exact"``
    (the exact spectra path in float64, whatever the operator's dtype; its interval is that one
    value)."""

    value: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    indices: torch.Tensor
    rank: list[int]
    path: list[str]
    measure: str

    @property
    def half_width(self) -> torch.Tensor:
        return (self.upper - self.lower) / 2


def _exact(op: Operator, idx: torch.Tensor, measure: str, tol: float, relative: bool, eps: float,
           dtype: torch.dtype) -> torch.Tensor:
    return _from_svdvals(hankel_svdvals(op, idx, dtype=dtype), measure, tol, relative, eps)


def _from_svdvals(sigma: torch.Tensor, measure: str, tol: float, relative: bool, eps: float) -> torch.Tensor:
    if measure == "entropy":
        return entropy_ess_from_svdvals(sigma, eps=eps)
    return tolerance_ess_from_svdvals(sigma, tol, relative)


def _bounds(ritz, frob_sq, rank, measure, tol, relative, eps):
    if measure == "entropy":
        return entropy_ess_bounds(ritz, frob_sq, rank, eps=eps)
    return tolerance_ess_bounds(ritz, frob_sq, rank, tol, relative)


def _gram_interval(block: torch.Tensor, measure: str, tol: float, relative: bool, eps: float):
    """Bounds on the ESS of ``block`` ``(*batch, m, n)`` (float64) from the eigenvalues of its
    Gramian on the smaller side, each lowered by its rounding allowance (see the module
    docstring), anchored on ``||block||_F^2`` (the Gramian's trace: a sum of squares like any other,
    without a second block-sized tensor)."""
    m, n = block.shape[-2:]
    gram = block.mT @ block if n <= m else block @ block.mT
    frob_sq = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    squares = torch.linalg.eigvalsh(gram).flip(-1)  # descending
    allowance = GRAM_ROUNDOFF * (m + n) * torch.finfo(block.dtype).eps * frob_sq
    lower_values = (squares - allowance.unsqueeze(-1)).clamp(min=0).sqrt()
    return _bounds(lower_values, frob_sq, min(m, n), measure, tol, relative, eps)


def _gram_chunk(op: Operator, i: int, budget: int) -> int:
    """How many batch elements the Gramian route for index ``i`` takes at once within ``budget``:
    each needs its block in float64, its Gramian and the eigensolver's copy of it. 0 where one
    alone does not fit: then the exact path, which works in smaller pieces, takes the index."""
    d_in, d_out = op.io_width
    rows, columns = (op.seq_len - i) * d_out, i * d_in
    side = min(rows, columns)
    return min(op.batch_shape.numel(), budget // ((rows * columns + 2 * side * side) * 8))


def _gram_index(op: Operator, i: int, chunk: int, dtype: torch.dtype, options: dict):
    """The Gramian route's interval for index ``i``, ``chunk`` batch elements at a time."""
    batch = op.batch_shape.numel()
    parts = [_gram_interval(op.block_matrix(i, dtype, slice(b, b + chunk)), **options)
             for b in range(0, batch, chunk)]
    return tuple(torch.cat(side).reshape(op.batch_shape) for side in zip(*parts))


def _converged(lower: torch.Tensor, upper: torch.Tensor, rtol: float, measure: str) -> bool:
    if measure == "tolerance":
        return bool((upper == lower).all())
    return bool(((upper - lower) / 2 <= rtol * lower).all())


def _hopeless(widths: list[float], target: float, blocks_left: int) -> bool:
    """A long spectral tail: the interval's relative width shrinks by some factor per block;
    when the last block did not halve it, or at that rate the limit comes before ``target``,
    the basis would need most of the rank, where the exact SVD is cheaper."""
    if len(widths) < 2:
        return False
    rate = widths[-1] / widths[-2]
    if rate > 0.5:
        return True
    return target <= 0 or math.log(target / widths[-1]) / math.log(rate) > blocks_left


def _grow(basis: torch.Tensor, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``basis`` with ``block``'s new directions appended, and those directions. A Householder
    QR of ``[K, Y]`` keeps them orthonormal to ``K`` to round-off even where ``Y`` falls into
    ``K``'s span (a block Gram-Schmidt would blow that round-off up): interlacing needs ``K``
    orthonormal."""
    fresh = torch.linalg.qr(torch.cat([basis, block], dim=-1)).Q[..., basis.shape[-1]:]
    return torch.cat([basis, fresh], dim=-1), fresh


def _apply_many(op, indices: list[int], vectors: list[torch.Tensor], transpose: bool) -> list[torch.Tensor]:
    """Products with several blocks: the operator's own batched form where it has one (a
    linearized module runs one pass for all), else one call per index."""
    many = getattr(op, "block_apply_transpose_many" if transpose else "block_apply_many", None)
    if many is not None:
        return many(indices, vectors)
    single = op.block_apply_transpose if transpose else op.block_apply
    return [single(i, v) for i, v in zip(indices, vectors)]


def _krylov_to_rank(op, indices: list[int], ranks: list[int], *, measure: str, tol: float, relative: bool,
                    eps: float, block: int, dtype: torch.dtype, generator: torch.Generator) -> list[tuple]:
    """Every index's basis grown to its rank bound, in lockstep: then each spans its block's
    range and its Ritz values are the spectrum (see :func:`_rank_reached`)."""
    d_in, _ = op.io_width
    starts = [torch.randn(*op.batch_shape, i * d_in, block, dtype=dtype, device=op.device, generator=generator)
              for i in indices]
    bases = [torch.linalg.qr(y).Q for y in _apply_many(op, indices, starts, transpose=False)]
    products = _apply_many(op, indices, bases, transpose=True)
    newest = list(products)
    while True:
        active = [k for k, basis in enumerate(bases) if basis.shape[-1] < min(ranks[k], basis.shape[-2])]
        if not active:
            break
        grown = _apply_many(op, [indices[k] for k in active], [newest[k][..., -block:] for k in active], False)
        fresh = []
        for k, y in zip(active, grown):
            bases[k], q = _grow(bases[k], y)
            fresh.append(q)
        for k, z in zip(active, _apply_many(op, [indices[k] for k in active], fresh, transpose=True)):
            newest[k] = z
            products[k] = torch.cat([products[k], z], dim=-1)
    return [_rank_reached(op, block_svdvals(p), rank, measure, tol, relative, eps)
            for p, rank in zip(products, ranks)]


def _rank_reached(op, ritz: torch.Tensor, rank: int, measure: str, tol: float, relative: bool, eps: float):
    """The basis spans the block's range: the Ritz values are its singular values, up to
    round-off, and the interval covers that."""
    slack = ROUNDOFF * torch.finfo(op.dtype).eps * ritz[..., :1]
    known = (ritz[..., :rank] - slack).clamp(min=0)
    lower, upper = _bounds(known, (ritz[..., :rank] + slack).square().sum(-1), rank, measure, tol, relative, eps)
    return lower, upper, rank


def _krylov(op: BlockProducts, i: int, rank: int, max_fraction: float, batch_shape: torch.Size, *, measure: str,
            rtol: float, tol: float, relative: bool, eps: float, block: int, dtype: torch.dtype,
            device: torch.device, generator: torch.Generator, frob_sq: torch.Tensor | None = None):
    """Grow an orthonormal basis of the Krylov space of ``H_i H_i^T`` one block at a time until
    the certificate (anchored on ``||H_i||_F``) is narrow enough, or the basis reaches the rank
    bound; None when the basis would pass ``max_fraction`` of the rank bound first (past it the
    exact SVD is cheaper). ``frob_sq``: ``||H_i||_F^2`` where the caller has it already."""
    frob_sq = op.block_frobenius_sq(i, dtype) if frob_sq is None else frob_sq
    limit = int(max_fraction * rank)
    if limit < block:
        return None
    d_in, _ = op.io_width
    omega = torch.randn(*batch_shape, i * d_in, block, dtype=dtype, device=device, generator=generator)
    basis = torch.linalg.qr(op.block_apply(i, omega)).Q  # (*batch, rows of H_i, b)
    products = op.block_apply_transpose(i, basis)  # H_i^T K, (*batch, columns of H_i, kb)
    newest = products
    widths = []
    while True:
        ritz = block_svdvals(products)  # (*batch, kb): the singular values of K^T H_i
        if basis.shape[-1] >= rank:
            return _rank_reached(op, ritz, rank, measure, tol, relative, eps)
        lower, upper = _bounds(ritz, frob_sq, rank, measure, tol, relative, eps)
        if _converged(lower, upper, rtol, measure):
            return lower, upper, basis.shape[-1]
        widths.append(float(((upper - lower) / lower.clamp(min=1)).max()))
        blocks_left = (limit - basis.shape[-1]) // block
        # entropy: converged at a relative width of 2 rtol; tolerance: when the interval holds one integer
        target = 2 * rtol if measure == "entropy" else 0.0
        if max_fraction < 1 and widths[-1] > target and _hopeless(widths, target, blocks_left):
            return None
        if blocks_left < 1:
            return None
        basis, fresh = _grow(basis, op.block_apply(i, newest[..., -block:]))  # next block: H_i H_i^T (newest)
        newest = op.block_apply_transpose(i, fresh)
        products = torch.cat([products, newest], dim=-1)


def certified_ess(
    x: "torch.Tensor | Operator",
    indices: "int | Sequence[int] | torch.Tensor | None" = None,
    *,
    measure: str = "entropy",
    rtol: float = 1e-3,
    tol: float = DEFAULT_TOL,
    relative: bool = True,
    eps: float = ENTROPY_EPS,
    block_size: int = DEFAULT_BLOCK,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    min_size: int = DEFAULT_MIN_SIZE,
    gram: bool = True,
    seed: int = 0,
) -> CertifiedESS:
    """ESS of ``H_i`` per index with a certified interval (see the module docstring).

    Args:
        x: a causal ``T`` ``(..., L, L)`` or an operator; one without :class:`BlockProducts`
            is measured exactly.
        measure: ``"entropy"`` or ``"tolerance"`` (with ``tol`` and ``relative`` as in
            :func:`~ess_reg.ess.tolerance_ess`).
        rtol: the entropy interval's half-width relative to its lower end that is good enough;
            tolerance-ESS intervals are refined until they hold one integer.
        block_size: vectors added to the basis per step.
        max_fraction: the largest basis tried, as a fraction of the block's rank bound; an index
            whose interval is still too wide there, or will not be at the rate the last block
            shrank it (a long spectral tail), is computed exactly: past about a quarter of the
            rank the Krylov steps cost more than the SVD they avoid.  1 tries every block up
            to the rank and never gives up early.
        min_size: blocks whose smaller side is below this take the exact path directly (at
            L = 512, blocks of at most 256 x 256, the Krylov path measured 0.4-0.8x the exact
            one's speed even on low-rank blocks); 0 tries every block.  Where ``||H_i||_F`` is
            unknown (a linearized module) every block goes through the basis, whatever its size.
        gram: an index left to the exact path of an operator with :class:`ExplicitBlocks`, of a
            block no smaller than ``min_size``, first tries the Gramian's eigenvalues with their
            certificate (module docstring), and keeps that interval where it is within ``rtol``;
            False goes straight to the SVD. It takes as many batch elements at a time as the
            default memory budget (512 MiB) holds; an index where one alone does not fit goes to
            the exact path, whose pieces are smaller.
        seed: of the random start block, so a measurement repeats exactly.
    """
    op = as_operator(x)
    if not isinstance(measure, str) or measure not in KINDS:
        raise ValueError(f"unknown measure {measure!r}; choose one of {KINDS}")
    check_number("rtol", rtol, minimum=0, strict=True)
    check_number("eps", eps, minimum=0, strict=True)
    if measure == "tolerance":
        _check_tol(tol, relative)
    check_int("block_size", block_size, 1)
    check_number("max_fraction", max_fraction, minimum=0, strict=True)
    if max_fraction > 1:
        raise ValueError(f"max_fraction must be at most 1 (the whole rank bound), got {max_fraction}")
    check_int("seed", seed)
    check_int("min_size", min_size, 0)
    if not isinstance(gram, bool):
        raise TypeError(f"gram must be True or False, got {gram!r}")
    dtype = torch.float64  # see the module docstring: float32 round-off alone would leave the interval wide
    idx = resolve_indices(indices, op.seq_len)
    generator = torch.Generator(device=op.device).manual_seed(seed)
    matrix_free = isinstance(op, BlockProducts)
    bounds = op.max_rank(idx).tolist()
    found: dict[int, tuple] = {}
    options = dict(measure=measure, tol=tol, relative=relative, eps=eps, block=block_size, dtype=dtype,
                   generator=generator)
    with torch.no_grad():
        # Whether ||H_i||_F is known is asked of the first index; its answer serves that index too.
        first_frob = op.block_frobenius_sq(int(idx[0]), dtype) if matrix_free else None
        if matrix_free and first_frob is None:
            # Only the rank certifies: every index grows its basis to its rank bound, all indices
            # a block at a time together (one pass of the module serves all of them).
            found = dict(enumerate(_krylov_to_rank(op, idx.tolist(), bounds, **options)))
        elif matrix_free:
            d_in, d_out = op.io_width
            for k, (i, bound) in enumerate(zip(idx.tolist(), bounds)):
                if min(i * d_in, (op.seq_len - i) * d_out) < min_size:
                    continue  # a small block: its SVD costs less than a few Krylov steps
                result = _krylov(op, i, bound, max_fraction, op.batch_shape, rtol=rtol, device=op.device,
                                 frob_sq=first_frob if k == 0 else None, **options)
                if result is not None:
                    found[k] = result
        exact = [k for k in range(len(idx)) if k not in found]
        by_gram = set()
        if exact and gram and isinstance(op, ExplicitBlocks):
            d_in, d_out = op.io_width
            for k in exact:
                i = int(idx[k])
                if min(i * d_in, (op.seq_len - i) * d_out) < min_size:
                    continue  # a small block: the batched SVD of the exact path costs less
                chunk = _gram_chunk(op, i, DEFAULT_MEMORY_BUDGET)
                if chunk == 0:
                    continue
                lower, upper = _gram_index(op, i, chunk, dtype, dict(measure=measure, tol=tol, relative=relative,
                                                                     eps=eps))
                if _converged(lower, upper, rtol, measure):
                    found[k] = (lower, upper, bounds[k])
                    by_gram.add(k)
            exact = [k for k in exact if k not in by_gram]
        if exact:  # the rest in one call of the exact spectra path (batched over indices)
            # in float64 like the rest: a float32 SVD's value would be given as an interval of width
            # zero that its own rounding (about (m + n) eps s_1 per value) does not respect
            values = _exact(op, idx[exact], measure, tol, relative, eps, dtype)
            for column, k in enumerate(exact):
                found[k] = (values[..., column], values[..., column], bounds[k])
    lower = torch.stack([found[k][0] for k in range(len(idx))], -1)
    upper = torch.stack([found[k][1] for k in range(len(idx))], -1)
    value = (lower + upper) / 2
    if measure == "tolerance":  # an integer inside the interval (the interval holds one when refined)
        value = torch.round(value)
    paths = ["exact" if k in exact else "gram" if k in by_gram else "krylov" for k in range(len(idx))]
    return CertifiedESS(value, lower, upper, idx, [found[k][2] for k in range(len(idx))], paths, measure)


def certified_layer_ess(op: Operator, kind: str, idx: torch.Tensor, rtol: float, ess_options: Mapping | None = None,
                        *, name: str = "operator") -> tuple[LayerESS, str]:
    """What :func:`~ess_reg.ess.operator_ess` does for one layer, through :func:`certified_ess`:
    the layer's ESS ``(batch, channels, indices)`` and which path measured it (``"krylov"``,
    ``"gram"``, the operator's exact path, or how many indices each took)."""
    check_layer_batch(op, name)
    result = certified_ess(op, idx, measure=kind, rtol=rtol, **(ess_options or {}))
    values = result.value if result.value.dim() == 3 else result.value.unsqueeze(0)
    labels = {"krylov": "krylov", "gram": "gram", "exact": op.methods[0]}  # exact: the operator's own path
    counts = {label: result.path.count(p) for p, label in labels.items() if result.path.count(p)}
    path = (next(iter(counts)) if len(counts) == 1
            else ", ".join(f"{label} {n}/{len(idx)}" for label, n in counts.items()))
    return LayerESS(values=values.to(op.dtype), indices=idx, multiplicity=op.multiplicity), path
