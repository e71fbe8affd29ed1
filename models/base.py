"""What every mixer of the zoo shares: the ESS contract and a few small layers.

Every mixer is an ``ess_reg.contract.ESSLayer`` (``ess_reg`` never imports this package;
anyone's layer can implement the contract):

* ``forward(x)``: ``(B, L, D) -> (B, L, D)``; it hands the operator it applied to a capturing
  probe (``ess_reg.contract.hand_over``).
* ``operator(x)``: the causal operator the mixer applied to ``x``, an ``ess_reg`` operator of
  batch shape ``(B, C)`` (C = heads or channels).
* ``state_size()``: the theoretical state size (TSS) per value channel: a number, or a function
  of ``(indices, L)`` for a growing state.

The zoo also offers ``operator_and_values(x)`` -> :class:`MixerTrace`: the operator, the value
stream ``(B, C, L, K)`` it acts on, and ``readout`` (gates, norms, output projection) so that
``forward(x) == readout(operator.materialize() @ values)`` can be checked exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from ess_reg import DeltaRuleOperator, DenseOperator, StateSpaceOperator
from ess_reg.contract import hand_over
from ess_reg.state_size import StateSize


class MixerTrace(NamedTuple):
    operator: DenseOperator | StateSpaceOperator | DeltaRuleOperator
    values: torch.Tensor  # (B, C, L, K): what the operator is applied to
    readout: Callable[[torch.Tensor], torch.Tensor]  # (B, C, L, K) -> (B, L, D)


class Mixer(nn.Module):
    """Base class: subclasses implement ``operator_and_values``; state-space ones get
    ``forward`` for free (the operator applied by its chunked scan)."""

    #: how ``forward`` applies a state-space operator (see ``ess_reg.kernels.scan``), and its chunk
    apply_method: str = "factored"
    chunk_size: int = 64
    #: the mixer's initialization schemes, each a dict of constructor keywords (the first is the
    #: default): what an init search chooses among (``init=ess_search``, ``init.schemes: auto``)
    init_schemes: tuple[dict, ...] = ({},)

    def __init__(self, d_model: int):
        super().__init__()
        check_positive("d_model", d_model)
        self.d_model = d_model

    def operator_and_values(self, x: torch.Tensor, check_values: bool = True) -> MixerTrace:
        raise NotImplementedError

    def operator(self, x: torch.Tensor) -> DenseOperator | StateSpaceOperator:
        return self.operator_and_values(x).operator

    def state_size(self) -> StateSize:
        raise NotImplementedError

    @classmethod
    def state_kwargs(cls, state_size: int, **kwargs) -> dict:
        """The constructor arguments that give this mixer a TSS of ``state_size`` per value
        channel, given its other ``kwargs``: one knob for state size across the zoo (each mixer
        names its own: ``feature_dim``, ``d_state``, ``window``). Mixers whose state grows with
        the sequence have none."""
        raise ValueError(f"{cls.__name__}'s state grows with the sequence (TSS min(i, L - i)): "
                         "it has no state-size knob; leave state_size unset")

    @property
    def value_channels(self) -> int:
        """Value channels the layer runs, each with ``state_size()``: the TSS total's weight."""
        return self.d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trace = self.operator_and_values(x, check_values=False)
        hand_over(self, trace.operator)  # to a probe capturing this forward, if one is
        return trace.readout(trace.operator.apply(trace.values, chunk_size=self.chunk_size, method=self.apply_method))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same output by the plain step-by-step recurrence (tests only: a loop over L)."""
        trace = self.operator_and_values(x, check_values=False)
        return trace.readout(trace.operator.apply_reference(trace.values))


def check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def head_dim(d_model: int, num_heads: int) -> int:
    check_positive("num_heads", num_heads)
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    return d_model // num_heads


def top_coordinates(scores: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` highest-scoring state coordinates of each row of ``scores`` ``(C, N)``, in
    their original order: ``(C, size)``."""
    return scores.topk(size, dim=-1).indices.sort(dim=-1).values


def keep_rows(layer: nn.Linear, rows: torch.Tensor, scale: float = 1.0) -> nn.Linear:
    """A new ``nn.Linear`` with only ``rows`` of ``layer``'s outputs (weights times ``scale``)."""
    out = nn.Linear(layer.in_features, len(rows), bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(layer.weight[rows] * scale)
        if layer.bias is not None:
            out.bias.copy_(layer.bias[rows] * scale)
    return out


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, L, H * d) -> (B, H, L, d)``."""
    b, length, width = x.shape
    return x.view(b, length, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, d) -> (B, L, H * d)``."""
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """``(B, L, D) -> (B, D, L, 1)``: one scalar value stream per channel."""
    return x.transpose(1, 2).unsqueeze(-1)


def channels_last(y: torch.Tensor) -> torch.Tensor:
    """``(B, D, L, 1) -> (B, L, D)``."""
    return y.squeeze(-1).transpose(1, 2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class ShortConv(nn.Module):
    """Depthwise causal convolution over the sequence, ``(B, L, D) -> (B, L, D)``."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        check_positive("kernel_size", kernel_size)
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, padding=kernel_size - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        return self.conv(x.transpose(1, 2))[..., :length].transpose(1, 2)


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def log_uniform(shape, low: float, high: float, generator=None) -> torch.Tensor:
    u = torch.rand(shape, generator=generator)
    return torch.exp(u * (math.log(high) - math.log(low)) + math.log(low))
