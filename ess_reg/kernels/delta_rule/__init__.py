"""The delta rule (DeltaNet, Gated DeltaNet): its step (``delta_rule_transition``) and the
sequential reference (``naive.py``)."""

from .naive import delta_rule_transition, sequential_delta_rule

__all__ = ["delta_rule_transition", "sequential_delta_rule"]
