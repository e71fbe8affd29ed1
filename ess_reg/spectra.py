"""Singular values of the blocks ``H_i = T[i:, :i]`` of a causal operator: the one entry point.

``H_i`` maps every input strictly before ``i`` to every output from ``i`` on; its rank is the
smallest state any recurrence realizing ``T`` needs at step ``i``.  :func:`hankel_svdvals`
checks what the caller asked for (method, indices, dtype, memory budget) once and hands the
work to the operator's own spectra path (:mod:`ess_reg.operators`: ``"loop"``, one SVD per
index, the definition; ``"dense"``, the same SVDs batched within the budget; ``"state_space"``,
square-root factors of finite-state operators, never ``T``).  Every path gives one answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import check_limit
from .indices import resolve_indices
from .operators import Operator, as_operator
from .operators.batching import DEFAULT_MEMORY_BUDGET, _check_memory_budget
from .operators.checks import _nonfinite_count

__all__ = ["hankel_svdvals", "resolve_indices", "DEFAULT_MEMORY_BUDGET", "METHODS"]

METHODS = ("auto", "dense", "loop", "state_space")


def _compute_dtype(input_dtype: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        # Half-precision inputs are upcast: SVDs in bf16/fp16 are neither supported nor useful.
        return torch.float64 if input_dtype == torch.float64 else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype for spectra must be torch.float32 or torch.float64, got {dtype}")
    return dtype



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
        method: ``"auto"`` (the operator kind's first: ``"state_space"`` for a state-space or
            delta-rule operator, else ``"dense"``), ``"dense"``, ``"loop"`` or ``"state_space"``.
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
    if method == "auto":
        method = op.methods[0]
    if method not in op.methods:
        if method == "state_space":
            raise ValueError(f"method='state_space' needs a StateSpaceOperator or DeltaRuleOperator; a {op.kind} "
                             "operator has no finite-state factors")
        raise ValueError(f"method={method!r} does not apply to a {op.kind} operator; it takes {op.methods}")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else _check_memory_budget(memory_budget)
    check_limit("chunk_size", chunk_size)
    idx = resolve_indices(indices, op.seq_len)
    compute_dtype = _compute_dtype(op.dtype, dtype)
    try:
        # Inside an autocast region (mixed-precision training) matmuls would drop to half precision.
        with torch.autocast(device_type=op.device.type, enabled=False):
            return op.svdvals(idx, method=method, dtype=compute_dtype, budget=budget, chunk_size=chunk_size)
    except torch.linalg.LinAlgError as err:
        # Values are only scanned here when an SVD fails: a valid call pays nothing for it.
        if any(_nonfinite_count(t) for t in op.value_tensors()):
            raise ValueError(
                "x has NaN/Inf entries (an operator built with check_values=False?): its spectra are undefined"
            ) from err
        raise
