"""A layer's report: its ESS beside its TSS and reachable state, and the measures read off it
(utilization, ESS per item, mean ESS), one definition each for the reports' numbers, the init
search's scores and the penalty's objective.  The verdict built on them is :mod:`ess_reg.verdict`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .ess import LayerESS
from .state_size import reachable_state

__all__ = ["utilization", "FailureThresholds", "LayerReport", "MEASURES", "layer_utilization", "layer_ess_per_item",
           "layer_mean_ess", "model_summary", "mean_over_layers", "layer_keys", "report_metrics", "FULL", "PARTIAL",
           "UNUSED"]

# How much of its reachable state a layer uses, as evidence for the verdict.
FULL, PARTIAL, UNUSED = "full", "partial", "unused"



def utilization(ess_per_index: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
    """Fraction of the reachable state in use: ``sum_i ESS_i / sum_i reach_i`` (differentiable).

    A ratio of sums, not a mean of per-index ratios: near the ends of the sequence the reach is
    1 or 2 and every operator fills it, so a mean of ratios would be inflated by indices that
    say nothing; the sums weight each index by the capacity it offers.
    """
    for name, value in (("ess_per_index", ess_per_index), ("reach", reach)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not ess_per_index.is_floating_point():
        raise ValueError(f"ess_per_index must be a floating-point tensor, got dtype {ess_per_index.dtype}")
    if ess_per_index.shape != reach.shape:
        raise ValueError(f"ess_per_index and reach must have the same shape (one entry per index), got "
                         f"{tuple(ess_per_index.shape)} and {tuple(reach.shape)}")
    reach = reach.to(ess_per_index)
    total = reach.sum()
    if not total > 0:
        raise ValueError("the reachable state is 0 at every chosen index: utilization is undefined there")
    return ess_per_index.sum() / total



@dataclass
class FailureThresholds:
    """The numbers behind the verdict (``ess-train``: ``probe.saturation``, ``probe.collapse``,
    ``probe.solved``).

    * ``solved``: validation accuracy at or above which the model solves its task — then it is
      healthy, whatever its ESS.
    * ``saturation``: utilization (ESS / reachable state) at or above which a layer's state is
      full.
    * ``collapse``: utilization at or below which a layer's state is unused.
    * ``margin``: the verdict says *near saturation* / *near collapse* for a utilization within
      this distance of either threshold, where a run's probe noise could put it on either side.
    * ``still_falling``: the relative fall of the loss over the second half of the run above
      which the run is *still training* (see :func:`loss_still_falling`).
    """

    saturation: float = 0.9
    collapse: float = 0.2
    solved: float = 0.9
    margin: float = 0.05
    still_falling: float = 0.05

    def __post_init__(self):
        for name in ("saturation", "collapse", "solved", "margin", "still_falling"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"threshold {name} must be a number in [0, 1], got {value!r}")
        if not self.collapse < self.saturation:
            raise ValueError(
                f"need 0 <= collapse < saturation <= 1, got collapse={self.collapse}, saturation={self.saturation}"
            )
        if not self.collapse + self.margin < self.saturation - self.margin:
            raise ValueError(f"margin {self.margin} closes the gap between collapse {self.collapse} and saturation "
                             f"{self.saturation}: need collapse + margin < saturation - margin")




def _check_thresholds(thresholds: FailureThresholds | None) -> FailureThresholds:
    if thresholds is None:
        return FailureThresholds()
    if not isinstance(thresholds, FailureThresholds):
        raise TypeError(f"thresholds must be a FailureThresholds or None, got {type(thresholds).__name__}")
    return thresholds



@dataclass
class LayerReport:
    """ESS of one layer beside its TSS and reachable state, with the derived figures.

    ESS figures are per *operator* (a head, or an SSM channel), averaged over operators and the
    probe batch: an operator's ESS counts the independent directions it keeps, so ESS/kv = 1
    means each operator keeps one direction per stored key-value pair.
    """

    name: str
    ess: LayerESS
    tss: torch.Tensor  # (len(indices),) TSS per value channel at each index
    value_channels: int
    seq_len: int
    context_end: int | None = None  # index where the task's context ends (ESS/kv is read there)
    items_to_recall: int | None = None
    io_width: tuple[int, int] = (1, 1)  # (channels in, channels out) of one operator: a Jacobian's (D_in, D_out)

    @property
    def ess_per_index(self) -> torch.Tensor:
        """Mean ESS per operator at each probed index ``(len(indices),)`` (float64; keeps the
        graph when the ESS was measured with gradients)."""
        return self.ess.values.mean(dim=tuple(range(self.ess.values.dim() - 1))).double()

    @property
    def reach(self) -> torch.Tensor:
        """Reachable state per operator at each probed index, ``min(i, L - i, TSS)``."""
        return reachable_state(self.tss.cpu(), self.ess.indices.cpu(), self.seq_len, self.io_width)

    @property
    def ess_avg(self) -> float:
        """Average ESS of one operator (channel or head): mean over batch, channels, indices."""
        return self.ess.average.item()

    @property
    def ess_total(self) -> float:
        return self.ess.total.item()

    @property
    def tss_avg(self) -> float:
        return self.tss.mean().item()

    @property
    def tss_total(self) -> float:
        return self.value_channels * self.tss_avg

    @property
    def utilization(self) -> float:
        """ESS over the reachable state, summed over the probed indices (see :func:`utilization`)."""
        return layer_utilization(self).item()

    def _context_end_position(self) -> int | None:
        if self.context_end is None:
            return None
        hits = (self.ess.indices == self.context_end).nonzero()
        return int(hits[0, 0]) if len(hits) else None

    @property
    def ess_at_context_end(self) -> float | None:
        k = self._context_end_position()
        return None if k is None else self.ess_per_index[k].item()

    @property
    def ess_per_item(self) -> float | None:
        """Per-operator ESS at the end of the context per item to recall (ESS/kv on MQAR)."""
        if self._context_end_position() is None or not self.items_to_recall:
            return None
        return layer_ess_per_item(self).item()

    @property
    def tss_per_item(self) -> float | None:
        """TSS per operator at the end of the context per item (TSS/kv, the paper's baseline)."""
        k = self._context_end_position()
        return None if k is None or not self.items_to_recall else self.tss[k].item() / self.items_to_recall

    def state_use(self, thresholds: FailureThresholds | None = None) -> str:
        """``full``, ``unused`` or ``partial``: this layer's utilization against the thresholds."""
        t = _check_thresholds(thresholds)
        u = self.utilization
        return FULL if u >= t.saturation else UNUSED if u <= t.collapse else PARTIAL

    def metrics(self) -> dict[str, float]:
        """Short names (they must survive the MLflow UI's column width)."""
        out = {"ess": self.ess_avg, "util": self.utilization, "total": self.ess_total, "tss": self.tss_avg}
        if self.ess_per_item is not None:
            out["per_kv"] = self.ess_per_item
            out["tss_kv"] = self.tss_per_item
        return out


# ---- what to read off a layer: the measures, as differentiable tensors -----------------------
# One definition each, used alike by the reports' numbers, the init search's scores and the
# penalty's objective (which keeps their gradients).


def layer_utilization(report: LayerReport) -> torch.Tensor:
    """ESS over the reachable state ``min(i, L - i, TSS)``, a ratio of sums over the indices."""
    try:
        return utilization(report.ess_per_index, report.reach)
    except ValueError as err:
        raise ValueError(f"layer {report.name!r}: {err}") from None


def layer_ess_per_item(report: LayerReport) -> torch.Tensor:
    """Per-operator ESS at the end of the context per item to recall: ESS/kv on MQAR."""
    k = report._context_end_position()
    if k is None or not report.items_to_recall:
        raise ValueError(f"layer {report.name!r}: ESS per item is read at the end of the context: it needs "
                         "context_end among the measured indices and items_to_recall (pass a task)")
    return report.ess_per_index[k] / report.items_to_recall


def layer_mean_ess(report: LayerReport) -> torch.Tensor:
    """ESS per operator, averaged over batch, operators and indices."""
    return report.ess.values.mean()


#: measure name -> function of a :class:`LayerReport` giving a scalar tensor
MEASURES: dict[str, Callable[[LayerReport], torch.Tensor]] = {
    "utilization": layer_utilization,
    "per_item": layer_ess_per_item,
    "ess": layer_mean_ess,
}



def _check_reports(reports: "Mapping[str, LayerReport]") -> "Mapping[str, LayerReport]":
    if not isinstance(reports, Mapping):
        raise TypeError(f"reports must be a mapping of layer names to LayerReports (as measure returns), "
                        f"got {type(reports).__name__}")
    if not reports:
        raise ValueError("reports is empty: give at least one layer report")
    bad = [name for name, r in reports.items() if not isinstance(r, LayerReport)]
    if bad:
        raise TypeError(f"reports must hold LayerReports; the entries {bad} do not")
    return reports


def model_summary(reports: "Mapping[str, LayerReport]") -> dict[str, float]:
    """Model-wide figures, means over layers: ``util`` (ESS / reachable state), ``per_kv``
    (per-operator ESS per item at the end of the context), ``ess`` (ESS per operator) and
    ``total`` (total ESS, summed over layers)."""
    _check_reports(reports)
    out = {"util": mean_over_layers(reports, "utilization"), "ess": mean_over_layers(reports, "ess"),
           "total": sum(r.ess_total for r in reports.values())}
    if all(r.ess_per_item is not None for r in reports.values()):
        out["per_kv"] = mean_over_layers(reports, "per_item")
    return out


def mean_over_layers(reports: "Mapping[str, LayerReport]", measure: str) -> float:
    """The mean over layers of one of :data:`MEASURES`: the model-wide figures and the init
    search's scores."""
    return sum(MEASURES[measure](r).item() for r in reports.values()) / len(reports)


def layer_keys(names) -> dict[str, str]:
    """Short metric names for layers, in model order: ``{"blocks.0.mixer": "L0", ...}``."""
    return {name: f"L{i}" for i, name in enumerate(names)}


def report_metrics(reports: "Mapping[str, LayerReport]") -> dict[str, float]:
    """The figures of one measurement as flat metric names, as every logger takes them:
    model-wide ``ess/*`` (:func:`model_summary`) and per layer ``L<i>/*`` (:meth:`LayerReport.metrics`)."""
    metrics = {f"ess/{k}": v for k, v in model_summary(reports).items()}
    for name, key in layer_keys(reports).items():
        metrics.update({f"{key}/{k}": v for k, v in reports[name].metrics().items()})
    return metrics
