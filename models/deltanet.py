"""DeltaNet and Gated DeltaNet: linear attention whose state is corrected, not only added to.

    x_t = alpha_t (I - beta_t k_t k_t^T) x_{t-1} + beta_t k_t v_t^T,    y_t = x_t^T q_t

The state (``N x d_v`` per head, ``N = feature_dim``) first forgets what it held along ``k_t``
(by ``beta_t``), then writes ``v_t`` there: a delta-rule update. Keys and queries are
L2-normalized after a SiLU (as flash-linear-attention's DeltaNet), so ``beta |k|^2 = beta`` is in
``(0, 1)``: every transition is a contraction. ``beta_t = sigmoid(W_beta x_t)`` per head.
Gated DeltaNet adds a decay per head and step, Mamba2's: ``log alpha_t = -exp(A_log)
softplus(W_a x_t + dt_bias)``, and a SiLU output gate. The operator is a
:class:`ess_reg.DeltaRuleOperator` (transitions that are not diagonal); the forward runs its
chunked form (:mod:`ess_reg.kernels.delta_rule`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ess_reg.operators import DeltaRuleOperator

from .base import Mixer, MixerTrace, RMSNorm, check_positive, head_dim, inverse_softplus, log_uniform, merge_heads, \
    split_heads


class DeltaNet(Mixer):
    apply_method = "chunked"

    def __init__(self, d_model: int, num_heads: int = 1, feature_dim: int = 16, chunk_size: int = 32,
                 bias: bool = False):
        super().__init__(d_model)
        check_positive("feature_dim", feature_dim)
        check_positive("chunk_size", chunk_size)
        self.num_heads, self.head_dim = num_heads, head_dim(d_model, num_heads)
        self.feature_dim, self.chunk_size = feature_dim, chunk_size
        self.q = nn.Linear(d_model, num_heads * feature_dim, bias=bias)
        self.k = nn.Linear(d_model, num_heads * feature_dim, bias=bias)
        self.v = nn.Linear(d_model, d_model, bias=bias)
        self.beta = nn.Linear(d_model, num_heads, bias=True)
        self.norm = RMSNorm(self.head_dim)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    @classmethod
    def state_kwargs(cls, state_size: int, **kwargs) -> dict:
        check_positive("state_size", state_size)
        return {"feature_dim": state_size}

    def log_alpha(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step log-decays ``(B, H, L)``; none for DeltaNet."""
        return x.new_zeros(()).expand(x.shape[0], self.num_heads, x.shape[1])

    def readout(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.out(merge_heads(self.norm(y)))

    def operator_and_values(self, x: torch.Tensor, check_values: bool = True) -> MixerTrace:
        q = F.normalize(F.silu(split_heads(self.q(x), self.num_heads)), dim=-1)
        k = F.normalize(F.silu(split_heads(self.k(x), self.num_heads)), dim=-1)
        v = split_heads(self.v(x), self.num_heads)
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2)  # (B, H, L)
        op = DeltaRuleOperator(self.log_alpha(x), beta, k, q, multiplicity=self.head_dim, check_values=check_values)
        return MixerTrace(op, v, lambda y: self.readout(y, x))

    def state_size(self) -> int:
        return self.feature_dim


class GatedDeltaNet(DeltaNet):
    def __init__(self, d_model: int, num_heads: int = 1, feature_dim: int = 16, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, **kwargs):
        super().__init__(d_model, num_heads, feature_dim, **kwargs)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.a = nn.Linear(d_model, num_heads, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(num_heads).uniform_(1, 16)))
        self.dt_bias = nn.Parameter(inverse_softplus(log_uniform(num_heads, dt_min, dt_max)))
        self.output_gate = nn.Linear(d_model, d_model, bias=False)

    def log_alpha(self, x: torch.Tensor) -> torch.Tensor:
        step = F.softplus(self.a(x) + self.dt_bias.to(x.dtype))  # (B, L, H)
        return (-torch.exp(self.A_log.to(x.dtype)) * step).transpose(1, 2)

    def readout(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.out(merge_heads(self.norm(y)) * F.silu(self.output_gate(x)))
