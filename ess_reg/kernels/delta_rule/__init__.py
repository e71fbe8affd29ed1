"""The delta rule (DeltaNet, Gated DeltaNet): its step (``delta_rule_transition``), the chunked
form (``chunked.py``) and the sequential reference it is tested against (``naive.py``)."""

from .chunked import chunked_delta_rule
from .naive import delta_rule_transition, sequential_delta_rule

__all__ = ["delta_rule_transition", "sequential_delta_rule", "chunked_delta_rule"]
