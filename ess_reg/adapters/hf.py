"""Adapters for ``transformers`` modules; imported by the probe the first time it meets one (so
``import ess_reg`` never imports ``transformers``), then asked about each class it meets.

- ``MambaMixer`` and ``Mamba2Mixer``: their selective SSMs (:mod:`ess_reg.adapters.hf_mamba`).
- Attention layers (a class named ``...Attention`` whose forward returns ``(output, weights)``,
  as Llama, Qwen, Mistral, GPT-2 and most decoders do): the per-head attention probabilities it
  returns when the model runs with ``attn_implementation="eager"``, as dense operators of batch
  shape ``(B, heads)``, each serving ``head_dim`` value channels.
"""

from __future__ import annotations

import torch

from ..diagnosis import growing_state_size
from ..operators import DenseOperator
from .registry import Adapter, register_adapter
from .hf_mamba import mamba2_operator, mamba_operator

__all__ = ["maybe_register", "attention_from_forward"]


def attention_from_forward(module, args, kwargs, output) -> DenseOperator:
    """The attention probabilities an attention layer returned, ``(B, H, L, L)``."""
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if not (torch.is_tensor(weights) and weights.dim() == 4):
        implementation = getattr(getattr(module, "config", None), "_attn_implementation", "?")
        raise RuntimeError(f"{type(module).__name__} returned no attention probabilities (attention implementation "
                           f"{implementation!r}): load or build the model with attn_implementation='eager' to "
                           "measure it")
    head_dim = getattr(module, "head_dim", None) or output[0].shape[-1] // weights.shape[1]
    return DenseOperator(weights, multiplicity=int(head_dim))


def _is_attention(cls: type) -> bool:
    return cls.__name__.endswith("Attention") and ".models." in cls.__module__


def maybe_register(cls: type) -> None:
    if cls.__name__ == "MambaMixer":
        register_adapter(cls, Adapter(operator=mamba_operator, state_size=lambda m: m.ssm_state_size))
    elif cls.__name__ == "Mamba2Mixer":
        register_adapter(cls, Adapter(operator=mamba2_operator, state_size=lambda m: m.ssm_state_size))
    elif _is_attention(cls):
        register_adapter(cls, Adapter(operator=None, state_size=lambda m: growing_state_size,
                                      from_forward=attention_from_forward))
