"""Singular values of the blocks ``H_i = T[i:, :i]`` of a causal operator.

``H_i`` maps every input strictly before ``i`` to every output from ``i`` on; its rank is the
smallest state any recurrence realizing ``T`` needs at step ``i``.  Three ways to get its
singular values, one answer:

* ``"loop"``: one SVD per index, the direct definition (reference and benchmark baseline).
* ``"dense"``: the same SVDs batched over indices (blocks zero-padded to a common shape,
  which leaves singular values unchanged), in chunks that respect a memory budget: every
  temporary is counted (blocks converted to the compute dtype one chunk at a time, LAPACK's
  copy and workspace, for a :class:`StateSpaceOperator` its ``T``, materialized a few channels
  and rows at a time); ``bench/memory.py`` measures the peak against the budget.
* ``"state_space"``: for a :class:`StateSpaceOperator`, never materializes ``T``.  With
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
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from ._checks import check_int, check_limit, check_number
from .kernels.segments import decayed_columns, in_chunks, segment_sums
from .kernels.delta_rule import delta_rule_transition
from .operators import DeltaRuleOperator, JacobianOperator, Operator, StateSpaceOperator, _nonfinite_count, as_operator

__all__ = ["hankel_svdvals", "resolve_indices", "DEFAULT_MEMORY_BUDGET", "METHODS"]

DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes a call may allocate for its working tensors
# Steps between compressed factors on the state-space path: short chunks when most indices are
# asked (their SVDs, at most N + c - 1 wide, dominate), long when few are (then the sequential
# chain of L / c steps does).  Measured for N = 16: with every index, 4 fastest (2 and 8 within
# 10%, 16 about 2x slower); with 8 indices (the penalty), 16 beat 4 by 1.1x.
DENSE_CHUNK, SPARSE_CHUNK = 4, 16
# Indices are batched by i mod c, each batch at its exact width, when a batch gets this many on
# average; fewer go as one batch padded with zero columns (every batch costs its own ops).
MIN_GROUP = 32
METHODS = ("auto", "dense", "loop", "state_space")
# Working memory of a batched SVD, in units of its input's size in the compute dtype; measured on
# CPU as peak RSS growth (torch 2.13, MKL gesdd, float32 and float64, batches of 1-64 blocks from
# 64 x 64 to 2048 x 1024, 1-32 MiB): singular values only, 0.99-1.19x (the column-major copy
# LAPACK overwrites, plus its workspace; up to 1.35x for 2 MiB of 64 x 64 blocks, where fixed
# buffers count); with singular vectors, which svdvals computes when a gradient may be needed,
# 2.5-4.8x (the copy, U, V^T and a larger workspace; tall 2:1 blocks are the worst).  The old
# single factor, 4, over-reserved the common case 3x yet left the conversions and copies around
# the SVD uncounted.  CUDA (cuSOLVER) uses the same model, unmeasured.
_SVD_OVERHEAD = 1.25
_SVD_UV_OVERHEAD = 5
# Materializing T from state-space factors, rows at a time: the working set per row of a block,
# in units of L * N entries (the block's segment sums, which exp and the B-product overwrite,
# plus the within-block segment sums' temporaries; x 2 with autograd, which cannot work in place).
_MATERIALIZE_OVERHEAD = 4
# Chunks whose working set is at least this big are followed by a check of the C heap (see
# _HeapTrimmer); the freed memory a call holds is kept under a quarter of its budget.
_TRIM_MIN_BYTES = 2**20
_TRIM_FRACTION = 0.25


def resolve_indices(indices: "int | Sequence[int] | torch.Tensor | None", seq_len: int) -> torch.Tensor:
    """Validate sequence indices (each in ``1..L-1``) and return them as a 1-D int64 tensor.

    ``indices``: None (all), an int, a sequence of ints (list, tuple, range...) or an integer
    tensor of at most one dim."""
    check_int("seq_len", seq_len, 2)
    if indices is None:
        return torch.arange(1, seq_len, dtype=torch.long)
    idx = _index_tensor(indices)
    bad = idx[(idx < 1) | (idx > seq_len - 1)]
    if bad.numel():
        raise ValueError(
            f"indices must lie in 1..L-1 = 1..{seq_len - 1} (H_i = T[i:, :i] is empty otherwise); "
            f"got {bad.tolist()[:8]}"
        )
    return idx


def _index_tensor(indices: "int | Sequence[int] | torch.Tensor") -> torch.Tensor:
    """``indices`` as a non-empty 1-D int64 CPU tensor, its type and shape checked (not its range)."""
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"indices must be integers, got a tensor of dtype {indices.dtype}")
        if indices.dim() > 1:
            raise ValueError(f"indices must be a 1-D tensor, got shape {tuple(indices.shape)}")
        idx = indices.detach().to("cpu", torch.long).reshape(-1)
    else:
        if isinstance(indices, int) and not isinstance(indices, bool):
            indices = [indices]
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
            raise ValueError(
                f"indices must be None, an int, a sequence of ints or an integer tensor, got {indices!r}"
            )
        if any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
            raise ValueError(f"indices must be integers, got {list(indices)!r}")
        idx = torch.tensor(list(indices), dtype=torch.long)
    if idx.numel() == 0:
        raise ValueError("indices is empty: ask for at least one sequence index in 1..L-1")
    return idx


def _compute_dtype(input_dtype: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        # Half-precision inputs are upcast: SVDs in bf16/fp16 are neither supported nor useful.
        return torch.float64 if input_dtype == torch.float64 else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype for spectra must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def _max_rank(idx: torch.Tensor, seq_len: int) -> torch.Tensor:
    return torch.minimum(idx, seq_len - idx)


def hankel_svdvals(
    x: "torch.Tensor | Operator",
    indices: "int | Sequence[int] | torch.Tensor | None" = None,
    *,
    method: str = "auto",
    dtype: torch.dtype | None = None,
    memory_budget: int | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Singular values of ``H_i = T[i:, :i]`` for each requested index ``i``.

    Args:
        x: a causal ``T`` of shape ``(..., L, L)``, or an operator.
        indices: sequence indices in ``1..L-1``; default all of them.
        method: ``"auto"`` (``"state_space"`` for a StateSpaceOperator, else ``"dense"``),
            ``"dense"``, ``"loop"`` or ``"state_space"``.
        dtype: float32 or float64; default float64 for float64 input, float32 otherwise.
        memory_budget: bytes the working tensors may take (default ``DEFAULT_MEMORY_BUDGET``);
            work is chunked over indices and batch (and, for a StateSpaceOperator on the dense
            path, rows of its materialized ``T``) to stay under it.  Not counted: ``x`` itself,
            the result, and with gradients what autograd keeps for the backward pass (on the
            dense path, every block's singular vectors).  Measured on CPU (``bench/memory.py``):
            peak growth within 1.25x the budget, plus a few MiB of one-time start-up.
        chunk_size: steps between the compressed factors of the state-space path (default
            ``DENSE_CHUNK`` = 4 when at least ``L / 4`` indices are asked, else ``SPARSE_CHUNK``
            = 16); an index's SVD is at most ``N + chunk_size - 1`` wide.

    Returns:
        ``(..., len(indices), width)``, descending, zero-padded; ``width`` is the largest rank
        any requested block can have: ``max_i min(i, L - i)``, capped at ``N`` for a
        state-space operator.  Entries past ``min(i, L - i, N)`` are exactly zero.
    """
    op = as_operator(x)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    finite_state = isinstance(op, (StateSpaceOperator, DeltaRuleOperator))
    if method == "auto":
        method = "state_space" if finite_state else "dense"
    if method == "state_space" and not finite_state:
        raise ValueError("method='state_space' needs a StateSpaceOperator or DeltaRuleOperator; a dense T has no "
                         "finite-state factors")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else _check_memory_budget(memory_budget)
    check_limit("chunk_size", chunk_size)
    idx = resolve_indices(indices, op.seq_len)
    compute_dtype = _compute_dtype(op.dtype, dtype)
    try:
        # Inside an autocast region (mixed-precision training) matmuls would drop to half precision.
        with torch.autocast(device_type=op.device.type, enabled=False):
            if isinstance(op, JacobianOperator):  # one SVD per index of the flattened multi-channel block
                return _jacobian_svdvals(op, idx, compute_dtype)
            if isinstance(op, DeltaRuleOperator):
                if method == "state_space":
                    return _delta_rule_svdvals(op, idx, compute_dtype)
                T = op.materialize()  # the reference: O(L^2 N)
                return _loop_svdvals(T, idx, compute_dtype) if method == "loop" else \
                    _dense_svdvals(T, idx, budget, dtype=compute_dtype)
            if method == "state_space":
                return _state_space_svdvals(op, idx, compute_dtype, budget, chunk_size)
            if method == "loop":
                return _loop_svdvals(op.materialize(), idx, compute_dtype)
            if isinstance(op, StateSpaceOperator):
                return _state_space_dense_svdvals(op, idx, compute_dtype, budget)
            # Converted to the compute dtype block by block, never as a whole.
            return _dense_svdvals(op.T, idx, budget, dtype=compute_dtype)
    except torch.linalg.LinAlgError as err:
        # Values are only scanned here when an SVD fails: a valid call pays nothing for it.
        tensors = ((op.log_decay, op.B, op.C) if isinstance(op, StateSpaceOperator)
                   else (op.log_alpha, op.beta, op.K, op.Q) if isinstance(op, DeltaRuleOperator)
                   else (op.J,) if isinstance(op, JacobianOperator) else (op.T,))
        if any(_nonfinite_count(t) for t in tensors):
            raise ValueError(
                "x has NaN/Inf entries (an operator built with check_values=False?): its spectra are undefined"
            ) from err
        raise


