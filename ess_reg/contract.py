"""The ESS contract: what a layer provides to be measured, and how it hands over an operator.

A layer is measurable when it is an :class:`ESSLayer`:

* ``operator(x)``: the causal operator the layer applies to its input ``x`` (``(B, L, D)``), an
  ``ess_reg`` operator of batch shape ``(B, C)``: C operators per example (heads, SSM
  channels), each serving ``operator.multiplicity`` value channels;
* ``state_size()``: its theoretical state size (TSS) per value channel, a number, or a function
  of ``(indices, L)`` for a state that grows with the sequence (attention).

A module you do not own gets the same two through an adapter
(:func:`ess_reg.probe.register_adapter`).

A layer that builds its operator in its own forward pass anyway hands it over with
:func:`hand_over`, so a probe measuring that forward does not build it a second time::

    def forward(self, x):
        op = self.operator(x)
        hand_over(self, op)          # a no-op unless a probe is capturing this layer
        return op.apply(self.values(x))

What is handed over is an operator, or a :class:`~ess_reg.operators.DeferredOperator` when the
full one would be large and a probe takes only some examples and channels; the probe narrows
either the same way (``batch_head``, ``index_batch``). Nothing is set on the layer: the probe
listens for the duration of its capture only.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .state_size import StateSize
from .operators import DeferredOperator, Operator

__all__ = ["ESSLayer", "hand_over", "capturing", "listen"]


@runtime_checkable
class ESSLayer(Protocol):
    """What a layer provides to be measured (see the module's text)."""

    def operator(self, x: torch.Tensor) -> Operator: ...

    def state_size(self) -> StateSize: ...


# layer -> the callbacks of the captures listening to it (a capture inside another one adds its own)
_LISTENERS: weakref.WeakKeyDictionary[nn.Module, list[Callable]] = weakref.WeakKeyDictionary()


def hand_over(layer: nn.Module, operator: Operator | DeferredOperator) -> None:
    """Called by ``layer`` in its forward pass with the operator it applied: every probe
    capturing ``layer`` receives it; without one, nothing happens."""
    for callback in _LISTENERS.get(layer, ()):
        callback(operator)


def capturing(layer: nn.Module) -> bool:
    """Whether a probe listens to ``layer`` now (a layer may skip building what nobody takes)."""
    return bool(_LISTENERS.get(layer))


class listen:
    """Context manager: while open, ``callback(operator)`` receives what ``layer`` hands over."""

    def __init__(self, layer: nn.Module, callback: Callable[[Operator | DeferredOperator], None]):
        self.layer, self.callback = layer, callback

    def __enter__(self) -> listen:
        _LISTENERS.setdefault(self.layer, []).append(self.callback)
        return self

    def __exit__(self, *exc) -> None:
        callbacks = _LISTENERS.get(self.layer, [])
        if self.callback in callbacks:
            callbacks.remove(self.callback)
        if not callbacks:
            _LISTENERS.pop(self.layer, None)
