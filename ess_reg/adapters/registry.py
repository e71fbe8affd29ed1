"""Adapters: how the probe measures a layer that does not implement the contract itself.

An :class:`Adapter` for a class says how to get its operator (from its input, or from its own
forward) and its TSS; :func:`register_adapter` makes every instance of that class measurable,
looked up along the class's MRO. The adapters ess-reg ships (``torch.nn.MultiheadAttention``,
Hugging Face's) register themselves the first time :func:`adapter_for` meets a module of their
library (:func:`ess_reg.adapters.register_for`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..contract import ESSLayer
from ..state_size import StateSize
from ..operators import Operator
from . import register_for

__all__ = ["Adapter", "NotMeasurable", "register_adapter", "adapter_for"]


class NotMeasurable(Exception):
    """Raised by an adapter's ``from_forward`` when the layer, as it ran, applied no operator the
    adapter can read (a layer named like attention that returns no attention probabilities): the
    probe leaves that layer out, with this message as the reason, and measures the rest."""


@dataclass
class Adapter:
    """How to get the operator and TSS of a module class that does not implement the contract.

    ``operator(module, x)`` builds the operator from the module's input; ``from_forward(module,
    args, kwargs, output)``, for a module whose operator is a by-product of its own forward (the
    attention probabilities a Hugging Face attention layer returns), reads it from a forward
    pass the probe captures, or raises :class:`NotMeasurable` with the reason it cannot. Give at
    least one."""

    operator: Callable[[nn.Module, torch.Tensor], Operator] | None
    state_size: Callable[[nn.Module], StateSize]
    from_forward: Callable[[nn.Module, tuple, dict, object], Operator] | None = None


_ADAPTERS: dict[type, Adapter] = {}


def register_adapter(cls: type, adapter: Adapter) -> None:
    """Make every instance of ``cls`` ESS-capable through ``adapter``."""
    if not isinstance(cls, type):
        raise TypeError(f"cls must be a class, got {cls!r}")
    if not (callable(getattr(adapter, "state_size", None))
            and (callable(getattr(adapter, "operator", None)) or callable(getattr(adapter, "from_forward", None)))):
        raise TypeError(f"adapter must be an Adapter (a callable state_size, and operator or from_forward), "
                        f"got {adapter!r}")
    _ADAPTERS[cls] = adapter


def adapter_for(module: nn.Module) -> Adapter | None:
    """How to measure ``module``: a registered adapter, its own contract, or None."""
    register_for(type(module))  # a library's adapters load when the probe first meets its modules
    for cls in type(module).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls]
    if isinstance(module, ESSLayer) and callable(module.operator) and callable(module.state_size):
        return Adapter(operator=lambda m, x: m.operator(x), state_size=lambda m: m.state_size())
    return None
