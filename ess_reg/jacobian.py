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
hundreds, D in the tens), not for training steps.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._checks import check_floating
from .ess import LayerESS, layer_ess
from .indices import index_rule
from .operators import JacobianOperator

__all__ = ["input_output_jacobian", "jacobian_operator", "jacobian_ess", "CAUSAL_ATOL"]

# A Jacobian counts as causal when every d y[t] / d x[s > t] is below this, relative to its largest entry.
CAUSAL_ATOL = 1e-8


def input_output_jacobian(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``d module(x)[b, t, a] / d x[b, s, c]`` for each example: ``(B, L, D_out, L, D_in)``.

    ``module`` maps ``(B, L, D_in)`` to ``(B, L, D_out)`` (a tuple output: its first element),
    treating examples independently (no batch norm across examples)."""
    check_floating("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, L, D_in), got shape {tuple(x.shape)}")

    def one(example: torch.Tensor) -> torch.Tensor:
        out = module(example.unsqueeze(0))
        out = out[0] if isinstance(out, tuple) else out
        return out.squeeze(0)

    try:  # vectorized over the output rows (torch.func)
        return torch.stack([torch.func.jacrev(one)(example) for example in x])
    except RuntimeError:  # modules torch.func cannot batch (nn.GRU's hidden-state setup): one backward per row
        return torch.stack([torch.autograd.functional.jacobian(one, example, create_graph=torch.is_grad_enabled())
                            for example in x])


def _check_causal(jacobian: torch.Tensor) -> None:
    length = jacobian.shape[1]
    future = torch.ones(length, length, dtype=torch.bool, device=jacobian.device).triu(1)  # s > t
    leak = jacobian.abs().amax(dim=(2, 4))[:, future]  # (B, pairs)
    scale = jacobian.abs().amax().clamp_min(torch.finfo(jacobian.dtype).tiny)
    if leak.numel() and float(leak.max() / scale) > CAUSAL_ATOL:
        raise ValueError(f"the module is not causal: its outputs depend on later inputs (largest "
                         f"|d y[t] / d x[s > t]| is {float(leak.max() / scale):.2g} of the largest entry)")


def jacobian_operator(module: nn.Module, x: torch.Tensor, check_causal: bool = True) -> JacobianOperator:
    """``module`` linearized at ``x``, as a :class:`~ess_reg.operators.JacobianOperator`."""
    jacobian = input_output_jacobian(module, x)
    if check_causal:
        _check_causal(jacobian.detach())
    return JacobianOperator(jacobian, check_values=False)


def jacobian_ess(module: nn.Module, x: torch.Tensor, indices=None, *, kind: str = "tolerance",
                 ess_options: Mapping | None = None, check_causal: bool = True) -> LayerESS:
    """ESS of ``module`` linearized at ``x`` (``(B, L, D_in)``), at ``indices`` (an index rule or its
    short form, default all): a :class:`~ess_reg.ess.LayerESS` whose ``values`` are
    ``(B, 1, len(indices))`` (one multi-input multi-output operator per example). Differentiable
    with ``kind="entropy"`` or ``"soft_tolerance"`` (second derivatives of the module)."""
    op = jacobian_operator(module, x, check_causal)
    idx = index_rule(indices)(op.seq_len, None, torch.Generator().manual_seed(0))
    return layer_ess({"module": op}, kind, idx, ess_options=ess_options)["module"]
