"""Causal linear operators ``y = T u`` as sequence mixers apply them.

Two containers, one per way a mixer can describe what it applied:

* :class:`DenseOperator` holds ``T`` itself, shape ``(..., L, L)``, lower-triangular.
  Softmax / sliding-window attention and long convolutions are naturally dense.
* :class:`StateSpaceOperator` holds per-step diagonal log-decays and input / output factors,
  each ``(..., L, N)``, meaning ``T[i, j] = sum_n C[i, n] exp(sum_{t=j+1..i} log_decay[t, n]) B[j, n]``
  for ``j <= i``.  Linear attention (``log_decay = 0``), gated / weighted linear attention
  and diagonal SSMs are of this form with a finite state ``N``; ``log_decay[0]`` never enters.

Leading dimensions are batch-like: typically ``(batch, channels)`` where a channel is a head
or a scalar channel.  ``multiplicity`` records how many value channels share one operator
(a head with ``d_v`` value channels counts ``d_v`` times in a total ESS).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ._checks import check_floating, check_limit, check_number
from .kernels.delta_rule import chunked_delta_rule, sequential_delta_rule
from .kernels.scan import scan_apply
from .kernels.segments import segment_sums

__all__ = ["DenseOperator", "StateSpaceOperator", "selective_ssm_operator", "DeltaRuleOperator", "JacobianOperator", "DeferredOperator", "as_operator", "Operator"]

# A dense T counts as causal when max|T above the diagonal| <= CAUSAL_RTOL * max|T|.
CAUSAL_RTOL = 1e-6


def _check_finite(name: str, x: torch.Tensor) -> None:
    bad = _nonfinite_count(x)  # slice by slice: no full-size temporary
    if bad:
        raise ValueError(f"{name} has {bad} NaN/Inf entries")


def _check_multiplicity(multiplicity: int) -> int:
    if isinstance(multiplicity, bool) or not isinstance(multiplicity, int) or multiplicity < 1:
        raise ValueError(f"multiplicity must be a positive int, got {multiplicity!r}")
    return multiplicity


# Validation scans a dense T in slices of at most this many bytes (at least one row), so its
# extra memory is one slice-sized buffer whatever the size of T: the whole-tensor checks held
# full-size |T|, triu and isfinite temporaries (about 2x T at peak).  Measured on 2 cores, one
# thread: 4 MiB slices are also the fastest (cache-sized; 0.25-16 MiB tried), 6-13x faster than
# the whole-tensor checks for T of 8-32 MiB.
_CHECK_CHUNK_BYTES = 4 * 2**20


def _slices(x: torch.Tensor, max_elems: int) -> Iterator[tuple[torch.Tensor, int]]:
    """Views that cover ``x`` of shape ``(..., R, K)`` once, each of at most ``max_elems``
    entries (or one row, if a row is longer), with the index of each view's first row in its
    matrix (0 for views of whole matrices)."""
    if x.numel() <= max_elems:
        yield x, 0
        return
    if x.dim() > 2:
        per = x[0].numel()
        step = max(1, max_elems // max(per, 1))
        for start in range(0, x.shape[0], step):
            if per <= max_elems:
                yield x[start : start + step], 0
            else:  # one matrix (or more) per entry of dim 0 is too big: slice inside it
                yield from _slices(x[start], max_elems)
        return
    rows = max(1, max_elems // max(x.shape[-1], 1))
    for start in range(0, x.shape[0], rows):
        yield x[start : start + rows], start


def _nonfinite_count(x: torch.Tensor) -> int:
    """Number of NaN/Inf entries of ``x``, counted slice by slice (no full-size temporary)."""
    if x.numel() == 0:
        return 0
    max_elems = max(1, _CHECK_CHUNK_BYTES // x.element_size())
    with torch.no_grad():
        return sum(int((~torch.isfinite(part)).sum()) for part, _ in _slices(x, max_elems))


def _check_causal_and_finite(T: torch.Tensor, causal_rtol: float) -> None:
    """``T`` finite, and ``max|T above the diagonal| <= causal_rtol * max|T|``, in one pass over
    slices of ``T``: the extra memory is one buffer of ``|slice|`` (at most ``_CHECK_CHUNK_BYTES``
    or one row), reused from slice to slice, not a copy of ``T`` (a new buffer per slice left
    holes in the C heap that the next could not reuse: five builds of a 32 MiB T grew the
    process by up to 2.5x T).  Same verdicts and messages as the whole-tensor checks (maxima
    are exact; NaN/Inf counted over all of T)."""
    if T.numel() == 0:
        return
    max_elems = max(1, _CHECK_CHUNK_BYTES // T.element_size())
    upper = scale = buffer = None
    bad = 0
    with torch.no_grad():
        for part, row0 in _slices(T, max_elems):
            if bad:  # already invalid: only the count of bad entries is still needed
                bad += int((~torch.isfinite(part)).sum())
                continue
            if buffer is None or buffer.numel() < part.numel():
                buffer = torch.empty(part.numel(), dtype=T.dtype, device=T.device)
            magnitude = torch.abs(part, out=buffer[: part.numel()].view(part.shape))
            part_scale = magnitude.amax()  # NaN-propagating: a non-finite max flags the slice
            if not bool(torch.isfinite(part_scale)):
                bad += int((~torch.isfinite(part)).sum())
                continue
            # Entry (r, j) of a slice starting at row row0 is above the diagonal when j > row0 + r.
            part_upper = magnitude.triu_(1 + row0).amax()
            upper = part_upper if upper is None else torch.maximum(upper, part_upper)
            scale = part_scale if scale is None else torch.maximum(scale, part_scale)
        del buffer
        if bad:
            raise ValueError(f"T has {bad} NaN/Inf entries")
        if upper > causal_rtol * scale:
            raise ValueError(
                "T is not causal: max |T[i, j]| above the diagonal (j > i) is "
                f"{upper.item():.3g}, more than {causal_rtol:g} x max |T| = {scale.item():.3g}"
            )


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

    def __repr__(self) -> str:
        return f"DenseOperator(shape={tuple(self.T.shape)}, dtype={self.T.dtype}, multiplicity={self.multiplicity})"


class StateSpaceOperator:
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
        self.multiplicity = _check_multiplicity(multiplicity)
        self._batch_shape = batch

    @property
    def seq_len(self) -> int:
        return self.B.shape[-2]

    @property
    def state_size(self) -> int:
        return self.B.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        return self._batch_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.B.dtype

    @property
    def device(self) -> torch.device:
        return self.B.device

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


class DeltaRuleOperator:
    """The causal operator of the delta rule (DeltaNet, Gated DeltaNet): state size ``N``,
    transitions ``A_t = alpha_t (I - beta_t k_t k_t^T)`` (identity plus rank one, not diagonal):

        x_t = A_t x_{t-1} + beta_t k_t u_t,    y_t = q_t . x_t

    so ``T[i, j] = q_i^T A_i ... A_{j+1} beta_j k_j`` for ``j <= i``. ``log_alpha`` and ``beta``
    have shape ``(..., L)``, ``K`` and ``Q`` ``(..., L, N)`` (leading dims broadcast; DeltaNet is
    ``log_alpha = 0``). With ``check_values``, the transitions must not expand a state:
    ``log_alpha <= 0`` and ``0 <= beta |k|^2 <= 2`` (DeltaNet's normalized keys and ``beta`` in
    ``(0, 1)`` are inside).
    """

    def __init__(self, log_alpha: torch.Tensor, beta: torch.Tensor, K: torch.Tensor, Q: torch.Tensor,
                 multiplicity: int = 1, *, check_values: bool = True):
        for name, x in (("log_alpha", log_alpha), ("beta", beta), ("K", K), ("Q", Q)):
            check_floating(name, x)
        if K.dim() < 2 or K.shape[-2:] != Q.shape[-2:]:
            raise ValueError(f"K and Q must be (..., L, N) of the same L and N, got {tuple(K.shape)} and {tuple(Q.shape)}")
        length = K.shape[-2]
        for name, x in (("log_alpha", log_alpha), ("beta", beta)):
            if x.dim() < 1 or x.shape[-1] != length:
                raise ValueError(f"{name} must be (..., L) with L={length}, got shape {tuple(x.shape)}")
        if length < 2:
            raise ValueError(f"sequence length L must be >= 2, got L={length}")
        if len({x.dtype for x in (log_alpha, beta, K, Q)}) != 1:
            raise ValueError("log_alpha, beta, K and Q must share a dtype")
        try:
            batch = torch.broadcast_shapes(log_alpha.shape[:-1], beta.shape[:-1], K.shape[:-2], Q.shape[:-2])
        except RuntimeError:
            raise ValueError("leading (batch) dims of log_alpha, beta, K and Q do not broadcast") from None
        if check_values:
            for name, x in (("log_alpha", log_alpha), ("beta", beta), ("K", K), ("Q", Q)):
                _check_finite(name, x)
            if bool((log_alpha > 0).any()):
                raise ValueError(f"log_alpha must be <= 0 (a gate in (0, 1]); its largest entry is "
                                 f"{log_alpha.max().item():.3g}")
            strength = beta * K.square().sum(-1)
            if bool((strength < 0).any()) or bool((strength > 2 + 1e-6).any()):
                raise ValueError(f"beta |k|^2 must be in [0, 2] (a transition that does not expand the state); "
                                 f"it ranges over [{strength.min().item():.3g}, {strength.max().item():.3g}]")
        # log_alpha and beta carry a trailing dim of 1, so that every factor is (..., L, F)
        self.log_alpha, self.beta = log_alpha.unsqueeze(-1), beta.unsqueeze(-1)
        self.K, self.Q = K, Q
        self.multiplicity = _check_multiplicity(multiplicity)
        self._batch_shape = batch

    @property
    def seq_len(self) -> int:
        return self.K.shape[-2]

    @property
    def state_size(self) -> int:
        return self.K.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        return self._batch_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.K.dtype

    @property
    def device(self) -> torch.device:
        return self.K.device

    def _with(self, factors) -> DeltaRuleOperator:
        log_alpha, beta, K, Q = factors
        return DeltaRuleOperator(log_alpha.squeeze(-1), beta.squeeze(-1), K, Q, self.multiplicity, check_values=False)

    def factors(self) -> tuple[torch.Tensor, ...]:
        """``(log_alpha, beta, K, Q)`` broadcast to the full batch shape (the first two ``(..., L, 1)``)."""
        batch, length, state = self.batch_shape, self.seq_len, self.state_size
        return (self.log_alpha.expand(*batch, length, 1), self.beta.expand(*batch, length, 1),
                self.K.expand(*batch, length, state), self.Q.expand(*batch, length, state))

    def batch_head(self, n: int) -> DeltaRuleOperator:
        if not self.batch_shape:
            raise ValueError("this operator has no batch dim to take the head of")
        return self._with(_head(t, n, 3) for t in (self.log_alpha, self.beta, self.K, self.Q))

    def index_batch(self, dim: int, index: torch.Tensor) -> DeltaRuleOperator:
        rank = len(self.batch_shape)
        return self._with(_select(t, dim, index, rank) for t in (self.log_alpha, self.beta, self.K, self.Q))

    def materialize(self) -> torch.Tensor:
        """The dense ``(..., L, L)`` matrix, by carrying every input's column through the
        transitions: ``O(L^2 N)`` time, ``L N`` state per batch element."""
        log_alpha, beta, K, Q = self.factors()
        length = self.seq_len
        eye = torch.eye(length, dtype=self.dtype, device=self.device)
        return sequential_delta_rule(log_alpha, beta, K, Q, eye.expand(*self.batch_shape, length, length))

    def apply(self, v: torch.Tensor, chunk_size: int = 32, method: str = "chunked") -> torch.Tensor:
        """``T @ v`` for ``v`` of shape ``(..., L, W)``: ``"chunked"`` (``chunk_size + L / chunk_size``
        sequential steps, :mod:`ess_reg.kernels.delta_rule`) or ``"sequential"`` (the reference)."""
        _check_values(v, self.seq_len)
        if method == "sequential":
            return sequential_delta_rule(self.log_alpha, self.beta, self.K, self.Q, v)
        if method != "chunked":
            raise ValueError(f"unknown method {method!r} for a DeltaRuleOperator; choose 'chunked' or 'sequential'")
        return chunked_delta_rule(self.log_alpha, self.beta, self.K, self.Q, v, check_limit("chunk_size", chunk_size))

    def __repr__(self) -> str:
        return (f"DeltaRuleOperator(batch_shape={tuple(self.batch_shape)}, L={self.seq_len}, N={self.state_size}, "
                f"dtype={self.dtype}, multiplicity={self.multiplicity})")


Operator = DenseOperator | StateSpaceOperator


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

    def __repr__(self) -> str:
        return f"JacobianOperator(shape={tuple(self.J.shape)}, dtype={self.J.dtype})"


class DeferredOperator:
    """An operator built only for the examples and channels someone looks at.

    ``build(examples, channels)`` returns the concrete operator of the first ``examples``
    examples (``None``: all) and of the channels ``channels`` (an index tensor; ``None``: all)
    of an operator of batch shape ``(batch, channels)``. A layer whose factors are expansions
    of much smaller streams hands this over instead (``s6``: its decay ``dt x A`` is
    ``(B, E, L, N)``, built from ``(B, L, E)`` and ``(E, N)``), so that a probe that takes 8
    examples and 16 channels never expands the rest. :meth:`batch_head` and :meth:`index_batch`
    narrow it as they narrow any operator; :meth:`resolve` builds it.
    """

    def __init__(self, build, batch_shape: tuple[int, int], seq_len: int, multiplicity: int = 1, *,
                 examples: int | None = None, channels: torch.Tensor | None = None):
        if not callable(build):
            raise TypeError(f"build must be a function (examples, channels) -> operator, got {build!r}")
        if len(batch_shape) != 2:
            raise ValueError(f"a deferred operator has batch shape (batch, channels), got {tuple(batch_shape)}")
        self.build, self.full_batch_shape, self.seq_len = build, tuple(batch_shape), seq_len
        self.multiplicity = _check_multiplicity(multiplicity)
        self.examples, self.channels = examples, channels

    @property
    def batch_shape(self) -> torch.Size:
        b, c = self.full_batch_shape
        return torch.Size((b if self.examples is None else min(self.examples, b),
                           c if self.channels is None else len(self.channels)))

    def batch_head(self, n: int) -> DeferredOperator:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"batch head size must be a positive int, got {n!r}")
        return DeferredOperator(self.build, self.full_batch_shape, self.seq_len, self.multiplicity,
                                examples=min(n, self.batch_shape[0]), channels=self.channels)

    def index_batch(self, dim: int, index: torch.Tensor) -> DeferredOperator:
        if dim != 1:
            raise ValueError(f"a deferred operator selects along its channel dim (1) only, got dim={dim!r}")
        index = torch.as_tensor(index, dtype=torch.long)
        channels = index if self.channels is None else self.channels[index]
        return DeferredOperator(self.build, self.full_batch_shape, self.seq_len, self.multiplicity,
                                examples=self.examples, channels=channels)

    def resolve(self) -> Operator:
        return self.build(self.examples, self.channels)

    def __repr__(self) -> str:
        return f"DeferredOperator(batch_shape={tuple(self.batch_shape)}, L={self.seq_len})"


def resolve(op) -> Operator:
    """``op`` itself, or the operator a :class:`DeferredOperator` builds."""
    return op.resolve() if isinstance(op, DeferredOperator) else op


def _head(x: torch.Tensor, n: int, min_dim: int) -> torch.Tensor:
    """``x[:n]`` along dim 0 when that dim is a batch dim of size > 1; else ``x`` (broadcast)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"batch head size must be a positive int, got {n!r}")
    return x[:n] if x.dim() >= min_dim and x.shape[0] > 1 else x


