"""LTI diagonal SSM (S4D-Real), zero-order hold: per channel the Toeplitz ``h[i-j]``,
``h[k] = C^T Abar^k Bbar``, ``Abar = exp(dt A)``, ``Bbar = (Abar - 1) / A * B``.

The operator does not depend on the input: it is shared by the batch.  The forward pass is a
causal FFT convolution with the kernel ``h``; the operator is the state-space form of the same
system (TSS ``d_state`` per channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ess_reg import StateSpaceOperator
from ess_reg.kernels import causal_fft_conv

from .base import Mixer, MixerTrace, channels_first, channels_last, check_positive, log_uniform, top_coordinates
from .s6 import A_INITS, init_log_neg_a


class DiagonalSSM(Mixer):
    init_schemes = tuple({"a_init": scheme} for scheme in A_INITS)

    def __init__(self, d_model: int, d_state: int = 16, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 a_init: str = "s4d_real"):
        super().__init__(d_model)
        check_positive("d_state", d_state)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.d_state = d_state
        self.log_dt = nn.Parameter(log_uniform(d_model, dt_min, dt_max).log())
        self.A_log = nn.Parameter(init_log_neg_a(d_model, d_state, a_init))
        self.B = nn.Parameter(torch.ones(d_model, d_state))
        self.C = nn.Parameter(torch.randn(d_model, d_state) * d_state**-0.5)
        self.D = nn.Parameter(torch.ones(d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def _discretized(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``dt * A`` and ``Bbar``, each ``(D, N)``."""
        dt = self.log_dt.to(dtype).exp().unsqueeze(-1)
        A = -torch.exp(self.A_log.to(dtype))
        dtA = dt * A
        return dtA, torch.expm1(dtA) / A * self.B.to(dtype)

    def kernel(self, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``h (D, L)``: the impulse response of every channel."""
        dtA, B_bar = self._discretized(dtype)
        steps = torch.arange(length, device=dtA.device, dtype=dtype)
        return torch.einsum("dn,dln->dl", self.C.to(dtype) * B_bar, torch.exp(dtA.unsqueeze(1) * steps[:, None]))

    def _readout(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(F.gelu(y + self.D * x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.kernel(x.shape[1], x.dtype)
        y = causal_fft_conv(x.transpose(1, 2), h).transpose(1, 2)
        return self._readout(y, x)

    def operator_and_values(self, x: torch.Tensor, check_values: bool = True) -> MixerTrace:
        dtA, B_bar = self._discretized(x.dtype)
        shape = (1, self.d_model, x.shape[1], self.d_state)  # batch 1: the same system for every input
        op = StateSpaceOperator(dtA[None, :, None, :].expand(shape), B_bar[None, :, None, :].expand(shape),
                                self.C.to(x.dtype)[None, :, None, :].expand(shape), check_values=check_values)
        return MixerTrace(op, channels_first(x), lambda y: self._readout(channels_last(y), x))

    def state_size(self) -> int:
        return self.d_state

    def keep_state(self, scores: torch.Tensor, size: int) -> torch.Tensor:
        """Keep the ``size`` best state coordinates of each channel
        (``ess_reg.compression.StateCompressible``): their ``A``, ``B`` and ``C``, the same rule
        as for the input-dependent layers. ``merge_state`` does better for this time-invariant
        system and keeps its diagonal form (balanced truncation would not: its reduced ``A`` is
        dense, and its eigenvalues need not be real)."""
        kept = top_coordinates(scores, size)  # (D, size)
        for name in ("A_log", "B", "C"):
            setattr(self, name, nn.Parameter(getattr(self, name).detach().gather(1, kept)))
        self.d_state = size
        return kept

    def merge_state(self, size: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge each channel's state into ``size`` coordinates
        (``ess_reg.compression.StateMergeable``): its poles chosen and its residues ``C_n Bbar_n``
        refit to the whole kernel over ``length`` steps (``ess_reg.compression.fit_modes``), then
        split evenly between ``B`` and ``C`` (``|B_n| = |C_n|``)."""
        from ess_reg.compression import fit_modes

        with torch.no_grad():
            dtA, B_bar = self._discretized(torch.float64)
            kept, residues, reproduced = fit_modes(dtA, self.C.double() * B_bar, size, length)
            A = -torch.exp(self.A_log.double())
            gain = (torch.expm1(dtA) / A).gather(1, kept)  # Bbar_n = gain_n B_n, gain_n > 0
            magnitude = (residues.abs() / gain).sqrt()
            dtype = self.C.dtype
            self.A_log = nn.Parameter(self.A_log.detach().gather(1, kept))
            self.B = nn.Parameter(magnitude.to(dtype))
            self.C = nn.Parameter((residues.sign() * magnitude).to(dtype))
        self.d_state = size
        return kept, reproduced

    @classmethod
    def state_kwargs(cls, state_size: int, **kwargs) -> dict:
        check_positive("state_size", state_size)
        return {"d_state": state_size}
