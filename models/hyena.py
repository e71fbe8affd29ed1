"""Long convolution with data-controlled gating (Hyena, order 2).

``y = q * (h conv (k * v))`` per channel, so ``T[i, j] = q_i h[i - j] k_j``: a Toeplitz filter
between two diagonal gates.  The filter ``h`` is implicit: a small MLP of positional features
times an exponential decay window (``filter="mlp"``), or a learned explicit filter of length
``max_len`` under the same window (``filter="explicit"``).  The filter's bias (Hyena's ``D``)
is its lag-0 tap.  TSS is ``min(i, L - i)``: a convolution keeps its whole input history.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ess_reg import ToeplitzOperator
from ess_reg.state_size import growing_state_size
from ess_reg.kernels import causal_fft_conv

from .base import Mixer, MixerTrace, ShortConv, channels_first, channels_last, check_positive

FILTERS = ("mlp", "explicit")


class Sin(nn.Module):
    def __init__(self, dim: int, freq: float = 10.0):
        super().__init__()
        self.freq = nn.Parameter(freq * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """The long filter ``h (D, L)`` for any ``L`` (up to ``max_len`` for the explicit one)."""

    def __init__(self, d_model: int, filter: str = "mlp", num_bands: int = 8, hidden: int = 32,
                 max_len: int | None = None, decay_min: float = 0.3, decay_max: float = 1.5):
        super().__init__()
        if filter not in FILTERS:
            raise ValueError(f"unknown filter {filter!r}; choose one of {FILTERS}")
        if filter == "explicit" and max_len is None:
            raise ValueError("filter='explicit' needs max_len (the longest sequence it will see)")
        self.filter, self.num_bands, self.max_len = filter, num_bands, max_len
        if filter == "mlp":
            check_positive("num_bands", num_bands)
            self.mlp = nn.Sequential(nn.Linear(2 * num_bands + 1, hidden), Sin(hidden),
                                     nn.Linear(hidden, hidden), Sin(hidden), nn.Linear(hidden, d_model))
        else:
            check_positive("max_len", max_len)
            self.taps = nn.Parameter(torch.randn(d_model, max_len) * max_len**-0.5)
        # Decay window exp(-rate * t / L * log-scale), one rate per channel, fast to slow.
        self.register_buffer("rates", torch.linspace(math.log(decay_max), math.log(decay_min), d_model).exp() * 10)
        self.bias = nn.Parameter(torch.randn(d_model) * 0.02)

    def forward(self, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        t = torch.linspace(0, 1, length, device=self.rates.device, dtype=dtype)  # (L,)
        if self.filter == "mlp":
            bands = torch.arange(1, self.num_bands + 1, device=t.device, dtype=dtype)
            angle = 2 * math.pi * t[:, None] * bands  # (L, bands)
            features = torch.cat([t[:, None], angle.sin(), angle.cos()], dim=-1)
            h = self.mlp.to(dtype)(features).transpose(0, 1)  # (D, L)
        else:
            if length > self.max_len:
                raise ValueError(f"sequence length {length} exceeds the explicit filter's max_len={self.max_len}")
            h = self.taps[:, :length].to(dtype)
        h = h * torch.exp(-self.rates.to(dtype)[:, None] * t)
        lag0 = torch.zeros(length, device=h.device, dtype=dtype)
        lag0[0] = 1
        return h + self.bias.to(dtype)[:, None] * lag0  # the bias acts at lag 0 only


class Hyena(Mixer):
    def __init__(self, d_model: int, filter: str = "mlp", short_conv: int = 3, max_len: int | None = None,
                 **filter_kwargs):
        super().__init__(d_model)
        check_positive("short_conv", short_conv)
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.short_conv = ShortConv(3 * d_model, short_conv)
        self.filter = HyenaFilter(d_model, filter, max_len=max_len, **filter_kwargs)
        self.out_proj = nn.Linear(d_model, d_model)

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.short_conv(self.in_proj(x)).chunk(3, dim=-1)
        return q.transpose(1, 2), k.transpose(1, 2), v  # q, k: (B, D, L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._gates(x)
        h = self.filter(x.shape[1], x.dtype)
        y = q * causal_fft_conv(k * v.transpose(1, 2), h)
        return self.out_proj(y.transpose(1, 2))

    def operator_and_values(self, x: torch.Tensor, check_values: bool = True) -> MixerTrace:
        q, k, v = self._gates(x)
        h = self.filter(x.shape[1], x.dtype)
        # T[i, j] = q_i h[i - j] k_j, kept as its filter and gates: T is formed only by the exact
        # spectra path, a few channels at a time (never all (B, D, L, L) at once).
        op = ToeplitzOperator(h, q, k, check_values=check_values)
        return MixerTrace(op, channels_first(v), lambda y: self.out_proj(channels_last(y)))

    def state_size(self):
        return growing_state_size
