"""A causal module linearized at an input, without its Jacobian: products with the Hankel blocks
by forward- and reverse-mode differentiation, for the matrix-free path
(:mod:`ess_reg.matrix_free`).

``H_i X`` is a Jacobian-vector product whose tangent is ``X`` on the inputs before ``i`` (zero
after), read on the outputs from ``i`` on; ``H_i^T Y`` a vector-Jacobian product the other
way.  A block of ``b`` vectors is one pass over ``b`` copies of the input stacked on the batch
dim (the module must treat examples independently).  The full Jacobian takes ``L D_out``
backward passes and ``(L D_out) x (L D_in)`` memory; a basis of the block's rank takes
``2 rank / b`` passes, and a recurrence with a state of ``N`` numbers has blocks of rank at most
``N``: give it as ``state_size`` and the basis that reaches it yields the exact spectrum.

``||H_i||_F`` is not known without the whole block, so only that rank certifies here; the
exact path (``svdvals``) materializes the Jacobian (:class:`JacobianOperator`).
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_floating, check_int
from .checks import _check_multiplicity
from .jacobian import JacobianOperator, jacobian_operator


class LinearizedOperator:
    """``module`` linearized at ``x`` (``(B, L, D_in)`` -> ``(B, L, D_out)``), one operator per
    example: batch shape ``(B, 1)``, like :class:`JacobianOperator`.  ``state_size``: the most
    numbers the module carries from step to step (a GRU's hidden size, an LSTM's twice its
    hidden size), which bounds every block's rank; None bounds it by the block's shape only."""

    kind = "linearized"
    methods = ("dense",)  # the exact path: the Jacobian, materialized

    def __init__(self, module: nn.Module, x: torch.Tensor, state_size: int | None = None, multiplicity: int = 1):
        check_floating("x", x)
        if x.dim() != 3:
            raise ValueError(f"x must be (batch, L, D_in), got shape {tuple(x.shape)}")
        if x.shape[1] < 2:
            raise ValueError(f"sequence length L must be >= 2, got L={x.shape[1]}")
        if state_size is not None:
            check_int("state_size", state_size, 1)
        self.module, self.x, self._state_size = module, x.detach(), state_size
        with torch.no_grad():
            out = self._call(self.x)
        self._d_out = out.shape[-1]
        self.multiplicity = _check_multiplicity(multiplicity)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        return out[0] if isinstance(out, tuple) else out

    @property
    def seq_len(self) -> int:
        return self.x.shape[1]

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size((self.x.shape[0], 1))

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def io_width(self) -> tuple[int, int]:
        return self.x.shape[-1], self._d_out

    @property
    def state_size(self) -> int | None:
        return self._state_size

    def max_rank(self, idx: torch.Tensor) -> torch.Tensor:
        d_in, d_out = self.io_width
        rank = torch.minimum(idx * d_in, (self.seq_len - idx) * d_out)
        return rank if self._state_size is None else rank.clamp(max=self._state_size)

    def jacobian(self) -> JacobianOperator:
        """The materialized :class:`JacobianOperator` (``L D_out`` backward passes)."""
        return jacobian_operator(self.module, self.x)

    def svdvals(self, idx: torch.Tensor, *, method: str, dtype: torch.dtype, budget: int,
                chunk_size: int | None = None) -> torch.Tensor:
        sigma = self.jacobian().svdvals(idx, method=method, dtype=dtype, budget=budget)
        return sigma if self._state_size is None else sigma[..., : self._state_size]

    def value_tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.x,)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` for ``v`` of shape ``(B, L, D_in)``: one Jacobian-vector product."""
        check_floating("v", v)
        if v.shape != self.x.shape:
            raise ValueError(f"v must have shape (B, L, D_in) = {tuple(self.x.shape)}, got {tuple(v.shape)}")
        return self._jvp(v.to(self.x.dtype))

    def apply_reference(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` through the materialized Jacobian."""
        return self.jacobian().apply(v)

    def batch_head(self, n: int) -> "LinearizedOperator":
        return LinearizedOperator(self.module, self.x[:n], self._state_size, self.multiplicity)

    def index_batch(self, dim: int, index: torch.Tensor) -> "LinearizedOperator":
        index = torch.as_tensor(index, dtype=torch.long, device=self.x.device)
        if dim == 0:
            return LinearizedOperator(self.module, self.x.index_select(0, index), self._state_size,
                                      self.multiplicity)
        if dim == 1 and len(index) == 1 and bool((index == 0).all()):
            return self  # its one channel
        raise ValueError(f"a LinearizedOperator has one channel (batch dim 1 of size 1); got dim={dim}, index={index}")

    # ---- products with the blocks (the matrix-free path) ------------------------------------

    # The passes run in the module's own dtype (x's); the products come back in the dtype of
    # the vectors given (float64 on the matrix-free path), so the module is never converted.

    def _jvp(self, tangent: torch.Tensor) -> torch.Tensor:
        """``J t`` for tangents ``(n B, L, D_in)``, one pass over ``n`` stacked copies of x."""
        stacked = self.x.repeat(tangent.shape[0] // self.x.shape[0], 1, 1)
        try:
            return torch.func.jvp(self._call, (stacked,), (tangent,))[1]
        except RuntimeError:  # no forward-mode rule: the double-backward trick
            return torch.autograd.functional.jvp(self._call, stacked, tangent)[1]

    def _vjp(self, cotangent: torch.Tensor) -> torch.Tensor:
        """``J^T c`` for cotangents ``(n B, L, D_out)``."""
        with torch.enable_grad():
            stacked = self.x.repeat(cotangent.shape[0] // self.x.shape[0], 1, 1).requires_grad_(True)
            return torch.autograd.grad(self._call(stacked), stacked, cotangent)[0]

    def block_apply(self, i: int, X: torch.Tensor) -> torch.Tensor:
        return self.block_apply_many([i], [X])[0]

    def block_apply_transpose(self, i: int, Y: torch.Tensor) -> torch.Tensor:
        return self.block_apply_transpose_many([i], [Y])[0]

    # Several blocks in one pass: the tangents of every index stacked on the batch dim (a
    # recurrence's pass costs about the same for 16 copies of x as for 256).

    def block_apply_many(self, indices: list[int], vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[H_i X_i]`` for each index, one JVP pass for all of them."""
        batch, length, d_in = self.x.shape
        widths = [X.shape[-1] for X in vectors]
        tangent = self.x.new_zeros(sum(widths), batch, length, d_in)
        start = 0
        for i, X, b in zip(indices, vectors, widths):
            tangent[start : start + b, :, :i] = X.reshape(batch, i, d_in, b).permute(3, 0, 1, 2)
            start += b
        out = self._jvp(tangent.reshape(-1, length, d_in)).reshape(sum(widths), batch, length, -1)
        results, start = [], 0
        for i, X, b in zip(indices, vectors, widths):
            block = out[start : start + b, :, i:].to(X.dtype)  # (b, B, L - i, D_out)
            results.append(block.permute(1, 2, 3, 0).reshape(batch, 1, -1, b))
            start += b
        return results

    def block_apply_transpose_many(self, indices: list[int], vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[H_i^T Y_i]`` for each index, one VJP pass for all of them."""
        batch, length, d_in = self.x.shape
        d_out = self._d_out
        widths = [Y.shape[-1] for Y in vectors]
        cotangent = self.x.new_zeros(sum(widths), batch, length, d_out)
        start = 0
        for i, Y, b in zip(indices, vectors, widths):
            cotangent[start : start + b, :, i:] = Y.reshape(batch, length - i, d_out, b).permute(3, 0, 1, 2)
            start += b
        grad = self._vjp(cotangent.reshape(-1, length, d_out)).reshape(sum(widths), batch, length, d_in)
        results, start = [], 0
        for i, Y, b in zip(indices, vectors, widths):
            block = grad[start : start + b, :, :i].to(Y.dtype)  # (b, B, i, D_in)
            results.append(block.permute(1, 2, 3, 0).reshape(batch, 1, -1, b))
            start += b
        return results

    def block_frobenius_sq(self, i: int, dtype: torch.dtype) -> None:
        return None  # not known without the whole block: only the rank bound certifies

    def __repr__(self) -> str:
        return (f"LinearizedOperator(module={type(self.module).__name__}, x={tuple(self.x.shape)}, "
                f"state_size={self._state_size})")


__all__ = ["LinearizedOperator"]
