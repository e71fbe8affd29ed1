"""When a run has converged: a stopping rule on the validation-accuracy curve.

A fixed budget mixes "better" with "faster": a run that would have got there 500 steps later
counts as worse. ``trainer.stop`` ends a run when its accuracy reached a target (solved) or has
not gained ``min_delta`` over its best for ``patience`` steps (a plateau), with ``max_steps`` as
the cap. The same rule reads a logged curve afterwards (:func:`stop_point`), so ``ess-report``
can say where a fixed-budget run would have stopped. A plateau can precede a late take-off
(MQAR runs sit at chance for hundreds of steps, then learn): patience is in steps, not
evaluations, and should be longer than the plateaus of the regime (docs/runs.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["StopRule", "stop_point"]


@dataclass(frozen=True)
class StopRule:
    target: float | None = None   # stop once valid accuracy >= target
    patience: int | None = None   # stop once the best accuracy has not risen by min_delta for this many steps
    min_delta: float = 0.01

    def __post_init__(self):
        t = self.target
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1):
            raise ValueError(f"trainer.stop.target must be an accuracy in (0, 1] or null, got {t!r}")
        p = self.patience
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise ValueError(f"trainer.stop.patience must be a positive number of steps or null, got {p!r}")
        d = self.min_delta
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
            raise ValueError(f"trainer.stop.min_delta must be a number >= 0, got {d!r}")

    @property
    def active(self) -> bool:
        return self.target is not None or self.patience is not None

    def reason(self, curve: Sequence[tuple[int, float]]) -> str | None:
        """Why to stop after the last point of ``curve`` ((step, accuracy), in step order), or None."""
        if not curve:
            return None
        step, accuracy = curve[-1]
        if self.target is not None and accuracy >= self.target:
            return f"accuracy {accuracy:.3f} reached the target {self.target:g}"
        if self.patience is not None:
            # the step at which the best-so-far last rose by min_delta (the first point counts as a rise)
            best, since = curve[0][1], curve[0][0]
            for s, a in curve[1:]:
                if a >= best + self.min_delta:
                    best, since = a, s
            if step - since >= self.patience:
                return f"no gain of {self.min_delta:g} in accuracy for {step - since} steps (best {best:.3f})"
        return None


def stop_point(curve: Sequence[tuple[int, float]], rule: StopRule) -> tuple[int, str] | None:
    """The first evaluation at which ``rule`` would stop a run with this logged curve, and why;
    None when it never would (the run was cut by its budget)."""
    points = sorted(curve)
    for i in range(1, len(points) + 1):
        reason = rule.reason(points[:i])
        if reason:
            return points[i - 1][0], reason
    return None
