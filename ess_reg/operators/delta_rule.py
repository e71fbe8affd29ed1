"""The causal operator of the delta rule (DeltaNet, Gated DeltaNet): a state of size ``N`` whose
transitions are the identity plus a rank-one term, not diagonal; and its spectra paths.

* ``"state_space"``: square-root factors of the reachability and observability Gramians carried
  through the transitions one step at a time, never ``T`` (:func:`_delta_rule_svdvals`);
* ``"dense"`` and ``"loop"``: the references, on ``T`` materialized by carrying every input's
  column through the transitions.
"""

from __future__ import annotations

import torch

from .._checks import check_floating, check_limit
from ..kernels.delta_rule import chunked_delta_rule, delta_rule_transition, sequential_delta_rule
from .checks import _check_finite, _check_multiplicity, _check_values, _head, _select, shape_rank
from .dense import _dense_svdvals, _loop_svdvals
from .finite_state import FiniteStateOperator
from .state_space import _compress


class DeltaRuleOperator(FiniteStateOperator):
    """The causal operator of the delta rule (DeltaNet, Gated DeltaNet, Kimi's delta attention):
    state size ``N``, transitions ``A_t = (I - beta_t k_t k_t^T) diag(alpha_t)`` (identity plus
    rank one after a gate, not diagonal):

        x_t = A_t x_{t-1} + beta_t k_t u_t,    y_t = q_t . x_t

    so ``T[i, j] = q_i^T A_i ... A_{j+1} beta_j k_j`` for ``j <= i``. ``beta`` has shape
    ``(..., L)``, ``K`` and ``Q`` ``(..., L, N)``; ``log_alpha`` is ``(..., L)``, one gate for the
    whole state (Gated DeltaNet; DeltaNet is ``log_alpha = 0``; ``A_t`` is then symmetric), or
    ``(..., L, N)``, one per key channel (Kimi's delta attention): read as that when its last two
    dims are ``(L, N)`` and it has as many dims as ``K``. Leading dims broadcast. With
    ``check_values``, the transitions must not expand a state: ``log_alpha <= 0`` and
    ``0 <= beta |k|^2 <= 2`` (DeltaNet's normalized keys and ``beta`` in ``(0, 1)`` are inside).
    """

    def __init__(self, log_alpha: torch.Tensor, beta: torch.Tensor, K: torch.Tensor, Q: torch.Tensor,
                 multiplicity: int = 1, *, check_values: bool = True):
        for name, x in (("log_alpha", log_alpha), ("beta", beta), ("K", K), ("Q", Q)):
            check_floating(name, x)
        if K.dim() < 2 or K.shape[-2:] != Q.shape[-2:]:
            raise ValueError("K and Q must be (..., L, N) of the same L and N, "
                             f"got {tuple(K.shape)} and {tuple(Q.shape)}")
        length = K.shape[-2]
        per_channel = log_alpha.dim() == K.dim() and tuple(log_alpha.shape[-2:]) == tuple(K.shape[-2:])
        for name, x in (("log_alpha", log_alpha), ("beta", beta)):
            if not (name == "log_alpha" and per_channel) and (x.dim() < 1 or x.shape[-1] != length):
                raise ValueError(f"{name} must be (..., L) with L={length}"
                                 + (f", or (..., L, N) = (..., {length}, {K.shape[-1]})" if name == "log_alpha" else "")
                                 + f", got shape {tuple(x.shape)}")
        if length < 2:
            raise ValueError(f"sequence length L must be >= 2, got L={length}")
        if len({x.dtype for x in (log_alpha, beta, K, Q)}) != 1:
            raise ValueError("log_alpha, beta, K and Q must share a dtype")
        try:
            batch = torch.broadcast_shapes(log_alpha.shape[:-2] if per_channel else log_alpha.shape[:-1],
                                           beta.shape[:-1], K.shape[:-2], Q.shape[:-2])
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
        # log_alpha (one gate) and beta carry a trailing dim of 1, so that every factor is (..., L, F)
        self.log_alpha = log_alpha if per_channel else log_alpha.unsqueeze(-1)
        self.beta = beta.unsqueeze(-1)
        self.K, self.Q = K, Q
        self._factor = K
        self.multiplicity = _check_multiplicity(multiplicity)
        self._batch_shape = batch

    def _with(self, factors) -> DeltaRuleOperator:
        log_alpha, beta, K, Q = factors
        gates = log_alpha if self.log_alpha.shape[-1] != 1 else log_alpha.squeeze(-1)
        return DeltaRuleOperator(gates, beta.squeeze(-1), K, Q, self.multiplicity, check_values=False)

    def factors(self) -> tuple[torch.Tensor, ...]:
        """``(log_alpha, beta, K, Q)`` broadcast to the full batch shape (``beta`` ``(..., L, 1)``,
        ``log_alpha`` ``(..., L, 1)`` or ``(..., L, N)``)."""
        batch, length, state = self.batch_shape, self.seq_len, self.state_size
        return (self.log_alpha.expand(*batch, length, self.log_alpha.shape[-1]), self.beta.expand(*batch, length, 1),
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

    kind = "delta_rule"
    methods = ("state_space", "dense", "loop")  # the first is what method="auto" takes

    def svdvals(self, idx: torch.Tensor, *, method: str, dtype: torch.dtype, budget: int,
                chunk_size: int | None = None) -> torch.Tensor:
        """Singular values of ``H_i`` for the validated indices ``idx`` (see ``hankel_svdvals``)."""
        if method == "state_space":
            return _delta_rule_svdvals(self, idx, dtype)
        T = self.materialize()  # the reference: O(L^2 N)
        return _loop_svdvals(T, idx, dtype) if method == "loop" else _dense_svdvals(T, idx, budget, dtype=dtype)

    def value_tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.log_alpha, self.beta, self.K, self.Q)

    def __repr__(self) -> str:
        return (f"DeltaRuleOperator(batch_shape={tuple(self.batch_shape)}, L={self.seq_len}, N={self.state_size}, "
                f"dtype={self.dtype}, multiplicity={self.multiplicity})")


def _delta_rule_svdvals(op: DeltaRuleOperator, idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The delta rule's spectra without ``T``: ``H_i = O_i R_{i-1}`` with square-root factors
    ``F`` (``F F^T = R R^T``, the inputs' directions in the state after step ``i - 1``) and ``G``
    (``G G^T = O_i^T O_i``), each carried through the transitions one step at a time and kept at
    width ``N`` (:func:`_compress`): ``F_t = [A_t F_{t-1}, beta_t k_t]``, ``G_t = A_t^T [q_t, G_{t+1}]``,
    then ``svdvals(G_i^T F_{i-1})``. ``O(L N^2)`` per step for the chains,
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
        G = delta_rule_transition(*step[t], torch.cat([Q[:, t, :, None], G], dim=-1), transpose=True)
        if G.shape[-1] > state:
            G = _compress(G)
        if t in wanted:
            backward[t] = G

    def square(m: torch.Tensor) -> torch.Tensor:  # zero-padded to N x N: the same singular values
        return torch.nn.functional.pad(m, (0, state - m.shape[-1], 0, state - m.shape[-2]))

    products = torch.stack([square(backward[i].transpose(-1, -2) @ forward[i]) for i in idx.tolist()], dim=1)
    sigma = torch.linalg.svdvals(products)  # (batch, k, N)
    max_rank = shape_rank(idx, length)
    keep = torch.arange(state, device=sigma.device).unsqueeze(0) < max_rank.unsqueeze(1)
    width = min(state, int(max_rank.max()))
    return (sigma * keep)[..., :width].reshape(*op.batch_shape, len(idx), width)
