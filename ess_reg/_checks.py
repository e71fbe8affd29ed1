"""Argument checks shared by the public functions: each names the argument and what it allows.

Every check raises ``ValueError`` (as the checks of this package always have, whatever was wrong
with the value: its type or its range), with the argument's name first in the message; only
``check_floating`` raises ``TypeError`` for a value that is no tensor at all, as the operators
always have.
"""

from __future__ import annotations

import math
import numbers

import torch

# What torch.Generator.manual_seed accepts at the top (it wraps negative seeds, which we refuse).
MAX_SEED = 2**64 - 1


def check_int(name: str, value, minimum: int | None = None) -> int:
    """An int (not a bool), ``>= minimum`` when one is given."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        allowed = "an int" if minimum is None else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_limit(name: str, value: int | None) -> int | None:
    """A positive int, or None (a cost knob without limit, or an optional count or index)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return value


def check_number(name: str, value, *, minimum: float | None = None, strict: bool = False,
                 finite: bool = True) -> float:
    """A real number (not a bool, not NaN), finite unless ``finite=False``, and ``>= minimum``
    (``> minimum`` with ``strict``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (math.isfinite(value) or not finite)
    ok = ok and (minimum is None or (value > minimum if strict else value >= minimum))
    if not ok:
        if minimum == 0 and strict:
            allowed = "a positive finite number" if finite else "a positive number"
        else:
            bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
            allowed = f"{'a finite' if finite else 'a'} number{bound}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_seed(name: str, value, maximum: int = MAX_SEED) -> int:
    """A random seed: an int in ``0..maximum`` (a float or bool seed is refused, not truncated)."""
    check_int(name, value, 0)
    if value > maximum:
        raise ValueError(f"{name} must be an int in 0..{maximum}, got {value!r}")
    return value


def check_floating(name: str, x) -> torch.Tensor:
    """A real floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    return x
