"""A causal convolution between two diagonal gates (Hyena's long convolutions, gated short
convolutions), kept as its filter and gates: ``T[..., i, j] = q_i h[i - j] k_j`` for ``j <= i``.

It applies in ``O(L log L)`` by FFT and never needs ``T``: the matrix-free path multiplies by
its Hankel blocks the same way (:mod:`ess_reg.matrix_free`), and ``||H_i||_F^2`` is one more
convolution (of ``h^2`` with ``k^2``).  The exact paths materialize ``T`` a few channels at a
time within the memory budget, then take the dense path.

Lags inside a block are ``r - c`` with ``c < i <= r``: between 1 and ``L - 1``, never negative,
so circular convolutions of length ``L`` (no zero padding) give the block products exactly.
"""

from __future__ import annotations

import torch

from .._checks import check_floating
from ..kernels.long_conv import causal_fft_conv, toeplitz
from .batching import _batch_chunks
from .checks import _check_finite, _check_multiplicity, _check_values, _head, _select, shape_rank
from .dense import _dense_svdvals, _loop_svdvals


class ToeplitzOperator:
    """``T[..., i, j] = q[..., i] h[..., i - j] k[..., j]`` (``j <= i``): a causal filter ``h``
    ``(..., L)`` between an output gate ``q`` and an input gate ``k`` (each ``(..., L)`` or None
    for no gate); leading dims broadcast to the batch shape."""

    kind = "toeplitz"
    methods = ("dense", "loop")  # exact: T materialized a few channels at a time
    io_width = (1, 1)
    state_size = None  # a convolution keeps its whole input history: rank bounded by the shape

    def __init__(self, h: torch.Tensor, q: torch.Tensor | None = None, k: torch.Tensor | None = None,
                 multiplicity: int = 1, *, check_values: bool = True):
        check_floating("h", h)
        gates = {"q": q, "k": k}
        for name, gate in gates.items():
            if gate is not None:
                check_floating(name, gate)
        if h.dim() < 1 or h.shape[-1] < 2:
            raise ValueError(f"h must have shape (..., L) with L >= 2, got {tuple(h.shape)}")
        length = h.shape[-1]
        for name, gate in gates.items():
            if gate is not None and (gate.dim() < 1 or gate.shape[-1] != length):
                raise ValueError(f"{name} must have shape (..., L) with L = {length} (h's), got {tuple(gate.shape)}")
        tensors = [h, *(g for g in gates.values() if g is not None)]
        if len({t.dtype for t in tensors}) != 1:
            raise ValueError(f"h, q and k must share a dtype, got {[t.dtype for t in tensors]}")
        try:
            self._batch_shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
        except RuntimeError:
            raise ValueError(f"leading (batch) dims of h, q and k do not broadcast: "
                             f"{[tuple(t.shape) for t in tensors]}") from None
        if check_values:
            for name, t in (("h", h), *gates.items()):
                if t is not None:
                    _check_finite(name, t)
        self.h = h
        self.q = q if q is not None else torch.ones_like(h)
        self.k = k if k is not None else torch.ones_like(h)
        self.multiplicity = _check_multiplicity(multiplicity)
        self._spectra: dict[torch.dtype, torch.Tensor] = {}

    @property
    def seq_len(self) -> int:
        return self.h.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        return self._batch_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.h.dtype

    @property
    def device(self) -> torch.device:
        return self.h.device

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(h, q, k)`` broadcast to the full batch shape."""
        shape = (*self.batch_shape, self.seq_len)
        return self.h.expand(shape), self.q.expand(shape), self.k.expand(shape)

    def materialize(self) -> torch.Tensor:
        """The dense ``(..., L, L)`` matrix."""
        return self.q[..., :, None] * toeplitz(self.h) * self.k[..., None, :]

    def max_rank(self, idx: torch.Tensor) -> torch.Tensor:
        return shape_rank(idx, self.seq_len)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """``T @ v`` for ``v`` of shape ``(..., L, K)`` by FFT."""
        _check_values(v, self.seq_len)
        u = (self.k[..., :, None] * v).transpose(-1, -2)  # (..., K, L)
        return self.q[..., :, None] * causal_fft_conv(u, self.h[..., None, :]).transpose(-1, -2)

    def apply_reference(self, v: torch.Tensor) -> torch.Tensor:
        _check_values(v, self.seq_len)
        return self.materialize() @ v

    def batch_head(self, n: int) -> "ToeplitzOperator":
        rank = len(self.batch_shape) + 1
        return ToeplitzOperator(*(_head(t, n, rank) for t in (self.h, self.q, self.k)), self.multiplicity,
                                check_values=False)

    def index_batch(self, dim: int, index: torch.Tensor) -> "ToeplitzOperator":
        rank = len(self.batch_shape)
        # _select takes (*batch, L, F) factors: each (..., L) one gets a trailing dim for it.
        return ToeplitzOperator(*(_select(t.unsqueeze(-1), dim, index, rank).squeeze(-1)
                                  for t in (self.h, self.q, self.k)), self.multiplicity, check_values=False)

    def value_tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.h, self.q, self.k)

    def svdvals(self, idx: torch.Tensor, *, method: str, dtype: torch.dtype, budget: int,
                chunk_size: int | None = None) -> torch.Tensor:
        """Exact: ``T`` materialized for as many channels at a time as half the budget holds."""
        h, q, k = (t.reshape(-1, self.seq_len) for t in self.factors())
        batch = h.shape[0]
        t_bytes = self.seq_len ** 2 * torch.empty((), dtype=dtype).element_size()
        step = _batch_chunks(batch, t_bytes, budget // 2, "a Toeplitz operator's materialized T")
        parts = []
        for b in range(0, batch, step):
            T = ToeplitzOperator(h[b : b + step], q[b : b + step], k[b : b + step], check_values=False).materialize()
            parts.append(_loop_svdvals(T, idx, dtype) if method == "loop"
                         else _dense_svdvals(T, idx, budget - step * t_bytes, dtype=dtype))
        sigma = torch.cat(parts, dim=0)
        return sigma.reshape(*self.batch_shape, *sigma.shape[1:])

    # ---- the matrix-free path: products with H_i = T[i:, :i] by circular FFTs of length L -------

    def _filter_spectrum(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._spectra:
            self._spectra[dtype] = torch.fft.rfft(self.h.to(dtype), n=self.seq_len)
        return self._spectra[dtype]

    def _convolve(self, u: torch.Tensor, spectrum: torch.Tensor, conjugate: bool = False) -> torch.Tensor:
        """Circular convolution (or correlation) over the last dim, length ``L``."""
        f = torch.fft.rfft(u, n=self.seq_len)
        return torch.fft.irfft(f * (spectrum.conj() if conjugate else spectrum), n=self.seq_len)

    def block_apply(self, i: int, X: torch.Tensor) -> torch.Tensor:
        u = torch.zeros(*X.shape[:-2], X.shape[-1], self.seq_len, dtype=X.dtype, device=X.device)
        u[..., :i] = (self.k[..., :i, None].to(X.dtype) * X).transpose(-1, -2)
        y = self._convolve(u, self._filter_spectrum(X.dtype).unsqueeze(-2))[..., i:]
        return self.q[..., i:, None].to(X.dtype) * y.transpose(-1, -2)

    def block_apply_transpose(self, i: int, Y: torch.Tensor) -> torch.Tensor:
        w = torch.zeros(*Y.shape[:-2], Y.shape[-1], self.seq_len, dtype=Y.dtype, device=Y.device)
        w[..., i:] = (self.q[..., i:, None].to(Y.dtype) * Y).transpose(-1, -2)
        z = self._convolve(w, self._filter_spectrum(Y.dtype).unsqueeze(-2), conjugate=True)[..., :i]
        return self.k[..., :i, None].to(Y.dtype) * z.transpose(-1, -2)

    def block_frobenius_sq(self, i: int, dtype: torch.dtype) -> torch.Tensor:
        """``sum_{r >= i, c < i} q_r^2 h_{r - c}^2 k_c^2``: a convolution of ``h^2`` with ``k^2``."""
        h, q, k = (t.to(dtype) for t in self.factors())
        inputs = torch.zeros_like(k)
        inputs[..., :i] = k[..., :i].square()
        spread = self._convolve(inputs, torch.fft.rfft(h.square(), n=self.seq_len))[..., i:]
        return (q[..., i:].square() * spread.clamp(min=0)).sum(-1)

    def block_matrix(self, i: int, dtype: torch.dtype, items: slice = slice(None)) -> torch.Tensor:
        """``H_i`` in ``dtype`` for the elements ``items`` of the flattened batch
        (ess_reg.matrix_free.ExplicitBlocks), built from the filter without ``T``: row ``r``
        holds the lags ``i + r`` down to ``r + 1``, the window ``h[r + 1 : r + i + 1]`` reversed."""
        h, q, k = (t.reshape(-1, self.seq_len)[items].to(dtype) for t in self.factors())
        block = h[..., 1:].unfold(-1, i, 1).flip(-1)  # (items, L - i, i), a new tensor
        return block.mul_(q[..., i:, None]).mul_(k[..., None, :i])

    def __repr__(self) -> str:
        return (f"ToeplitzOperator(batch_shape={tuple(self.batch_shape)}, L={self.seq_len}, dtype={self.dtype}, "
                f"multiplicity={self.multiplicity})")
