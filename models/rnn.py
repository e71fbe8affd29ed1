"""Recurrent mixers: a GRU and an LSTM, measured through their Jacobian, and a minGRU, whose
operator is exact.

A GRU or an LSTM has no linear operator: its ESS is that of its input-output Jacobian at the
input, a multi-input multi-output operator (:mod:`ess_reg.jacobian`), and its TSS is the size of
its recurrent state, ``hidden`` numbers for a GRU and ``2 hidden`` (``h`` and ``c``) for an LSTM:
everything the past passes to the future goes through them. Measuring costs a Jacobian
(``L d_model`` backward passes per example): fine for probes of short sequences, not for a
per-step penalty.

minGRU (Feng et al., "Were RNNs all we needed?") drops the hidden state from the gates:
``z_t = sigmoid(W_z x_t)``, ``h_t = (1 - z_t) h_{t-1} + z_t (W_h x_t)``, a diagonal recurrence of
state 1 per channel whose decay is chosen by the input; its operator (applied to ``W_h x``) is a
:class:`ess_reg.StateSpaceOperator`, exact and cheap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ess_reg import StateSpaceOperator
from ess_reg.jacobian import jacobian_operator

from .base import Mixer, MixerTrace, channels_first, channels_last, check_positive


class _JacobianMixer(Mixer):
    """A nonlinear recurrence: its operator is its Jacobian at the input (batch shape ``(B, 1)``)."""

    rnn: nn.RNNBase

    def __init__(self, d_model: int, hidden: int):
        super().__init__(d_model)
        check_positive("hidden", hidden)
        self.hidden = hidden
        self.out = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x)[0])

    def operator(self, x: torch.Tensor):
        return jacobian_operator(self, x)

    def operator_and_values(self, x: torch.Tensor, check_values: bool = True) -> MixerTrace:
        raise NotImplementedError(f"{type(self).__name__} is nonlinear: it has no operator acting on a value stream; "
                                  "its operator(x) is its Jacobian at x")

    @property
    def value_channels(self) -> int:
        return 1  # one multi-channel operator per example


class GRUMixer(_JacobianMixer):
    def __init__(self, d_model: int, hidden: int = 16):
        super().__init__(d_model, hidden)
        self.rnn = nn.GRU(d_model, hidden, batch_first=True)

    def state_size(self) -> int:
        return self.hidden

    @classmethod
    def state_kwargs(cls, state_size: int, **kwargs) -> dict:
        check_positive("state_size", state_size)
        return {"hidden": state_size}


class LSTMMixer(_JacobianMixer):
    def __init__(self, d_model: int, hidden: int = 8):
        super().__init__(d_model, hidden)
        self.rnn = nn.LSTM(d_model, hidden, batch_first=True)

    def state_size(self) -> int:
        return 2 * self.hidden  # h and c

    @classmethod
    def state_kwargs(cls, state_size: int, **kwargs) -> dict:
        check_positive("state_size", state_size)
        if state_size % 2:
            raise ValueError(f"an LSTM's state is h and c, 2 x hidden: state_size must be even, got {state_size}")
        return {"hidden": state_size // 2}


class MinGRU(Mixer):
    def __init__(self, d_model: int, expand: int = 2):
        super().__init__(d_model)
        check_positive("expand", expand)
        self.d_inner = expand * d_model
        self.gate = nn.Linear(d_model, self.d_inner)
        self.candidate = nn.Linear(d_model, self.d_inner)
        self.out = nn.Linear(self.d_inner, d_model)

    def operator_and_values(self, x: torch.Tensor, check_values: bool = True) -> MixerTrace:
        logits = channels_first(self.gate(x))  # (B, E, L, 1)
        # decay 1 - z = sigmoid(-logits), input z = sigmoid(logits), readout 1: state 1 per channel
        op = StateSpaceOperator(F.logsigmoid(-logits), torch.sigmoid(logits), torch.ones_like(logits),
                                check_values=check_values)
        return MixerTrace(op, channels_first(self.candidate(x)), lambda y: self.out(channels_last(y)))

    def state_size(self) -> int:
        return 1

    @classmethod
    def state_kwargs(cls, state_size: int, **kwargs) -> dict:
        raise ValueError("MinGRU's state is 1 per channel: widen it with expand, not state_size")

    @property
    def value_channels(self) -> int:
        return self.d_inner
