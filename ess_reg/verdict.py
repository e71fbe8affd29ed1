"""The model's verdict from its layers' reports: healthy, state saturation, state collapse,
near either, inconclusive or still training (:func:`diagnose`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .layer_report import FailureThresholds, LayerReport, _check_reports, _check_thresholds

__all__ = ["Verdict", "diagnose", "loss_still_falling", "SATURATION", "COLLAPSE", "HEALTHY", "INCONCLUSIVE",
           "NEAR_SATURATION", "NEAR_COLLAPSE", "STILL_TRAINING", "VERDICTS"]

SATURATION = "saturation"
COLLAPSE = "collapse"
HEALTHY = "healthy"
INCONCLUSIVE = "inconclusive"
NEAR_SATURATION = "near saturation"   # within the margin of the saturation threshold: neither side is sure
NEAR_COLLAPSE = "near collapse"
STILL_TRAINING = "still training"     # the loss still falls at the end of the budget: too early to judge
VERDICTS = (HEALTHY, SATURATION, NEAR_SATURATION, COLLAPSE, NEAR_COLLAPSE, INCONCLUSIVE, STILL_TRAINING)


@dataclass
class Verdict:
    """The model's diagnosis: one mode, the rule that fired with its numbers, and the evidence."""

    mode: str
    reason: str
    layers: dict[str, str]  # layer name -> full / partial / unused

    def as_dict(self) -> dict:
        return {"mode": self.mode, "reason": self.reason, "layers": dict(self.layers)}



def loss_still_falling(curve: "Sequence[tuple[int, float]]", tolerance: float = 0.05) -> str | None:
    """Whether a run is still learning at the end of its budget, judged on its loss ``curve``
    (``(step, loss)``; ess-train passes the training loss at each log step, every batch a fresh
    sample of the task): a least-squares line through the points of the second half of the run
    (at least 3 of them) that falls by more than ``tolerance`` of its starting value across that
    half. Returns the reason, or None (flat, rising, or too few points to tell). A line, not the
    two end points, so that one noisy batch decides nothing."""
    points = sorted((int(s), float(v)) for s, v in curve if math.isfinite(float(v)))
    if len(points) < 3:
        return None
    last = points[-1][0]
    window = [(s, v) for s, v in points if s >= last / 2]
    if len(window) < 3:
        return None
    steps = [s for s, _ in window]
    mean_s = sum(steps) / len(steps)
    mean_v = sum(v for _, v in window) / len(window)
    spread = sum((s - mean_s) ** 2 for s in steps)
    if spread == 0:
        return None
    slope = sum((s - mean_s) * (v - mean_v) for s, v in window) / spread
    start = mean_v + slope * (steps[0] - mean_s)
    fall = -slope * (steps[-1] - steps[0])
    if start <= 0 or fall <= tolerance * start:
        return None
    return f"loss still falling: {fall / start:.0%} over steps {steps[0]}-{steps[-1]} (> {tolerance:.0%})"


def diagnose(reports: "Mapping[str, LayerReport]", accuracy: float | None = None,
             thresholds: FailureThresholds | None = None, *,
             loss_curve: "Sequence[tuple[int, float]] | None" = None) -> Verdict:
    """The model's verdict from its layers' utilization and, when known, its task accuracy and
    validation-loss curve.

    In order, with ``t`` the thresholds and ``u`` the highest utilization of any layer:

    1. accuracy >= ``t.solved``: **healthy** — a model that solves its task is never called
       collapsed or saturated, whatever its ESS.
    2. the loss still falls at the end (:func:`loss_still_falling`, given ``loss_curve``):
       **still training** — too early to blame the state.
    3. ``u >= t.saturation + t.margin``: **saturation** — that state is full, so capacity is the
       limit; within ``t.margin`` of the threshold: **near saturation**.
    4. ``u <= t.collapse - t.margin``: **collapse** — the state is there and unused; within
       ``t.margin`` of the threshold: **near collapse**.
    5. otherwise: with an accuracy below ``t.solved``, **inconclusive** (the model fails, but its
       ESS points at neither failure of memory); without an accuracy, **healthy**.

    Utilizations are printed with three digits, so that a reason never reads as its own
    contradiction (0.899 is not "0.90 >= 0.9").
    """
    t = _check_thresholds(thresholds)
    _check_reports(reports)
    if accuracy is not None and not (isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool)
                                     and 0 <= accuracy <= 1):
        raise ValueError(f"accuracy must be a number in [0, 1] or None, got {accuracy!r}")
    use = {name: r.state_use(t) for name, r in reports.items()}
    util = {name: r.utilization for name, r in reports.items()}
    fullest = max(util, key=util.get)
    u = util[fullest]
    where = f"highest ESS/reach {u:.3f} ({fullest})"
    task = ("no task accuracy given" if accuracy is None
            else f"accuracy {accuracy:.3f} {'>=' if accuracy >= t.solved else '<'} solved {t.solved:g}")
    if accuracy is not None and accuracy >= t.solved:
        return Verdict(HEALTHY, f"solves the task ({task}); {where}", use)
    if loss_curve is not None:
        falling = loss_still_falling(loss_curve, t.still_falling)
        if falling:
            return Verdict(STILL_TRAINING, f"{task}; {falling}: too early to judge its memory ({where})", use)
    sat_lo, sat_hi = t.saturation - t.margin, t.saturation + t.margin
    col_lo, col_hi = t.collapse - t.margin, t.collapse + t.margin
    if u >= sat_hi:
        return Verdict(SATURATION, f"{task}; {fullest} uses ESS/reach {u:.3f} >= saturation {t.saturation:g} "
                       f"+ margin {t.margin:g} of its state: capacity is the limit", use)
    if u > sat_lo:
        return Verdict(NEAR_SATURATION, f"{task}; {where} is within {t.margin:g} of saturation {t.saturation:g} "
                       f"({sat_lo:.3g}-{sat_hi:.3g}): the state may be full", use)
    if u <= col_lo:
        return Verdict(COLLAPSE, f"{task}; every layer's ESS/reach <= collapse {t.collapse:g} - margin {t.margin:g} "
                       f"({where}): the state is there and unused", use)
    if u < col_hi:
        return Verdict(NEAR_COLLAPSE, f"{task}; {where} is within {t.margin:g} of collapse {t.collapse:g} "
                       f"({col_lo:.3g}-{col_hi:.3g}): the state may be unused", use)
    if accuracy is None:
        return Verdict(HEALTHY, f"{task}; {where} is between collapse {t.collapse:g} and saturation "
                       f"{t.saturation:g}", use)
    return Verdict(INCONCLUSIVE, f"{task}; {where} is between collapse {t.collapse:g} and saturation "
                   f"{t.saturation:g}: ESS points at neither failure of memory", use)
