"""A causal operator realized by a diagonal recurrence of state size ``N`` (linear, weighted and
gated linear attention, diagonal and selective SSMs), and its spectra paths.

Its factors, per-step log-decays and input / output factors, each ``(..., L, N)``, mean
``T[i, j] = sum_n C[i, n] exp(sum_{t=j+1..i} log_decay[t, n]) B[j, n]`` for ``j <= i``
(``log_decay[0]`` never enters).

Spectra paths:

* ``"state_space"``: never materializes ``T``.  With
  ``H_i = O_i R_i`` (observability times reachability, both of rank <= N), it carries
  ``N x N`` square-root factors ``F_i F_i^T = R_i R_i^T`` and ``G_i G_i^T = O_i^T O_i`` and
  takes ``svdvals(G_i^T F_i)``; cost ``O(L N^3)`` per channel instead of ``O(L^4)``.

Square-root factors instead of the Gramians themselves: the singular values come out with
the accuracy of ``H_i``, not of ``H_i^T H_i`` (which squares its condition number), and
gradients stay finite where ``H_i`` is rank-deficient (a Gramian route needs ``sqrt`` of
eigenvalues that are zero there).  Factors are carried along the sequence at width ``N``,
every ``c`` steps (``chunk_size``), by right-multiplying with an orthonormal basis of their row
space, taken from a QR and *detached*: the product is then exactly as accurate as the wide
factor, and its gradient is the exact gradient of the singular values (they depend on the
factor only through ``F F^T``, which the rotation preserves).  Between those boundaries a
position's factor stays wide (``N + (i mod c)`` columns) and the SVD is of the wide product
``G_i^T F_i``, whose singular values past ``N`` are zero: with a small ``c`` this is cheaper
than two QRs per index (measured at ``c = 4``: 1.3-1.4x faster overall, and 1.15-1.2x more from
batching the SVDs by ``i mod c``, each group at its exact size).

* ``"dense"``: ``T`` materialized a few channels and rows at a time within the memory budget,
  then the dense path; ``"loop"``: the reference, one SVD per index of the materialized ``T``.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_floating
from ..kernels.scan import scan_apply
from ..kernels.segments import decayed_columns, in_chunks, segment_sums
from .batching import _SVD_OVERHEAD, _SVD_UV_OVERHEAD, _batch_chunks, _HeapTrimmer, _map, _workers
from .checks import _check_finite, _check_multiplicity, _check_values, _head, _select, shape_rank
from .dense import _dense_item_bytes, _dense_svdvals, _loop_svdvals
from .finite_state import FiniteStateOperator

# Steps between compressed factors on the state-space path: short chunks when most indices are
# asked (their SVDs, at most N + c - 1 wide, dominate), long when few are (then the sequential
# chain of L / c steps does).  Measured for N = 16: with every index, 4 fastest (2 and 8 within
# 10%, 16 about 2x slower); with 8 indices (the penalty), 16 beat 4 by 1.1x.
DENSE_CHUNK, SPARSE_CHUNK = 4, 16
# Indices are batched by i mod c, each batch at its exact width, when a batch gets this many on
# average; fewer go as one batch padded with zero columns (every batch costs its own ops).
MIN_GROUP = 32
# Materializing T from state-space factors, rows at a time: the working set per row of a block,
# in units of L * N entries (the block's segment sums, which exp and the B-product overwrite,
# plus the within-block segment sums' temporaries; x 2 with autograd, which cannot work in place).
_MATERIALIZE_OVERHEAD = 4


class StateSpaceOperator(FiniteStateOperator):
    """A causal operator realized by a diagonal recurrence with state size ``N``.

    ``log_decay``, ``B`` and ``C`` each have shape ``(..., L, N)`` (leading dims broadcast);
    the recurrence it stands for is ``x_i = exp(log_decay_i) * x_{i-1} + B_i u_i``,
    ``y_i = C_i . x_i``.
    """

    def __init__(
        self,
        log_decay: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        multiplicity: int = 1,
        *,
        check_values: bool = True,
    ):
        for name, x in (("log_decay", log_decay), ("B", B), ("C", C)):
            check_floating(name, x)
            if x.dim() < 2:
                raise ValueError(f"{name} must have shape (..., L, N), got a {x.dim()}-d tensor")
        shapes = {"log_decay": tuple(log_decay.shape), "B": tuple(B.shape), "C": tuple(C.shape)}
        if len({(s[-2], s[-1]) for s in shapes.values()}) != 1:
            raise ValueError(f"log_decay, B and C must agree in their last two dims (L, N), got {shapes}")
        try:
            batch = torch.broadcast_shapes(log_decay.shape[:-2], B.shape[:-2], C.shape[:-2])
        except RuntimeError:
            raise ValueError(f"leading (batch) dims of log_decay, B and C do not broadcast: {shapes}") from None
        length, state = B.shape[-2], B.shape[-1]
        if length < 2:
            raise ValueError(f"sequence length L must be >= 2, got L={length}")
        if state < 1:
            raise ValueError("state size N must be >= 1, got N=0")
        if len({log_decay.dtype, B.dtype, C.dtype}) != 1:
            raise ValueError(
                f"log_decay, B and C must share a dtype, got {log_decay.dtype}, {B.dtype}, {C.dtype}"
            )
        if check_values:  # data-dependent scans; a model's own forward pass may skip them
            for name, x in (("log_decay", log_decay), ("B", B), ("C", C)):
                _check_finite(name, x)
            if bool((log_decay > 0).any()):
                raise ValueError(
                    f"log_decay must be <= 0 (a decay in (0, 1]); its largest entry is {log_decay.max().item():.3g}"
                )
        self.log_decay, self.B, self.C = log_decay, B, C
        self._factor = B
        self.multiplicity = _check_multiplicity(multiplicity)
        self._batch_shape = batch

    def batch_head(self, n: int) -> "StateSpaceOperator":
        """The operator of the first ``n`` elements of the leading (batch) dim (factors shared by
        the batch, with size 1 there, stay shared)."""
        if not self.batch_shape:
            raise ValueError("this operator has no batch dim to take the head of")
        return StateSpaceOperator(*(_head(t, n, 3) for t in (self.log_decay, self.B, self.C)),
                                  multiplicity=self.multiplicity, check_values=False)

    def index_batch(self, dim: int, index: torch.Tensor) -> "StateSpaceOperator":
        """The operator of the entries ``index`` of batch dim ``dim`` (e.g. some channels);
        factors broadcast along that dim stay shared."""
        rank = len(self.batch_shape)
        return StateSpaceOperator(*(_select(t, dim, index, rank) for t in (self.log_decay, self.B, self.C)),
                                  multiplicity=self.multiplicity, check_values=False)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_decay, B, C)`` broadcast to the full batch shape."""
        shape = (*self.batch_shape, self.seq_len, self.state_size)
        return self.log_decay.expand(shape), self.B.expand(shape), self.C.expand(shape)

    def materialize(self) -> torch.Tensor:
        """The dense ``(..., L, L)`` matrix; costs ``L^2 N`` memory per batch element."""
        seg = segment_sums(self.log_decay)  # (..., L, L, N)
        return torch.einsum("...in,...ijn,...jn->...ij", self.C, seg.exp(), self.B)

    def apply(self, v: torch.Tensor, chunk_size: int = 32, method: str = "chunked") -> torch.Tensor:
        """``T @ v`` for ``v`` of shape ``(..., L, K)`` without materializing ``T``.

        ``method``: ``"chunked"`` (exact at any decay strength), ``"factored"`` (one matmul per
        chunk, chunks sized from the data; fastest) or ``"sequential"`` (the reference); see
        :mod:`ess_reg.kernels.scan`.
        """
        _check_values(v, self.seq_len)
        return scan_apply(self.log_decay, self.B, self.C, v, method=method, chunk_size=chunk_size)

    kind = "state_space"
    methods = ("state_space", "dense", "loop")  # the first is what method="auto" takes

    def svdvals(self, idx: torch.Tensor, *, method: str, dtype: torch.dtype, budget: int,
                chunk_size: int | None = None) -> torch.Tensor:
        """Singular values of ``H_i`` for the validated indices ``idx`` (see ``hankel_svdvals``)."""
        if method == "state_space":
            return _state_space_svdvals(self, idx, dtype, budget, chunk_size)
        if method == "loop":
            return _loop_svdvals(self.materialize(), idx, dtype)
        return _state_space_dense_svdvals(self, idx, dtype, budget)

    def value_tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.log_decay, self.B, self.C)

    def coordinate_energy(self) -> torch.Tensor:
        """``||T_n||_F^2`` for every state coordinate ``n``: shape ``(*batch_shape, N)``, where
        ``T_n`` is the operator of coordinate ``n`` alone (``T = sum_n T_n``).

        One batch element at a time over the first batch dim, so the ``L x L x N`` segment sums of
        one element are the largest thing held."""
        log_decay, B, C = self.factors()
        if log_decay.dim() == 2:  # no batch dims
            log_decay, B, C = log_decay[None], B[None], C[None]
        out = []
        for a, b, c in zip(log_decay, B, C):
            seg = segment_sums(a)  # (..., L, L, N), -inf above the diagonal
            out.append(torch.einsum("...in,...ijn,...jn->...n", c.square(), (2 * seg).exp(), b.square()))
        energy = torch.stack(out)
        return energy if len(self.batch_shape) else energy[0]

    def __repr__(self) -> str:
        return (
            f"StateSpaceOperator(batch_shape={tuple(self.batch_shape)}, L={self.seq_len}, "
            f"N={self.state_size}, dtype={self.dtype}, multiplicity={self.multiplicity})"
        )


