"""Two questions a study asks of its groups of seeds, besides correlations:

- does a treatment (a penalty, an init search, a teacher) move the target against its baseline
  run under the same other settings? (:func:`compare_to_baseline`: difference of means with a
  bootstrap interval that resamples the seeds of each side);
- when in training does a run's state collapse? (:func:`collapse_steps`: the evaluations at which
  its ESS/reach sat at or below the collapse threshold).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Comparison", "compare_to_baseline", "collapse_steps", "Collapse", "collapse_summary"]


@dataclass
class Comparison:
    label: str            # the treated group
    baseline: str         # the group it is compared with
    n: int
    n_baseline: int
    mean: float
    baseline_mean: float
    interval: tuple[float, float]  # of mean - baseline_mean, 95%

    @property
    def difference(self) -> float:
        return self.mean - self.baseline_mean

    @property
    def verdict(self) -> str:
        lo, hi = self.interval
        if math.isnan(lo):
            return "too few seeds"
        return "higher" if lo > 0 else "lower" if hi < 0 else "no clear difference"


def _difference_interval(a: list[float], b: list[float], resamples: int, seed: int,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of mean(a) - mean(b), each side's seeds resampled on their own."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    g = torch.Generator().manual_seed(seed)
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    ia = torch.randint(len(a), (resamples, len(a)), generator=g)
    ib = torch.randint(len(b), (resamples, len(b)), generator=g)
    diffs = ta[ia].mean(1) - tb[ib].mean(1)
    tail = (1 - level) / 2
    return float(torch.quantile(diffs, tail)), float(torch.quantile(diffs, 1 - tail))


def compare_to_baseline(groups: Sequence, is_baseline: Callable[[object], bool], stratum: Callable[[object], tuple],
                        value: Callable[[object], float | None], *, resamples: int = 2000,
                        seed: int = 0) -> list[Comparison]:
    """Each group that is not a baseline against the baseline group of its stratum (the group with
    the same other settings). ``groups`` have ``.label`` and ``.runs``; ``is_baseline(group)``,
    ``stratum(group)`` and ``value(run)`` say which is which and what is compared."""
    baselines = {}
    for g in groups:
        if is_baseline(g):
            if stratum(g) in baselines:
                raise ValueError(f"two baseline groups with the same other settings: {baselines[stratum(g)].label!r} "
                                 f"and {g.label!r}")
            baselines[stratum(g)] = g
    out = []
    for g in groups:
        base = baselines.get(stratum(g))
        if base is None or base is g:
            continue
        a = [v for v in (value(r) for r in g.runs) if v is not None]
        b = [v for v in (value(r) for r in base.runs) if v is not None]
        if not a or not b:
            continue
        out.append(Comparison(g.label, base.label, len(a), len(b), sum(a) / len(a), sum(b) / len(b),
                              _difference_interval(a, b, resamples, seed)))
    return out


def collapse_steps(history: Sequence[tuple[int, float]], threshold: float) -> list[int]:
    """The evaluation steps after initialization at which ESS/reach (``history``: (step, value))
    was at or below ``threshold``."""
    return [step for step, v in sorted(history) if step > 0 and v <= threshold]


@dataclass
class Collapse:
    runs: int
    collapsed: int                # runs that collapsed at some evaluation after initialization
    at_end: int                   # ... and were still collapsed at their last evaluation
    first_steps: list[int]        # each collapsed run's first collapsed step
    recovered_steps: list[int]    # each run that recovered: its first step above the threshold again


def collapse_summary(histories: Sequence[Sequence[tuple[int, float]]], threshold: float) -> Collapse:
    """How many runs collapsed during training, when first, and whether and when they came back."""
    collapsed = at_end = 0
    first, recovered = [], []
    for history in histories:
        steps = collapse_steps(history, threshold)
        if not steps:
            continue
        collapsed += 1
        first.append(steps[0])
        later = [s for s, v in sorted(history) if s > steps[-1] and v > threshold]
        last_step = max(s for s, _ in history)
        if steps[-1] == last_step:
            at_end += 1
        elif later:
            recovered.append(later[0])
    return Collapse(len(histories), collapsed, at_end, first, recovered)
