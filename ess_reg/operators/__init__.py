"""Causal linear operators ``y = T u`` as sequence mixers apply them: one module per kind.

===========================  ==========================================  =====================
kind (module)                what it holds                               spectra paths
===========================  ==========================================  =====================
``dense`` (DenseOperator)    ``T`` itself, ``(..., L, L)``               dense, loop
``state_space``              diagonal log-decays and input / output      state_space, dense,
(StateSpaceOperator)         factors, ``(..., L, N)`` each               loop
``delta_rule``               gates, strengths, keys and queries of a     state_space, dense,
(DeltaRuleOperator)          non-diagonal (identity + rank one) state    loop
``toeplitz``                 a filter ``h`` between gates ``q``, ``k``,   dense, loop (``T``
(ToeplitzOperator)           ``(..., L)`` each: ``q_i h[i - j] k_j``      materialized)
``jacobian``                 ``J``, ``(B, L, D_out, L, D_in)``: several   dense (= loop)
(JacobianOperator)           channels in and out (a nonlinear layer)
``linearized``               a module and its input ``x``: products      dense (its Jacobian
(LinearizedOperator)         with ``J`` by JVP / VJP, ``J`` never formed  materialized)
===========================  ==========================================  =====================

Every kind follows :class:`Operator`, the protocol the rest of ess-reg uses: nothing outside
this package looks at an operator's concrete type.  What a kind knows about itself (how it
checks its values, how large its blocks' rank can be, how to take their singular values within
a memory budget) lives in its own module; :mod:`.finite_state` is the base of the two
finite-state kinds, :mod:`.batching` holds what their spectra paths share (the budget, the
thread pool, the C heap), :mod:`.checks` the shared checks.
:class:`DeferredOperator` is not a kind: it builds one only for the examples and channels a
probe asks for.

Leading dimensions are batch-like: typically ``(batch, channels)`` where a channel is a head or
a scalar channel.  ``multiplicity`` records how many value channels share one operator (a head
with ``d_v`` value channels counts ``d_v`` times in a total ESS).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .deferred import DeferredOperator, resolve
from .delta_rule import DeltaRuleOperator
from .dense import CAUSAL_RTOL, DenseOperator
from .jacobian import JacobianOperator
from .linearized import LinearizedOperator
from .toeplitz import ToeplitzOperator
from .state_space import StateSpaceOperator, selective_ssm_operator

__all__ = ["Operator", "DiagonalState", "DenseOperator", "StateSpaceOperator", "selective_ssm_operator",
           "DeltaRuleOperator", "JacobianOperator", "LinearizedOperator", "ToeplitzOperator",
           "DeferredOperator", "as_operator",
           "resolve", "CAUSAL_RTOL"]


@runtime_checkable
class Operator(Protocol):
    """What every operator kind offers.

    ``kind``: its name; ``methods``: the spectra paths it takes, the first being what
    ``method="auto"`` picks; ``io_width``: ``(D_in, D_out)`` channels per step (1, 1 but for a
    Jacobian); ``state_size``: ``N`` for a finite-state kind, None where only the shape bounds
    a block's rank; ``max_rank(idx)``: the most rank ``H_i`` can have; ``svdvals(idx, ...)``:
    the singular values of ``H_i`` for indices already validated, in the compute dtype, within
    the memory budget; ``value_tensors()``: what to scan for NaN/Inf when an SVD fails;
    ``apply(v)`` and ``apply_reference(v)``: ``T v`` by its fast path and by the plain
    definition; ``batch_head(n)`` and ``index_batch(dim, index)``: the operator of some examples
    or channels.
    """

    kind: str
    methods: tuple[str, ...]
    multiplicity: int

    @property
    def seq_len(self) -> int: ...
    @property
    def batch_shape(self) -> torch.Size: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def io_width(self) -> tuple[int, int]: ...
    @property
    def state_size(self) -> int | None: ...

    def max_rank(self, idx: torch.Tensor) -> torch.Tensor: ...
    def svdvals(self, idx: torch.Tensor, *, method: str, dtype: torch.dtype, budget: int,
                chunk_size: int | None = None) -> torch.Tensor: ...
    def value_tensors(self) -> tuple[torch.Tensor, ...]: ...
    def apply(self, v: torch.Tensor) -> torch.Tensor: ...
    def apply_reference(self, v: torch.Tensor) -> torch.Tensor: ...
    def batch_head(self, n: int) -> Operator: ...
    def index_batch(self, dim: int, index: torch.Tensor) -> Operator: ...


@runtime_checkable
class DiagonalState(Protocol):
    """An operator whose state coordinates evolve apart (a diagonal recurrence): each has its
    own decay, and its share of the operator can be scored and dropped (state compression,
    the ``decay_identity`` penalty)."""

    log_decay: torch.Tensor

    def coordinate_energy(self) -> torch.Tensor: ...


_KINDS = (DenseOperator, StateSpaceOperator, DeltaRuleOperator, JacobianOperator, LinearizedOperator,
          ToeplitzOperator)


def as_operator(x: torch.Tensor | Operator) -> Operator:
    """Wrap a dense ``T`` tensor as a :class:`DenseOperator`; pass operators through (any object
    that follows :class:`Operator`, a kind of the user's own too)."""
    if isinstance(x, _KINDS) or (not isinstance(x, torch.Tensor) and isinstance(x, Operator)):
        return x
    if isinstance(x, torch.Tensor):
        return DenseOperator(x)
    raise TypeError(
        f"expected a causal operator (DenseOperator, StateSpaceOperator or a (..., L, L) tensor), "
        f"got {type(x).__name__}"
    )
