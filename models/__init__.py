"""Reference zoo of sequence mixers, each exposing the causal operator it applies.

Every mixer maps ``(B, L, D) -> (B, L, D)`` and implements the ESS contract of
:mod:`models.base`: ``operator(x)``, ``operator_and_values(x)`` and ``state_size()``.
"""

from __future__ import annotations

from .base import Mixer, MixerTrace
from .gla import GatedLinearAttention
from .hyena import Hyena
from .la import LinearAttention
from .s4d import DiagonalSSM
from .s6 import SelectiveSSM
from .sa import SoftmaxAttention
from .swa import SlidingWindowAttention
from .wla import WeightedLinearAttention

MIXERS: dict[str, type[Mixer]] = {
    "sa": SoftmaxAttention,
    "swa": SlidingWindowAttention,
    "la": LinearAttention,
    "wla": WeightedLinearAttention,
    "gla": GatedLinearAttention,
    "s6": SelectiveSSM,
    "s4d": DiagonalSSM,
    "hyena": Hyena,
}


def build_mixer(name: str, d_model: int, **kwargs) -> Mixer:
    """A mixer by registry name, e.g. ``build_mixer("gla", 64, num_heads=2)``."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {sorted(MIXERS)}")
    return MIXERS[name](d_model, **kwargs)


__all__ = ["MIXERS", "Mixer", "MixerTrace", "build_mixer", *(cls.__name__ for cls in MIXERS.values())]
