"""A run's ESS probe: one fixed held-out batch, fixed indices and the verdict's thresholds.

The one definition used by training (every evaluation), ``ess-analyze`` and the init search,
so that their numbers are comparable; measuring itself goes through :class:`ess_reg.probe.Probe`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..layer_report import FailureThresholds, LayerReport
from ..indices import EvenIndices
from ..probe import Probe
from ..tasks import Task

__all__ = ["ProbeSettings", "RunProbe", "PROBE_KINDS"]

PROBE_KINDS = ("entropy", "tolerance", "soft_tolerance")


@dataclass
class ProbeSettings:
    """``probe.*`` of the config."""

    examples: int = 4
    num_indices: int = 16  # evenly spaced in 1..L-1, plus the end of the task's context
    kind: str = "entropy"
    thresholds: FailureThresholds = field(default_factory=FailureThresholds)

    def __post_init__(self):
        for name in ("examples", "num_indices"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"probe.{name} must be a positive int, got {value!r}")
        if self.kind not in PROBE_KINDS:
            raise ValueError(f"probe.kind must be one of {PROBE_KINDS}, got {self.kind!r}")


class RunProbe:
    """The probe batch (``settings.examples`` held-out inputs, from the run's seed), the indices
    (``settings.num_indices`` evenly spaced plus the end of the context) and the ESS kind."""

    def __init__(self, task: Task, settings: ProbeSettings, seed: int):
        self.task, self.settings = task, settings
        self.inputs = task.test_set(settings.examples, seed=seed).inputs
        self.indices = EvenIndices(settings.num_indices)

    @property
    def thresholds(self) -> FailureThresholds:
        return self.settings.thresholds

    def index_tensor(self) -> torch.Tensor:
        """The indices for the task's sequence length."""
        return self.indices(self.task.seq_len, self.task.context_end)

    def to(self, device: torch.device | str) -> "RunProbe":
        self.inputs = self.inputs.to(device)
        return self

    def report(self, model: nn.Module) -> dict[str, LayerReport]:
        """Every ESS-capable layer of ``model`` measured on the probe batch (no gradients)."""
        with torch.no_grad():
            return Probe(model, indices=self.indices, kind=self.settings.kind, task=self.task,
                         dtype=torch.float32)(self.inputs)
