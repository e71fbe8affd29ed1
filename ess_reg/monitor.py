"""ESS while you train, in your own loop: measure a model on a fixed probe batch every ``every``
steps and hand the figures to any logger.

    monitor = ESSMonitor(model, probe_batch, every=100, log=mlflow.log_metrics)
    for step in range(steps):
        ...                                   # your training step
        monitor(step)                         # measures at steps 0, 100, 200, ...
    monitor.verdict.mode                      # healthy / saturation / collapse / ...

The figures are flat metric names (``ess/util``, ``ess/per_kv``, ``L0/util``...: the ones
``ess-train`` logs), so ``mlflow.log_metrics``, a TensorBoard ``SummaryWriter``'s scalars or any
function ``log(metrics, step)`` take them as they are. This is the one core the framework
integrations share; it needs torch alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ._checks import check_int
from .indices import EvenIndices
from .layer_report import FailureThresholds, LayerReport, report_metrics
from .probe import Probe, check_batch
from .verdict import Verdict, diagnose

__all__ = ["ESSMonitor"]


class ESSMonitor:
    """ESS of ``model`` on ``inputs`` (a fixed probe batch), every ``every`` steps.

    Args:
        every: measure at the steps that are multiples of it (``monitor(step)``); ``measure()``
            measures whenever called.
        log: ``log(metrics, step)`` receives each measurement's flat metrics (prefixed with
            ``prefix``), e.g. ``mlflow.log_metrics``; None: kept in ``last`` only.
        indices: an index rule or its short form (default 16 evenly spaced, plus the end of the
            context when ``task`` says where it is).
        kind, layers, task, ess_options, batch_limit: as for :class:`ess_reg.Probe`.
        thresholds: the verdict's (:class:`ess_reg.FailureThresholds`).

    The model is measured in eval mode without gradients and put back as it was.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, *, every: int = 100,
                 log: Callable[[dict, int], object] | None = None, prefix: str = "",
                 indices=None, kind: str = "entropy", layers: Sequence[str] | None = None, task=None,
                 ess_options: Mapping | None = None, batch_limit: int | None = None,
                 thresholds: FailureThresholds | None = None):
        check_batch(inputs)
        check_int("every", every, 1)
        if log is not None and not callable(log):
            raise TypeError(f"log must be a function (metrics, step) or None, got {type(log).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {type(prefix).__name__}")
        self.probe = Probe(model, layers=layers, indices=EvenIndices(16) if indices is None else indices, kind=kind,
                           ess_options=ess_options, batch_limit=batch_limit, task=task)
        self.model, self.inputs, self.every, self.log, self.prefix = model, inputs, every, log, prefix
        self.thresholds = thresholds
        self.reports: dict[str, LayerReport] = {}
        self.verdict: Verdict | None = None
        self.last: dict[str, float] = {}

    def __call__(self, step: int, accuracy: float | None = None) -> dict[str, float] | None:
        """Measure when ``step`` is a multiple of ``every``; returns the metrics, else None."""
        check_int("step", step, 0)
        return self.measure(step, accuracy) if step % self.every == 0 else None

    def measure(self, step: int | None = None, accuracy: float | None = None) -> dict[str, float]:
        """Measure now: the flat metrics (also logged, and kept in ``last``); the per-layer
        reports in ``reports`` and the verdict (given the accuracy, when known) in ``verdict``."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.reports = self.probe(self.inputs.to(_device_of(self.model, self.inputs)))
        finally:
            self.model.train(was_training)
        self.verdict = diagnose(self.reports, accuracy, self.thresholds)
        self.last = {f"{self.prefix}{k}": v for k, v in report_metrics(self.reports).items()}
        if self.log is not None:
            self.log(self.last, step)
        return self.last


def _device_of(model: nn.Module, fallback: torch.Tensor) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else fallback.device