def _select(x: torch.Tensor, dim: int, index: torch.Tensor, batch_rank: int) -> torch.Tensor:
    """``index_select`` along batch dim ``dim`` of an operator factor ``(*batch, L, F)`` whose
    leading dims broadcast to ``batch_rank`` dims; a dim of size 1 or absent there stays shared."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < batch_rank:
        raise ValueError(f"dim must index one of the {batch_rank} batch dims, got {dim!r}")
    own = dim - (batch_rank - (x.dim() - 2))  # x may have fewer leading dims (broadcast)
    try:
        as_tensor = index if isinstance(index, torch.Tensor) else torch.as_tensor(index)
    except (TypeError, ValueError, RuntimeError):
        as_tensor = None
    if as_tensor is None or (as_tensor.numel() and (as_tensor.is_floating_point() or as_tensor.is_complex()
                                                    or as_tensor.dtype == torch.bool)):
        raise ValueError(f"index must be a 1-D list or integer tensor of batch entries, got {index!r}")
    if own < 0 or x.shape[own] == 1:
        return x
    index = torch.as_tensor(index, dtype=torch.long, device=x.device)
    if index.dim() != 1 or (index.numel() and not 0 <= int(index.min()) <= int(index.max()) < x.shape[own]):
        raise ValueError(f"index must be a 1-D list of entries in [0, {x.shape[own]}), got {index.tolist()}")
    return x.index_select(own, index)


def _check_values(v: torch.Tensor, length: int) -> None:
    check_floating("v", v)
    if v.dim() < 2 or v.shape[-2] != length:
        raise ValueError(f"v must have shape (..., L={length}, K), got {tuple(v.shape)}")


def as_operator(x: "torch.Tensor | Operator") -> Operator:
    """Wrap a dense ``T`` tensor as a :class:`DenseOperator`; pass operators through."""
    if isinstance(x, (DenseOperator, StateSpaceOperator, DeltaRuleOperator, JacobianOperator)):
        return x
    if isinstance(x, torch.Tensor):
        return DenseOperator(x)
    raise TypeError(
        f"expected a causal operator (DenseOperator, StateSpaceOperator or a (..., L, L) tensor), "
        f"got {type(x).__name__}"
    )
