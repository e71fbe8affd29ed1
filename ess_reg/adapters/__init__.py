"""Adapters for layers ess-reg does not own, registered when their library is there.

The adapter module of a library is imported the first time the probe meets a module of that
library (``torch.nn.MultiheadAttention``'s with the first torch module, Hugging Face's with the
first ``transformers`` one), so ``import ess_reg`` never imports ``transformers``; such a module
offers ``maybe_register(cls)``, asked once per class the probe meets. The registry itself is
:mod:`ess_reg.adapters.registry`.
"""

from __future__ import annotations

import importlib

__all__ = ["register_for"]

# top-level package of a module's class -> the adapter module for that library
_LAZY = {"torch": "ess_reg.adapters.torch_attention", "transformers": "ess_reg.adapters.hf"}
_seen: set[type] = set()


def register_for(module_class: type) -> None:
    """Let the adapter module of each library in ``module_class``'s MRO register that class, once
    per class (a user's subclass of ``nn.MultiheadAttention`` finds the torch adapter this way)."""
    for cls in module_class.__mro__:
        if cls in _seen:
            continue
        _seen.add(cls)
        target = _LAZY.get(cls.__module__.split(".", 1)[0])
        if target is not None:
            importlib.import_module(target).maybe_register(cls)
