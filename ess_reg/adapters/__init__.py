"""Adapters for layers ess-reg does not own, registered when their library is there.

``torch.nn.MultiheadAttention`` is registered when :mod:`ess_reg.probe` loads (torch is always
there). Adapters for other libraries are imported the first time the probe meets a module of
that library, so ``import ess_reg`` never imports them; such a module offers
``maybe_register(cls)``, asked once per class the probe meets.
"""

from __future__ import annotations

import importlib

__all__ = ["register_for"]

# top-level package of a module's class -> the adapter module for that library
_LAZY = {"transformers": "ess_reg.adapters.hf"}
_seen: set[type] = set()


def register_for(module_class: type) -> None:
    """Let the adapter module of ``module_class``'s library register it, once per class."""
    if module_class in _seen:
        return
    _seen.add(module_class)
    target = _LAZY.get(module_class.__module__.split(".", 1)[0])
    if target is not None:
        importlib.import_module(target).maybe_register(module_class)