def _jacobian_svdvals(op: JacobianOperator, idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, len(idx), width)``, zero-padded to the widest block's rank."""
    _, length, d_out, _, d_in = op.J.shape
    width = max(min((length - int(i)) * d_out, int(i) * d_in) for i in idx.tolist())
    out = []
    for i in idx.tolist():
        sigma = torch.linalg.svdvals(op.hankel_block(int(i)).to(dtype))
        out.append(torch.nn.functional.pad(sigma, (0, width - sigma.shape[-1])))
    return torch.stack(out, dim=-2).unsqueeze(1)


def _delta_rule_svdvals(op: DeltaRuleOperator, idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The delta rule's spectra without ``T``: ``H_i = O_i R_{i-1}`` with square-root factors
    ``F`` (``F F^T = R R^T``, the inputs' directions in the state after step ``i - 1``) and ``G``
    (``G G^T = O_i^T O_i``), each carried through the transitions one step at a time and kept at
    width ``N`` (:func:`_compress`): ``F_t = [A_t F_{t-1}, beta_t k_t]``, ``G_t = A_t [q_t, G_{t+1}]``
    (``A_t`` is symmetric), then ``svdvals(G_i^T F_{i-1})``. ``O(L N^2)`` per step for the chains,
    one ``N x N`` SVD per index."""
    length, state = op.seq_len, op.state_size
    log_alpha, beta, K, Q = (t.to(dtype).reshape(-1, length, t.shape[-1]) for t in op.factors())
    batch = K.shape[0]
    idx = idx.to(op.device)
    wanted = set(idx.tolist())
    inputs = beta * K  # (batch, L, N)
    step = [(log_alpha[:, t], beta[:, t], K[:, t]) for t in range(length)]

    F, forward = K.new_zeros(batch, state, 0), {}
    for t in range(int(idx.max())):  # F after step t serves index t + 1
        F = torch.cat([delta_rule_transition(*step[t], F), inputs[:, t, :, None]], dim=-1)
        if F.shape[-1] > state:
            F = _compress(F)
        if t + 1 in wanted:
            forward[t + 1] = F
    G, backward = K.new_zeros(batch, state, 0), {}
    for t in range(length - 1, int(idx.min()) - 1, -1):
        G = delta_rule_transition(*step[t], torch.cat([Q[:, t, :, None], G], dim=-1))
        if G.shape[-1] > state:
            G = _compress(G)
        if t in wanted:
            backward[t] = G

    def square(m: torch.Tensor) -> torch.Tensor:  # zero-padded to N x N: the same singular values
        return torch.nn.functional.pad(m, (0, state - m.shape[-1], 0, state - m.shape[-2]))

    products = torch.stack([square(backward[i].transpose(-1, -2) @ forward[i]) for i in idx.tolist()], dim=1)
    sigma = torch.linalg.svdvals(products)  # (batch, k, N)
    max_rank = _max_rank(idx, length)
    keep = torch.arange(state, device=sigma.device).unsqueeze(0) < max_rank.unsqueeze(1)
    width = min(state, int(max_rank.max()))
    return (sigma * keep)[..., :width].reshape(*op.batch_shape, len(idx), width)


def _check_memory_budget(memory_budget) -> int:
    """A positive, finite number of bytes (NaN, inf, a bool or a non-number would switch it off)."""
    check_number("memory_budget", memory_budget, minimum=1)
    return int(memory_budget)


def _pad_to(sigma: torch.Tensor, width: int) -> torch.Tensor:
    if sigma.shape[-1] >= width:
        return sigma[..., :width]
    return torch.nn.functional.pad(sigma, (0, width - sigma.shape[-1]))


def _loop_svdvals(T: torch.Tensor, idx: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One SVD per index: the definition, kept as the reference (each block converted to
    ``dtype`` on its own)."""
    length = T.shape[-1]
    width = int(_max_rank(idx, length).max())
    dtype = T.dtype if dtype is None else dtype
    rows = [_pad_to(torch.linalg.svdvals(T[..., i:, :i].to(dtype)), width) for i in idx.tolist()]
    return torch.stack(rows, dim=-2)


def _batch_chunks(batch: int, bytes_per_item: int, budget: int, what: str) -> int:
    """How many batch elements fit the budget at once (at least one, else a clear error)."""
    if bytes_per_item > budget:
        raise ValueError(
            f"{what} needs {bytes_per_item / 2**20:.1f} MiB for a single batch element, more than "
            f"memory_budget={budget / 2**20:.1f} MiB; raise memory_budget or ask for fewer indices"
        )
    return max(1, min(batch, budget // bytes_per_item))


@functools.lru_cache(maxsize=4)
def _svd_pool(workers: int) -> ThreadPoolExecutor:
    # One intra-op thread per worker: nested OpenMP teams on few cores spin against each
    # other (measured: 30x slower than serial on 2 cores without this).
    return ThreadPoolExecutor(workers, thread_name_prefix="ess-svd", initializer=torch.set_num_threads, initargs=(1,))


def _workers(device: torch.device, tasks: int) -> int:
    """Threads for batched small SVD/QR work: LAPACK on CPU runs a batch one matrix at a time
    on one core, so the batch is split over ``torch.get_num_threads()`` workers; CUDA batches."""
    return max(1, min(torch.get_num_threads(), tasks)) if device.type == "cpu" else 1


def _map(fn, items: list, workers: int) -> list:
    """``[fn(item) for item in items]``, over the thread pool when ``workers > 1``."""
    return list(_imap(fn, items, workers))


def _imap(fn, items: list, workers: int) -> Iterator:
    """``fn(item)`` for each item, in order, as they come (over the thread pool when
    ``workers > 1``): the caller can store each result and drop it before the next."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    grad_enabled, threads = torch.is_grad_enabled(), torch.get_num_threads()

    def call(item):
        with torch.set_grad_enabled(grad_enabled):  # grad mode is thread-local
            return fn(item)

    try:
        yield from _svd_pool(workers).map(call, items)
    finally:
        if torch.get_num_threads() != threads:  # a build whose thread setting is global, not per thread
            torch.set_num_threads(threads)


def _block_reader(T: torch.Tensor):
    """``read(b0, b1, lo, hi)``: ``T[..., lo:, :hi]`` for the batch entries ``b0:b1`` (batch dims
    flattened), shape ``(b1 - b0, L - lo, hi)``, in T's dtype: a view when T's batch dims merge
    into one (any contiguous T), else a copy of just that block (never of the whole T).  Also
    returns whether reads copy."""
    length = T.shape[-1]
    try:
        flat = T.view(-1, length, length)
    except RuntimeError:  # batch dims that do not merge (an expanded or permuted T)
        flat = None
    if flat is not None:
        return (lambda b0, b1, lo, hi: flat[b0:b1, lo:, :hi]), False
    batch_shape = T.shape[:-2]

    def read(b0: int, b1: int, lo: int, hi: int) -> torch.Tensor:
        where = torch.unravel_index(torch.arange(b0, b1, device=T.device), batch_shape)
        return T[..., lo:, :hi][where]

    return read, True


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library's allocator controls when it is glibc >= 2.33 (``mallinfo2``,
    ``malloc_trim``), else None (macOS, musl, Windows: no trimming)."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process: libc's, on Linux
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError, TypeError):
        return None
    return libc


class _HeapTrimmer:
    """Keeps the freed memory the C heap holds on to during a call under a quarter of its budget.

    glibc serves an allocation below its mmap threshold (which rises, up to 32 MiB, as large
    blocks are freed) from its heaps and keeps freed heap memory resident for reuse.  Temporaries
    that change size from one batch chunk to the next (the blocks of successive indices) leave
    holes the next, larger, chunk cannot use, and the process grew by up to about twice the live
    working set (measured at L=2048, float32 and bfloat16 T: 1.6-1.9x a 36 MiB budget whose
    chunks were sized right).  ``check()``, after a chunk, gives the free memory back to the
    system (``malloc_trim``) when that chunk was big for the budget (at least ``limit / 2``)
    or when the free bytes held have grown by more than ``limit`` since the last trim: the
    held extra then stays about ``limit`` at most.  Chunks under ``_TRIM_MIN_BYTES`` are never
    checked (a check walks the allocator's free lists; a trim makes the next chunk fault its
    pages in again: measured 1-3% of the SVD time of 16-36 MiB chunks, the worst case).
    A no-op off glibc and off the CPU.
    """

    def __init__(self, budget: int, device: torch.device):
        self.libc = _glibc() if device.type == "cpu" else None
        self.limit = budget * _TRIM_FRACTION
        self.mark = self._held() if self.libc is not None else 0

    def _held(self) -> int:
        return int(self.libc.mallinfo2().fordblks)

    def check(self, chunk_bytes: float) -> None:
        if self.libc is None or chunk_bytes < _TRIM_MIN_BYTES:
            return
        if chunk_bytes >= self.limit / 2 or self._held() - self.mark > self.limit:
            self.libc.malloc_trim(0)
            self.mark = self._held()


def _dense_item_bytes(
    length: int, group: list[int], item_size: int, svd_overhead: float, converts: bool, gather_size: int
) -> int:
    """Working bytes of one batch element of a group's SVD batch on the dense path: the SVDs
    (``svd_overhead`` x the padded blocks, see ``_SVD_OVERHEAD``), the zero-padded batch the
    blocks of a group of several indices are copied into, or else a single block's converted
    copy (``converts``), and the block gathered from a T whose batch dims do not merge
    (``gather_size``: T's element size, 0 when reads are views)."""
    area = (length - group[0]) * group[-1]  # the padded block covering every H_i of the group
    need = len(group) * area * item_size * svd_overhead
    if len(group) > 1:
        need += len(group) * area * item_size
    elif converts:
        need += area * item_size
    return math.ceil(need + area * gather_size)


def _dense_svdvals(
    T: torch.Tensor, idx: torch.Tensor, budget: int, span: int | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """SVDs batched over indices: blocks of a group share one zero-padded shape.

    On CUDA, neighbouring indices are grouped into one batched SVD (padding changes no
    singular value).  On CPU, LAPACK runs a batch one matrix at a time, so padding would only
    add work: each index is its own exact block, and the blocks are spread over a thread pool
    of ``torch.get_num_threads()`` workers (a small SVD uses one core).  ``span`` overrides
    how far apart the indices of one group may be (0: one index per group).

    ``dtype`` (default T's): the SVDs' dtype; only the blocks being decomposed are converted,
    one batch chunk at a time.  Every temporary of a batch chunk is counted against ``budget``
    (split evenly over the workers; fewer workers when one block needs more than a share):
    see ``_dense_item_bytes``.  Not counted: T itself, the returned tensor and what autograd
    keeps for the backward pass (each block's singular vectors).
    """
    length = T.shape[-1]
    batch_shape = T.shape[:-2]
    batch = batch_shape.numel()
    dtype = T.dtype if dtype is None else dtype
    width = int(_max_rank(idx, length).max())
    if batch == 0:  # an empty batch: no SVD to run (as on the state-space path)
        return T.new_zeros(*batch_shape, len(idx), width, dtype=dtype)
    on_cpu = T.device.type == "cpu"
    read, reads_copy = _block_reader(T)
    needs_grad = torch.is_grad_enabled() and T.requires_grad
    item_bytes = functools.partial(
        _dense_item_bytes,
        length,
        item_size=torch.empty((), dtype=dtype).element_size(),
        svd_overhead=_SVD_UV_OVERHEAD if needs_grad else _SVD_OVERHEAD,
        converts=dtype != T.dtype,
        gather_size=T.element_size() if reads_copy else 0,
    )
    order = torch.argsort(idx)
    sorted_idx = idx[order].tolist()
    # As many workers as can each hold the largest single block (at least one).
    largest = max(item_bytes([i]) for i in sorted_idx)
    workers = max(1, min(_workers(T.device, len(idx)), budget // largest))
    budget_per_worker = budget // workers
    max_span = span if span is not None else (0 if on_cpu else max(1, length // 16))
    groups: list[list[int]] = [[sorted_idx[0]]]
    for i in sorted_idx[1:]:
        if i - groups[-1][0] <= max_span and item_bytes([*groups[-1], i]) <= budget_per_worker:
            groups[-1].append(i)
        else:
            groups.append([i])

    def read_blocks(b0: int, b1: int, group: list[int]) -> torch.Tensor:
        """``(b1 - b0, len(group), L - lo, hi)``: each H_i of the group, zero-padded, in ``dtype``."""
        lo, hi = group[0], group[-1]
        if len(group) == 1:
            return read(b0, b1, lo, hi).to(dtype).unsqueeze(1)  # a view when nothing converts
        padded = torch.zeros(b1 - b0, len(group), length - lo, hi, dtype=dtype, device=T.device)
        for k, i in enumerate(group):  # H_i: rows from i, columns before i (the rest stays zero)
            padded[:, k, i - lo :, :i] = read(b0, b1, i, i)
        return padded

    trimmer = _HeapTrimmer(budget, T.device)

    def group_svdvals(group: list[int]) -> torch.Tensor:
        per_item = item_bytes(group)
        step = _batch_chunks(batch, per_item, budget_per_worker, f"the dense SVD of index {group[0]}")
        parts = []
        for b in range(0, batch, step):
            parts.append(torch.linalg.svdvals(read_blocks(b, min(batch, b + step), group)))
            trimmer.check(per_item * min(step, batch - b))
        return _pad_to(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0), width)  # (batch, group, width)

    results = _imap(group_svdvals, groups, workers)
    if needs_grad:  # one autograd graph: concatenate, then restore the order of idx
        sigma = torch.cat(list(results), dim=1)  # (batch, k, width) in sorted order
        if not bool((order == torch.arange(len(idx))).all()):
            sigma = sigma[:, torch.argsort(order)]
        return sigma.reshape(*batch_shape, len(idx), width)
    # No gradient: each group's values go straight to their rows of the output (written here,
    # not in the workers, which do not share an inference-mode caller's state).
    sigma = torch.empty(batch, len(idx), width, dtype=dtype, device=T.device)
    start = 0
    for group, values in zip(groups, results):
        sigma[:, order[start : start + len(group)].to(T.device)] = values
        start += len(group)
    return sigma.reshape(*batch_shape, len(idx), width)


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
    width = int(_max_rank(idx, length).max())
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
    max_rank = _max_rank(idx, length)
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