def selective_ssm_operator(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, *,
                           check_values: bool = True) -> StateSpaceOperator:
    """The operator of a selective SSM (Mamba's S6), one per channel ``e``: decay
    ``exp(dt_e A_e)``, input ``dt_e B``, output ``C`` (``B`` and ``C`` shared by the channels).

    ``dt`` ``(batch, L, E)`` (after its softplus), ``A`` ``(E, N)`` (negative), ``B, C``
    ``(batch, L, N)``; the result has batch shape ``(batch, E)``. One constructor for the zoo's
    ``s6`` and the Hugging Face ``MambaMixer`` adapter."""
    shape = (dt.shape[0], A.shape[0], dt.shape[1], A.shape[-1])
    dt = dt.transpose(1, 2).unsqueeze(-1)  # (batch, E, L, 1)
    return StateSpaceOperator(dt * A[None, :, None, :], dt * B.unsqueeze(1), C.unsqueeze(1).expand(shape),
                              check_values=check_values)


def _state_space_dense_svdvals(
    op: StateSpaceOperator, idx: torch.Tensor, dtype: torch.dtype, budget: int
) -> torch.Tensor:
    """The dense path for a state-space operator: ``T`` materialized for as many batch entries
    (channels) at a time as the budget allows (at most half of it, and leaving room for the SVD
    of the largest block), in row blocks (``_materialize_rows``), then the dense path on them
    with the rest of the budget.  The factors are converted to ``dtype`` first (they are
    ``L x N``; ``T`` is ``L x L``), so ``T`` is built in the compute dtype."""
    length, state = op.seq_len, op.state_size
    batch_shape = op.batch_shape
    batch = batch_shape.numel()
    width = int(shape_rank(idx, length).max())
    if batch == 0:
        return torch.zeros(*batch_shape, len(idx), width, dtype=dtype, device=op.device)
    item_size = torch.empty((), dtype=dtype).element_size()
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (op.log_decay, op.B, op.C))
    overhead = _SVD_UV_OVERHEAD if grad else _SVD_OVERHEAD
    largest = max(_dense_item_bytes(length, [i], item_size, overhead, False, 0) for i in idx.tolist())
    t_bytes = length * length * item_size
    if t_bytes + largest > budget:
        raise ValueError(
            f"method='dense' needs {(t_bytes + largest) / 2**20:.1f} MiB for a single batch element (its T, "
            f"{t_bytes / 2**20:.1f} MiB, and the SVD of its largest block), more than "
            f"memory_budget={budget / 2**20:.1f} MiB; raise memory_budget or use method='state_space'"
        )
    group = max(1, min(batch, (budget // 2) // t_bytes, (budget - largest) // t_bytes))
    rest = budget - group * t_bytes  # for the row blocks of the materialization, then for the SVDs
    per_row = group * length * state * item_size * _MATERIALIZE_OVERHEAD * (2 if grad else 1)
    rows = max(1, min(length, rest // per_row))
    log_decay, B, C = (t.to(dtype).reshape(-1, length, state) for t in op.factors())
    trimmer = _HeapTrimmer(budget, op.device)
    pieces = []
    for b in range(0, batch, group):
        T = _materialize_rows(log_decay[b : b + group], B[b : b + group], C[b : b + group], rows, trimmer)
        pieces.append(_dense_svdvals(T, idx, rest))
        del T
    sigma = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
    return sigma.reshape(*batch_shape, len(idx), width)


def _materialize_rows(
    log_decay: torch.Tensor, B: torch.Tensor, C: torch.Tensor, rows: int, trimmer: _HeapTrimmer | None = None
) -> torch.Tensor:
    """``T`` of ``(batch, L, N)`` factors, shape ``(batch, L, L)``, built ``rows`` rows at a time:
    the working set is ``O(rows L N)`` instead of the ``O(L^2 N)`` of a one-shot materialize.

    Segment sums stay accurate at any decay strength (no difference of prefix sums): for a block
    of rows ``r0..r1-1``, ``seg[i, j] = carry[j] + sum_{t=r0..i} log_decay_t`` for ``j < r0``,
    where ``carry[j] = seg[r0 - 1, j]`` comes from the previous block; both terms are sums of
    non-positive numbers (no cancellation), so ``T`` equals ``materialize()``'s to round-off.
    Columns ``j >= r0`` get the block's own segment sums (``segment_sums``, as there).
    """
    batch, length, state = B.shape
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (log_decay, B, C))
    T = B.new_zeros(batch, length, length)
    carry = None  # (batch, r0, N): seg[r0 - 1, j] for j < r0
    for r0 in range(0, length, rows):
        r1 = min(length, r0 + rows)
        block_decay = log_decay[:, r0:r1]
        local = segment_sums(block_decay)  # (batch, n, n, N), -inf above the diagonal
        if grad:
            seg = local
            if carry is not None:
                head = carry.unsqueeze(1) + torch.cumsum(block_decay, dim=1).unsqueeze(2)
                seg = torch.cat([head, local], dim=2)
                del head
        else:  # written into one contiguous (n, r1, N) tensor, no concatenated copy
            seg = local.new_empty(batch, r1 - r0, r1, state)
            if carry is not None:
                torch.add(carry.unsqueeze(1), torch.cumsum(block_decay, dim=1).unsqueeze(2), out=seg[:, :, :r0])
            seg[:, :, r0:] = local
        del local
        carry = seg[:, -1].clone()  # row r1 - 1: every column j < r1 is at or below the diagonal
        if grad:
            weighted = seg.exp() * B[:, None, :r1]
        else:
            weighted = seg.exp_().mul_(B[:, None, :r1])
        del seg
        # T[i, j] = sum_n C[i, n] exp(seg[i, j, n]) B[j, n]: one matrix-vector product per row.
        T[:, r0:r1, :r1] = (weighted @ C[:, r0:r1, :, None]).squeeze(-1)
        del weighted
        if trimmer is not None:
            trimmer.check(_MATERIALIZE_OVERHEAD * batch * (r1 - r0) * length * state * B.element_size())
    return T


def _state_space_svdvals(
    op: StateSpaceOperator, idx: torch.Tensor, dtype: torch.dtype, budget: int, chunk_size: int | None
) -> torch.Tensor:
    length, state = op.seq_len, op.state_size
    if chunk_size is None:
        chunk_size = DENSE_CHUNK if len(idx) * DENSE_CHUNK >= length else SPARSE_CHUNK
    c = chunk_size  # short name for the index arithmetic below
    log_decay, B, C = (t.to(dtype) for t in op.factors())
    batch_shape = op.batch_shape
    log_decay, B, C = (t.reshape(-1, length, state) for t in (log_decay, B, C))
    idx = idx.to(op.device)
    # Observability of outputs i.. equals reachability of the time-reversed system whose input
    # factor is C_r * exp(log_decay_r) (see _reachability_factors), at index L - i.
    rev_log_decay = torch.flip(log_decay, dims=[-2])
    rev_B = torch.flip(C * log_decay.exp(), dims=[-2])

    # Working set per batch element: segment sums and new columns (L c N each), wide factors
    # (k N (N + c) each) and their product (k (N + c)^2).
    elem = torch.finfo(dtype).bits // 8
    per_item = elem * (3 * length * c * state + len(idx) * (state + c) * (4 * state + c)) * 2
    batch = log_decay.shape[0]
    workers = _workers(log_decay.device, batch)
    step = _batch_chunks(batch, per_item, budget // workers, "the state-space spectra")
    step = min(step, math.ceil(batch / workers))  # at least one slice per worker

    # F at position p has N + (p mod c) columns, G (at L - p) N + ((L - p) mod c): with enough
    # indices, those grouped by p mod c get one SVD batch each at their exact size (measured: 19%
    # less SVD time than all at (N + c - 1) square for c = 4, N = 16).
    if len(idx) >= MIN_GROUP * c:
        order = torch.argsort(idx % c, stable=True)
        groups = [g for g in idx[order].split(torch.bincount(idx % c, minlength=c).tolist()) if len(g)]
    else:
        order, groups = None, [idx]

    def part_svdvals(part: tuple[torch.Tensor, ...]) -> torch.Tensor:
        part_log_decay, part_B, part_rev_log_decay, part_rev_B = part
        F = _reachability_factors(part_log_decay, part_B, groups, c)
        G = _reachability_factors(part_rev_log_decay, part_rev_B, [length - g for g in groups], c)
        # rank(G^T F) <= N: singular values past N are zero.
        return torch.cat([torch.linalg.svdvals(g.transpose(-1, -2) @ f)[..., :state] for f, g in zip(F, G)], dim=1)

    # split, not slicing: the backward of a split is one concatenation, while each slice's
    # backward would zero-fill a gradient of the whole batch.
    parts = list(zip(*(t.split(step) for t in (log_decay, B, rev_log_decay, rev_B))))
    sigma = torch.cat(_map(part_svdvals, parts, workers), dim=0)  # (batch, k, N), grouped order
    if order is not None:
        sigma = sigma[:, torch.argsort(order)]
    # rank(H_i) <= min(i, L - i): what the N x N problem gives beyond that is round-off.
    max_rank = shape_rank(idx, length)
    keep = torch.arange(state, device=sigma.device).unsqueeze(0) < max_rank.unsqueeze(1)
    width = min(state, int(max_rank.max()))
    sigma = (sigma * keep)[..., :width]
    return sigma.reshape(*batch_shape, len(idx), width)


def _compress(F: torch.Tensor) -> torch.Tensor:
    """``N x W`` factor -> ``N x N`` factor with the same ``F F^T`` (see module docstring)."""
    if not (torch.is_grad_enabled() and F.requires_grad):
        # F^T = Q R gives F F^T = R^T R: the triangle alone, without forming Q (~30% of a QR).
        return torch.linalg.qr(F.transpose(-1, -2), mode="r").R.transpose(-1, -2)
    with torch.no_grad():
        basis, _ = torch.linalg.qr(F.transpose(-1, -2))  # (W, N), range covers F's row space
    return F @ basis


def _reachability_factors(
    log_decay: torch.Tensor, B: torch.Tensor, groups: list[torch.Tensor], c: int
) -> list[torch.Tensor]:
    """Factors ``F_p`` with ``F_p F_p^T = R_p R_p^T`` for every position ``p`` of each group.

    ``R_p`` is ``N x p``, column ``j`` = ``exp(sum_{t=j+1..p-1} log_decay_t) * B_j``: how the
    input at ``j < p`` sits in the state after step ``p - 1``.  Two levels: a sequential chain
    of ``N x N`` factors over chunk boundaries (``L / c`` steps), then every position at once
    from its chunk's boundary factor plus the ``p mod c`` columns of its chunk before it, not
    compressed: one ``(batch, k, N, N + r)`` tensor per group, ``r`` the group's largest
    ``p mod c`` (positions with a smaller one get zero columns).
    """
    batch, _, state = B.shape
    last_chunk = max(int(g.max()) for g in groups) // c  # the chain stops at the last position's chunk
    log_decay, B = in_chunks(c, log_decay, B)  # (batch, M, c, N), zero steps at the end

    # Chain over boundaries: F at the start of chunk m+1 from F at the start of chunk m.
    end_columns = decayed_columns(log_decay, B)  # (batch, M, N, c)
    chunk_decay = log_decay.sum(dim=2).exp().unsqueeze(-1)  # (batch, M, N, 1)
    boundary = [B.new_zeros(batch, state, state)]
    # unbind, not indexing in the loop: the backward of M slices would allocate M full-size grads.
    decays, columns = chunk_decay.unbind(1), end_columns.unbind(1)
    for m in range(last_chunk):
        wide = torch.cat([decays[m] * boundary[-1], columns[m]], dim=-1)
        boundary.append(_compress(wide))
    boundaries = torch.stack(boundary, dim=1)  # (batch, M, N, N)

    # Position p = m c + r: its chunk's boundary factor decayed over steps 0..r-1 of the chunk,
    # plus those steps' columns decayed to step r - 1.  Only the asked positions are built, each
    # group at the width of its largest r; smaller r get zero columns (steps >= r masked out).
    factors = []
    for positions in groups:
        width = int((positions % c).max())
        m_of, r_of = (positions // c).to(B.device), (positions % c).to(B.device)
        start = boundaries[:, m_of]  # (batch, k, N, N)
        if width == 0:
            factors.append(start)
            continue
        seen, inputs = log_decay[:, m_of, :width], B[:, m_of, :width]  # (batch, k, width, N)
        if int((positions % c).min()) < width:
            before_r = (torch.arange(width, device=B.device) < r_of.unsqueeze(1)).to(B.dtype).unsqueeze(-1)
            seen, inputs = seen * before_r, inputs * before_r
        start = start * seen.sum(dim=2).exp().unsqueeze(-1)
        factors.append(torch.cat([start, decayed_columns(seen, inputs)], dim=-1))
    return factors
