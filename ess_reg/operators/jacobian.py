"""A multi-input multi-output causal operator given by its Jacobian (any causal module: GRU,
LSTM, a nonlinear layer; built by :mod:`ess_reg.jacobian`), and its spectra path: one SVD per
index of the block that flattens every channel."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_floating
from .batching import block_svdvals
from .checks import _check_finite, _check_multiplicity, _head, shape_rank


class JacobianOperator:
    """A multi-input multi-output causal operator, one per example: ``J`` of shape
    ``(B, L, D_out, L, D_in)`` with ``J[b, t, :, s, :]`` the map from input ``s`` to output ``t``
    (zero for ``s > t``); typically the input-output Jacobian of a nonlinear layer
    (:mod:`ess_reg.jacobian`). Its Hankel block at index ``i`` is ``J[b, i:, :, :i, :]``
    flattened to ``((L - i) D_out) x (i D_in)``: every channel at once. Batch shape ``(B, 1)``.
    """

    def __init__(self, J: torch.Tensor, multiplicity: int = 1, *, check_values: bool = True):
        check_floating("J", J)
        if J.dim() != 5 or J.shape[1] != J.shape[3]:
            raise ValueError(f"J must be (B, L, D_out, L, D_in), got shape {tuple(J.shape)}")
        if J.shape[1] < 2:
            raise ValueError(f"sequence length L must be >= 2, got L={J.shape[1]}")
        if check_values:
            _check_finite("J", J)
        self.J = J
        self.multiplicity = _check_multiplicity(multiplicity)

    @property
    def seq_len(self) -> int:
        return self.J.shape[1]

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size((self.J.shape[0], 1))

    @property
    def dtype(self) -> torch.dtype:
        return self.J.dtype

    @property
    def device(self) -> torch.device:
        return self.J.device

    def batch_head(self, n: int) -> JacobianOperator:
        return JacobianOperator(_head(self.J, n, 5), self.multiplicity, check_values=False)

    def index_batch(self, dim: int, index: torch.Tensor) -> JacobianOperator:
        index = torch.as_tensor(index, dtype=torch.long, device=self.J.device)
        if dim == 0:
            return JacobianOperator(self.J.index_select(0, index), self.multiplicity, check_values=False)
        if dim == 1 and bool((index == 0).all()) and len(index) == 1:
            return self  # its one channel
        raise ValueError(f"a JacobianOperator has one channel (batch dim 1 of size 1); got dim={dim}, index={index}")

    def hankel_block(self, index: int) -> torch.Tensor:
        """``(B, (L - i) D_out, i D_in)``: the block at sequence index ``index``."""
        b, length, d_out, _, d_in = self.J.shape
        return self.J[:, index:, :, :index, :].reshape(b, (length - index) * d_out, index * d_in)

    kind = "jacobian"
    methods = ("dense", "loop")  # both are its one path: an SVD per index of the flattened block
    state_size = None

    @property
    def io_width(self) -> tuple[int, int]:
        """``(D_in, D_out)``: channels into and out of each step."""
        return self.J.shape[4], self.J.shape[2]

    def max_rank(self, idx: torch.Tensor) -> torch.Tensor:
        """The most rank ``H_i`` can have by its shape: ``min(i D_in, (L - i) D_out)``."""
        return shape_rank(idx, self.seq_len, self.io_width)

    def svdvals(self, idx: torch.Tensor, *, method: str, dtype: torch.dtype, budget: int,
                chunk_size: int | None = None) -> torch.Tensor:
        """``(B, 1, len(idx), width)``, zero-padded to the widest block's rank."""
        width = int(self.max_rank(idx).max())
        out = []
        for i in idx.tolist():
            sigma = block_svdvals(self.hankel_block(int(i)).to(dtype))
            out.append(torch.nn.functional.pad(sigma, (0, width - sigma.shape[-1])))
        return torch.stack(out, dim=-2).unsqueeze(1)

    def value_tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.J,)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """``y[b, t] = sum_s J[b, t, :, s, :] v[b, s]`` for ``v`` of shape ``(B, L, D_in)``."""
        check_floating("v", v)
        if v.shape != (self.J.shape[0], self.seq_len, self.J.shape[4]):
            raise ValueError(f"v must have shape (B, L, D_in) = {(self.J.shape[0], self.seq_len, self.J.shape[4])}, "
                             f"got {tuple(v.shape)}")
        return torch.einsum("btosi,bsi->bto", self.J, v)

    def apply_reference(self, v: torch.Tensor) -> torch.Tensor:
        return self.apply(v)

    def __repr__(self) -> str:
        return f"JacobianOperator(shape={tuple(self.J.shape)}, dtype={self.J.dtype})"


# ---- building one from a module: the Jacobian at an input -----------------------------------------

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
