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
    paired: bool = False  # by seed: each seed's difference (same init and batches on both sides)
    higher_pairs: int | None = None  # paired: how many seeds came out higher than their baseline

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


def _paired_interval(differences: list[float], resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of the mean of paired differences (the pairs resampled)."""
    if len(differences) < 2:
        return math.nan, math.nan
    g = torch.Generator().manual_seed(seed)
    d = torch.tensor(differences, dtype=torch.float64)
    means = d[torch.randint(len(d), (resamples, len(d)), generator=g)].mean(1)
    tail = (1 - level) / 2
    return float(torch.quantile(means, tail)), float(torch.quantile(means, 1 - tail))


def compare_to_baseline(groups: Sequence, is_baseline: Callable[[object], bool], stratum: Callable[[object], tuple],
                        value: Callable[[object], float | None], *, pair: Callable[[object], object] | None = None,
                        resamples: int = 2000, seed: int = 0) -> list[Comparison]:
    """Each group that is not a baseline against the baseline group of its stratum (the group with
    the same other settings). ``groups`` have ``.label`` and ``.runs``; ``is_baseline(group)``,
    ``stratum(group)`` and ``value(run)`` say which is which and what is compared. With
    ``pair(run)`` (the seed), two groups whose runs have the same pair keys are compared pair by
    pair: the interval is of the mean paired difference, which removes what the pairs share (the
    initialization and the batches of a seed) from the noise."""
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
        a = {id(r): value(r) for r in g.runs if value(r) is not None}
        b = {id(r): value(r) for r in base.runs if value(r) is not None}
        if not a or not b:
            continue
        mean, base_mean = sum(a.values()) / len(a), sum(b.values()) / len(b)
        keys_a = [pair(r) for r in g.runs if id(r) in a] if pair else None
        keys_b = [pair(r) for r in base.runs if id(r) in b] if pair else None
        if pair and len(set(keys_a)) == len(keys_a) and sorted(map(str, keys_a)) == sorted(map(str, keys_b)):
            by_key = {str(pair(r)): a[id(r)] for r in g.runs if id(r) in a}
            diffs = [by_key[str(pair(r))] - b[id(r)] for r in base.runs if id(r) in b]
            out.append(Comparison(g.label, base.label, len(a), len(b), mean, base_mean,
                                  _paired_interval(diffs, resamples, seed), paired=True,
                                  higher_pairs=sum(d > 0 for d in diffs)))
        else:
            out.append(Comparison(g.label, base.label, len(a), len(b), mean, base_mean,
                                  _difference_interval(list(a.values()), list(b.values()), resamples, seed)))
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
