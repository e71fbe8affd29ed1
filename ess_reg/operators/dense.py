"""A causal operator given by its matrix ``T`` (softmax and sliding-window attention, long
convolutions, any operator a layer can only hand over whole), and its spectra path.

``H_i = T[i:, :i]`` is read straight out of ``T``:

* ``"loop"``: one SVD per index, the direct definition (reference and benchmark baseline).
* ``"dense"``: the same SVDs batched over indices (blocks zero-padded to a common shape, which
  leaves singular values unchanged), in chunks that respect a memory budget: every temporary is
  counted (blocks converted to the compute dtype one chunk at a time, LAPACK's copy and
  workspace); ``bench/memory.py`` measures the peak against the budget.
"""

from __future__ import annotations

import functools
import math

import torch

from .._checks import check_floating, check_number
from .batching import (_SVD_OVERHEAD, _SVD_UV_OVERHEAD, _batch_chunks, _HeapTrimmer, _imap, _pad_to, _workers,
                       block_svdvals)
from .checks import _check_causal_and_finite, _check_multiplicity, _check_values, _head, _select, shape_rank

# A dense T counts as causal when max|T above the diagonal| <= CAUSAL_RTOL * max|T|.
CAUSAL_RTOL = 1e-6


class DenseOperator:
    """A causal operator given by its matrix ``T`` of shape ``(..., L, L)``.

    ``check_values`` (default True) scans ``T`` for NaN/Inf and for entries above the diagonal
    larger than ``causal_rtol * max|T|``, slice by slice: its extra memory is one slice of at
    most ``_CHECK_CHUNK_BYTES`` (4 MiB) or one row, whatever the size of ``T``.
    """

    def __init__(
        self, T: torch.Tensor, multiplicity: int = 1, *, causal_rtol: float = CAUSAL_RTOL, check_values: bool = True
    ):
        check_floating("T", T)
        if T.dim() < 2:
            raise ValueError(f"T must have shape (..., L, L), got a {T.dim()}-d tensor")
        if T.shape[-1] != T.shape[-2]:
            raise ValueError(f"T must be square in its last two dims, got shape {tuple(T.shape)}")
        if T.shape[-1] < 2:
            raise ValueError(f"sequence length L must be >= 2, got L={T.shape[-1]}")
        check_number("causal_rtol", causal_rtol, minimum=0, finite=False)
        if check_values:
            _check_causal_and_finite(T, causal_rtol)
        self.T = T
        self.multiplicity = _check_multiplicity(multiplicity)

    @property
    def seq_len(self) -> int:
        return self.T.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        return self.T.shape[:-2]

    @property
    def dtype(self) -> torch.dtype:
        return self.T.dtype

    @property
    def device(self) -> torch.device:
        return self.T.device

    def materialize(self) -> torch.Tensor:
        return self.T

    def batch_head(self, n: int) -> "DenseOperator":
        """The operator of the first ``n`` elements of the leading (batch) dim."""
        return DenseOperator(_head(self.T, n, 3), self.multiplicity, check_values=False)

    def index_batch(self, dim: int, index: torch.Tensor) -> "DenseOperator":
        """The operator of the entries ``index`` of batch dim ``dim`` (e.g. some channels)."""
        return DenseOperator(_select(self.T, dim, index, len(self.batch_shape)), self.multiplicity, check_values=False)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """``T @ v`` for ``v`` of shape ``(..., L, K)`` (leading dims broadcast with T's)."""
        _check_values(v, self.seq_len)
        return self.T @ v

    # The matrix-free path (ess_reg.matrix_free.BlockProducts): products with H_i = T[i:, :i].
    def block_apply(self, i: int, X: torch.Tensor) -> torch.Tensor:
        return self.T[..., i:, :i].to(X.dtype) @ X

    def block_apply_transpose(self, i: int, Y: torch.Tensor) -> torch.Tensor:
        return self.T[..., i:, :i].to(Y.dtype).transpose(-1, -2) @ Y

    def block_frobenius_sq(self, i: int, dtype: torch.dtype) -> torch.Tensor:
        return self.T[..., i:, :i].to(dtype).square().sum((-1, -2))

    def block_matrix(self, i: int, dtype: torch.dtype, items: slice = slice(None)) -> torch.Tensor:
        """``H_i`` in ``dtype`` for the elements ``items`` of the flattened batch
        (ess_reg.matrix_free.ExplicitBlocks: the Gramian route)."""
        try:
            flat = self.T.view(-1, self.seq_len, self.seq_len)
        except RuntimeError:  # T's batch dims do not flatten as a view: take the blocks one by one
            heads = range(*items.indices(self.batch_shape.numel()))
            where = [torch.unravel_index(torch.tensor(j), self.batch_shape) for j in heads]
            return torch.stack([self.T[tuple(int(d) for d in w)][i:, :i].to(dtype) for w in where])
        return flat[items, i:, :i].to(dtype, copy=True)

    kind = "dense"
    methods = ("dense", "loop")  # the first is what method="auto" takes
    io_width = (1, 1)
    state_size = None  # no finite state: H_i's rank is bounded by its shape alone

    def max_rank(self, idx: torch.Tensor) -> torch.Tensor:
        """The most rank ``H_i`` can have: ``min(i, L - i)``."""
        return shape_rank(idx, self.seq_len)

    def svdvals(self, idx: torch.Tensor, *, method: str, dtype: torch.dtype, budget: int,
                chunk_size: int | None = None) -> torch.Tensor:
        """Singular values of ``H_i`` for the validated indices ``idx`` (see ``hankel_svdvals``)."""
        if method == "loop":
            return _loop_svdvals(self.T, idx, dtype)
        return _dense_svdvals(self.T, idx, budget, dtype=dtype)  # converted block by block, never as a whole

    def value_tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.T,)

    def apply_reference(self, v: torch.Tensor) -> torch.Tensor:
        """``T @ v``: the product is its own reference."""
        return self.apply(v)

    def __repr__(self) -> str:
        return f"DenseOperator(shape={tuple(self.T.shape)}, dtype={self.T.dtype}, multiplicity={self.multiplicity})"


def _loop_svdvals(T: torch.Tensor, idx: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One SVD per index: the definition, kept as the reference (each block converted to
    ``dtype`` on its own)."""
    length = T.shape[-1]
    width = int(shape_rank(idx, length).max())
    dtype = T.dtype if dtype is None else dtype
    rows = [_pad_to(block_svdvals(T[..., i:, :i].to(dtype)), width) for i in idx.tolist()]
    return torch.stack(rows, dim=-2)


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
    width = int(shape_rank(idx, length).max())
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
            parts.append(block_svdvals(read_blocks(b, min(batch, b + step), group)))
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

