"""ESS of any causal module through its input-output Jacobian (a local linearization).

A nonlinear recurrence (LSTM, GRU, minGRU) has no linear operator, but around an input ``x``
it acts like one: ``J[t, a, s, b] = d y[t, a] / d x[s, b]``, zero for ``s > t`` when the module
is causal. At sequence index ``i`` the Hankel block ``J[i:, :, :i, :]``, flattened to a
``((L - i) D_out) x (i D_in)`` matrix, says how much of the past ``< i`` the outputs ``>= i``
depend on, through every channel at once (multi-input multi-output); its ESS (entropy or
tolerance of its singular values) is the layer's ESS at ``i``. A recurrence whose state has
``h`` numbers passes everything through them, so the block's rank, and its tolerance-ESS, is at
most ``h`` (``2h`` for an LSTM's ``(h, c)``). For a linear module the Jacobian is its operator, and
the Jacobian ESS equals the operator's.

Cost: the Jacobian takes ``L D_out`` backward passes per example (vectorized by ``torch.func``
where the module allows it, else one after the other)
and ``(L D_out) x (L D_in)`` memory, then one SVD per index: for small probes (L in the
hundreds, D in the tens), not for training steps. Without forming it:
:class:`~ess_reg.operators.LinearizedOperator` and :func:`~ess_reg.certified_ess`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .ess import LayerESS, layer_ess
from .indices import index_rule
# built by the kind's own module; named here, where the Jacobian ESS is
from .operators.jacobian import CAUSAL_ATOL, input_output_jacobian, jacobian_operator

__all__ = ["input_output_jacobian", "jacobian_operator", "jacobian_ess", "CAUSAL_ATOL"]

def jacobian_ess(module: nn.Module, x: torch.Tensor, indices=None, *, kind: str = "tolerance",
                 ess_options: Mapping | None = None, check_causal: bool = True) -> LayerESS:
    """ESS of ``module`` linearized at ``x`` (``(B, L, D_in)``), at ``indices`` (an index rule or its
    short form, default all): a :class:`~ess_reg.ess.LayerESS` whose ``values`` are
    ``(B, 1, len(indices))`` (one multi-input multi-output operator per example). Differentiable
    with ``kind="entropy"`` or ``"soft_tolerance"`` (second derivatives of the module)."""
    op = jacobian_operator(module, x, check_causal)
    idx = index_rule(indices)(op.seq_len, None, torch.Generator().manual_seed(0))
    return layer_ess({"module": op}, kind, idx, ess_options=ess_options)["module"]
