"""Reference zoo of sequence mixers (installed as ``ess_reg.models``), one file per mixer, each
exposing the causal operator it applies.

Every mixer maps ``(B, L, D) -> (B, L, D)`` and implements the ESS contract of
:mod:`ess_reg.models.base`: ``operator(x)``, ``operator_and_values(x)`` and ``state_size()``.
:data:`MIXERS` names them; :func:`build_mixer` builds one by name, its state set by
``state_size``; :class:`ess_reg.models.lm.LanguageModel` stacks them into a language model.
"""

from __future__ import annotations

from .base import Mixer, MixerTrace
from .deltanet import DeltaNet, GatedDeltaNet
from .gla import GatedLinearAttention
from .hyena import Hyena
from .rnn import GRUMixer, LSTMMixer, MinGRU
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
    "deltanet": DeltaNet,
    "gated_deltanet": GatedDeltaNet,
    "mingru": MinGRU,
    "gru": GRUMixer,
    "lstm": LSTMMixer,
}


def build_mixer(name: str, d_model: int, state_size: int | None = None, **kwargs) -> Mixer:
    """A mixer by registry name, e.g. ``build_mixer("gla", 64, num_heads=2)``.

    ``state_size``: the TSS per value channel, set through the mixer's own knob
    (:meth:`Mixer.state_kwargs`); giving that knob in ``kwargs`` too is an error unless they agree.
    """
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {sorted(MIXERS)}")
    if state_size is not None:
        knob = state_kwargs(name, state_size, **kwargs)
        clash = {k: (kwargs[k], v) for k, v in knob.items() if k in kwargs and kwargs[k] != v}
        if clash:
            raise ValueError(f"state_size={state_size} sets {', '.join(f'{k}={v}' for k, (_, v) in clash.items())} "
                             f"of {name}, but it is also given as "
                             f"{', '.join(f'{k}={a}' for k, (a, _) in clash.items())}")
        kwargs = {**kwargs, **knob}
    return MIXERS[name](d_model, **kwargs)


def state_kwargs(name: str, state_size: int, **kwargs) -> dict:
    """The knob (``{"feature_dim": 8}``, ``{"d_state": 8}``, ``{"window": 9}``...) that gives
    mixer ``name`` a TSS of ``state_size`` per value channel, given its other kwargs."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {sorted(MIXERS)}")
    if isinstance(state_size, bool) or not isinstance(state_size, int) or state_size < 1:
        raise ValueError(f"state_size must be a positive int, got {state_size!r}")
    return MIXERS[name].state_kwargs(state_size, **kwargs)


def init_schemes(name: str) -> list[dict]:
    """Mixer ``name``'s initialization schemes (:attr:`Mixer.init_schemes`), each a dict of
    constructor keywords, the default first: ``[{"a_init": "s4d_real"}, ...]`` for ``s6``."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {sorted(MIXERS)}")
    return [dict(scheme) for scheme in MIXERS[name].init_schemes]


__all__ = ["MIXERS", "Mixer", "MixerTrace", "build_mixer", "state_kwargs", "init_schemes",
           *(cls.__name__ for cls in MIXERS.values())]
