"""Adapters for layers ess-reg does not own, registered when their library is there.

``torch.nn.MultiheadAttention`` is registered when :mod:`ess_reg.probe` loads (torch is always
there). Adapters for other libraries are imported the first time the probe meets a module of
that library, so ``import ess_reg`` never imports them.
"""

from __future__ import annotations

import importlib

__all__ = ["register_for"]

# top-level package of a module's class -> the adapter module that registers its classes
_LAZY = {"transformers": "ess_reg.adapters.hf"}
_loaded: set[str] = set()


def register_for(module_class: type) -> None:
    """Import the adapter module for ``module_class``'s library once, if there is one."""
    package = module_class.__module__.split(".", 1)[0]
    target = _LAZY.get(package)
    if target is not None and target not in _loaded:
        _loaded.add(target)
        importlib.import_module(target)
