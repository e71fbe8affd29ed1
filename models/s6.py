"""Selective SSM (S6, the Mamba block): per channel ``T[i, j] = C_i^T (prod_{t=j+1..i} exp(dt_t A)) dt_j B_j``.

In-projection to ``expand * d_model`` channels and a gate, a short causal conv, input-dependent
``dt`` / ``B`` / ``C``, ``A = -exp(A_log)``, a ``D`` skip and a SiLU output gate.  Each channel
is its own operator with state ``d_state`` (TSS ``d_state`` per channel).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ess_reg import StateSpaceOperator
from ess_reg.operators import selective_ssm_operator
from ess_reg.contract import capturing, hand_over
from ess_reg.operators import DeferredOperator
from ess_reg.kernels import selective_scan

from .base import (Mixer, MixerTrace, ShortConv, channels_first, channels_last, check_positive, inverse_softplus,
                   keep_rows, log_uniform, top_coordinates)

A_INITS = ("s4d_real", "s4d_lin", "constant", "uniform")


def init_log_neg_a(channels: int, d_state: int, scheme: str) -> torch.Tensor:
    """``log(-A)`` of shape ``(channels, d_state)`` for a named init scheme."""
    n = torch.arange(1, d_state + 1, dtype=torch.float32).expand(channels, d_state)
    if scheme == "s4d_real":  # A_n = -n: modes from slow to fast (Mamba's default)
        return n.log()
    if scheme == "s4d_lin":  # real part of S4D-Lin: A_n = -1/2 for every mode
        return torch.full((channels, d_state), math.log(0.5))
    if scheme == "constant":  # A_n = -1 for every mode
        return torch.zeros(channels, d_state)
    if scheme == "uniform":  # -A uniform in [0.5, d_state]
        return torch.empty(channels, d_state).uniform_(0.5, d_state).log()
    raise ValueError(f"unknown a_init {scheme!r}; choose one of {A_INITS}")


class SelectiveSSM(Mixer):
    init_schemes = tuple({"a_init": scheme} for scheme in A_INITS)

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        a_init: str = "s4d_real",
        bias: bool = False,
    ):
        super().__init__(d_model)
        for name, value in (("d_state", d_state), ("expand", expand), ("d_conv", d_conv)):
            check_positive(name, value)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.d_state, self.d_inner = d_state, expand * d_model
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        check_positive("dt_rank", self.dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv = ShortConv(self.d_inner, d_conv)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        with torch.no_grad():  # dt starts log-uniform in [dt_min, dt_max], as in Mamba
            self.dt_proj.bias.copy_(inverse_softplus(log_uniform(self.d_inner, dt_min, dt_max)))
        self.A_log = nn.Parameter(init_log_neg_a(self.d_inner, d_state, a_init))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def _streams(self, x: torch.Tensor):
        """``u, z, dt (B, L, E)``, ``A (E, N)``, ``B, C (B, L, N)``."""
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv(u))
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        return u, z, dt, -torch.exp(self.A_log.to(x.dtype)), B, C

    def _readout(self, y: torch.Tensor, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out_proj((y + self.D * u) * F.silu(z))

    @staticmethod
    def _operator(dt, A, B, C, check_values: bool = True) -> StateSpaceOperator:
        return selective_ssm_operator(dt, A, B, C, check_values=check_values)

    @classmethod
    def _narrowed_operator(cls, dt, A, B, C, examples: int | None, channels: torch.Tensor | None):
        """The operator of the first ``examples`` examples and the ``channels`` asked (None: all)."""
        head = slice(None, examples)
        dt, B, C = dt[head], B[head], C[head]
        if channels is not None:
            dt, A = dt[..., channels], A[channels]
        return cls._operator(dt, A, B, C, check_values=False)

    def operator_and_values(self, x: torch.Tensor, check_values: bool = True) -> MixerTrace:
        u, z, dt, A, B, C = self._streams(x)
        op = self._operator(dt, A, B, C, check_values)
        return MixerTrace(op, channels_first(u), lambda y: self._readout(channels_last(y), u, z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The factored scan (ess_reg.kernels.selective_scan), not the generic operator apply: B, C
        # and the decay's dt x A stay unexpanded.  The operator is built only when a probe asks.
        u, z, dt, A, B, C = self._streams(x)
        if capturing(self):  # deferred: only the examples and channels a probe takes get expanded
            hand_over(self, DeferredOperator(partial(self._narrowed_operator, dt, A, B, C),
                                             (dt.shape[0], A.shape[0]), dt.shape[1]))
        y = selective_scan(dt, A, dt * u, B, C)
        return self._readout(y.to(x.dtype), u, z)

    def state_size(self) -> int:
        return self.d_state

    def keep_state(self, scores: torch.Tensor, size: int) -> torch.Tensor:
        """Keep ``size`` state coordinates (``ess_reg.compression.StateCompressible``). ``B`` and
        ``C`` are shared by every channel, so the coordinates are chosen by their scores summed
        over the channels and kept in all of them: their ``A`` and their rows of ``x_proj``."""
        kept = top_coordinates(scores.sum(0, keepdim=True), size)[0]  # (size,)
        n, r = self.d_state, self.dt_rank
        rows = torch.cat([torch.arange(r, device=kept.device), r + kept, r + n + kept])
        self.x_proj = keep_rows(self.x_proj, rows)
        self.A_log = nn.Parameter(self.A_log.detach()[:, kept])
        self.d_state = size
        return kept.expand(scores.shape[0], size)

    @classmethod
    def state_kwargs(cls, state_size: int, **kwargs) -> dict:
        check_positive("state_size", state_size)
        return {"d_state": state_size}

    @property
    def value_channels(self) -> int:
        return self.d_inner
