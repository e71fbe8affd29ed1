"""Registers the adapters for ``transformers`` modules; imported by the probe the first time it
meets one (so ``import ess_reg`` never imports ``transformers``)."""

from __future__ import annotations

from ..probe import Adapter, register_adapter
from .hf_mamba import mamba_operator


def _register() -> None:
    try:
        from transformers.models.mamba.modeling_mamba import MambaMixer
    except ImportError:  # an older or trimmed transformers: nothing to register
        return
    register_adapter(MambaMixer, Adapter(operator=mamba_operator, state_size=lambda m: m.ssm_state_size))


_register()
