"""Two questions a study asks of its groups of seeds, besides correlations:

- does a treatment (a penalty, an init search, a teacher) move the target against its baseline
  run under the same other settings? (:func:`compare_to_baseline`: paired by seed where it can
  be, exact tests, Holm-corrected over the comparisons of one report);
- which seeds does it bring to an accuracy that the baseline never reached, and how much sooner
  where both got there? (:func:`compare_reaching`: rescue and speed, paired by seed);
- when in training does a run's state collapse? (:func:`collapse_steps`: the evaluations at which
  its ESS/reach sat at or below the collapse threshold).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .stats import (PairedTest, UnpairedTest, holm, mcnemar_exact, paired_test, proportion_interval, sign_test,
                    smallest_paired_p, unpaired_test)

__all__ = ["Comparison", "compare_to_baseline", "Reaching", "compare_reaching", "steps_to", "collapse_steps",
           "Collapse", "collapse_summary"]


@dataclass
class Comparison:
    """A treated group against its baseline group: the test that fits how they were run."""

    label: str            # the treated group
    baseline: str         # the group it is compared with
    mean: float
    baseline_mean: float
    test: PairedTest | UnpairedTest   # paired by seed where both sides ran the same seeds
    holm_p: float = math.nan          # the permutation p-value, Holm-corrected over the report's comparisons

    @property
    def paired(self) -> bool:
        return isinstance(self.test, PairedTest)

    @property
    def n(self) -> int:
        return self.test.n

    @property
    def n_baseline(self) -> int:
        return self.test.n if self.paired else self.test.n_baseline

    @property
    def difference(self) -> float:
        return self.test.mean_difference

    @property
    def interval(self) -> tuple[float, float]:
        return self.test.interval

    @property
    def p(self) -> float:
        return self.test.permutation_p

    def reading(self, alpha: float = 0.05) -> str:
        """``higher`` / ``lower`` where the corrected p-value is below ``alpha``; otherwise what
        can and cannot be said, including when the pairs are too few to ever reach ``alpha``."""
        if min(self.n, self.n_baseline) < 2:
            return "too few seeds"
        p = self.p if math.isnan(self.holm_p) else self.holm_p
        if p < alpha:
            return "higher" if self.difference > 0 else "lower"
        floor = (smallest_paired_p(self.n) if self.paired  # the observed split and, for equal sizes, its mirror
                 else (2 if self.n == self.n_baseline else 1) / math.comb(self.n + self.n_baseline, self.n))
        if floor >= alpha:
            return f"no clear difference: {self.n} pairs cannot reach p < {alpha:g}" if self.paired else \
                f"no clear difference: {self.n} + {self.n_baseline} runs cannot reach p < {alpha:g}"
        return "no clear difference"


def compare_to_baseline(groups: Sequence, is_baseline: Callable[[object], bool], stratum: Callable[[object], tuple],
                        value: Callable[[object], float | None], *, pair: Callable[[object], object] | None = None,
                        resamples: int = 20000, seed: int = 0) -> list[Comparison]:
    """Each group that is not a baseline against the baseline group of its stratum (the group with
    the same other settings). ``groups`` have ``.label`` and ``.runs``; ``is_baseline(group)``,
    ``stratum(group)`` and ``value(run)`` say which is which and what is compared.

    With ``pair(run)`` (the seed), two groups whose runs have the same pair keys are compared pair
    by pair (:func:`~ess_reg.harness.stats.paired_test`: sign test, sign-flip permutation test,
    t-interval of the mean difference), which removes what the pairs share (the initialization
    and the batches of a seed) from the noise; otherwise as two independent samples
    (:func:`~ess_reg.harness.stats.unpaired_test`). The permutation p-values are Holm-corrected
    over the comparisons returned: one family."""
    out = []
    for g, base in _with_baselines(groups, is_baseline, stratum):
        a = [(r, value(r)) for r in g.runs if value(r) is not None]
        b = [(r, value(r)) for r in base.runs if value(r) is not None]
        if not a or not b:
            continue
        mean, base_mean = sum(v for _, v in a) / len(a), sum(v for _, v in b) / len(b)
        keys_a = [str(pair(r)) for r, _ in a] if pair else []
        keys_b = [str(pair(r)) for r, _ in b] if pair else []
        if pair and len(set(keys_a)) == len(keys_a) and sorted(keys_a) == sorted(keys_b):
            treated = dict(zip(keys_a, (v for _, v in a)))
            test = paired_test([treated[k] - v for k, (_, v) in zip(keys_b, b)], resamples=resamples, seed=seed)
        else:
            test = unpaired_test([v for _, v in a], [v for _, v in b], resamples=resamples, seed=seed)
        out.append(Comparison(g.label, base.label, mean, base_mean, test))
    for c, adjusted in zip(out, holm([c.p for c in out])):
        c.holm_p = adjusted
    return out


def _with_baselines(groups: Sequence, is_baseline: Callable[[object], bool],
                    stratum: Callable[[object], tuple]) -> list[tuple]:
    """``(group, its baseline)`` for every group that is not a baseline and has one: the baseline
    group of its stratum (the same other settings); two baselines in one stratum is an error."""
    baselines = {}
    for g in groups:
        if is_baseline(g):
            if stratum(g) in baselines:
                raise ValueError(f"two baseline groups with the same other settings: {baselines[stratum(g)].label!r} "
                                 f"and {g.label!r}")
            baselines[stratum(g)] = g
    return [(g, baselines[stratum(g)]) for g in groups
            if stratum(g) in baselines and baselines[stratum(g)] is not g]


@dataclass
class Reaching:
    """A treated group against its baseline at one accuracy threshold, seed by seed: which seeds
    got there within the run (the rescue question) and how much sooner (the speed question)."""

    label: str
    baseline: str
    threshold: float
    pairs: int
    reached: int            # treated seeds that got to the threshold
    baseline_reached: int
    rescued: int            # of the seeds the baseline never brought there, how many the treatment did
    lost: int               # of the seeds the baseline brought there, how many the treatment did not
    p: float                # exact McNemar test: the sign test on rescued against lost
    faster: int             # pairs where both got there: treated first / baseline first
    slower: int
    median_saved: float | None  # median of (baseline step - treated step) over those pairs
    speed_p: float          # exact sign test on those pairs
    holm_p: float = math.nan

    @property
    def failing(self) -> int:
        return self.pairs - self.baseline_reached

    @property
    def rescue_interval(self) -> tuple[float, float] | None:
        """Exact 95% interval of the rescue rate (rescued of failing); None without failing seeds."""
        return proportion_interval(self.rescued, self.failing) if self.failing else None


def compare_reaching(groups: Sequence, is_baseline: Callable[[object], bool], stratum: Callable[[object], tuple],
                     history: Callable[[object], Sequence[tuple[int, float]]], threshold: float,
                     pair: Callable[[object], object]) -> list[Reaching]:
    """Each group run on the same seeds as its baseline (``pair(run)``), at ``threshold``: seeds
    rescued and lost (exact McNemar p, Holm-corrected over the list) and steps saved where both
    got there. A run that never got there is censored at its end: counted, never given a step.
    Groups that do not share their baseline's seeds are left out (a rescue is a per-seed claim)."""
    out = []
    for g, base in _with_baselines(groups, is_baseline, stratum):
        treated = {str(pair(r)): steps_to(history(r) or [], threshold) for r in g.runs}
        control = {str(pair(r)): steps_to(history(r) or [], threshold) for r in base.runs}
        if len(treated) != len(g.runs) or len(control) != len(base.runs) or set(treated) != set(control):
            continue
        both = [(control[k], treated[k]) for k in treated if treated[k] is not None and control[k] is not None]
        rescued = sum(treated[k] is not None and control[k] is None for k in treated)
        lost = sum(treated[k] is None and control[k] is not None for k in treated)
        saved = sorted(b - t for b, t in both)
        faster, slower, _, speed_p = sign_test(saved) if saved else (0, 0, 0, 1.0)
        p = mcnemar_exact(rescued, lost)
        out.append(Reaching(g.label, base.label, threshold, len(treated),
                            sum(v is not None for v in treated.values()), sum(v is not None for v in control.values()),
                            rescued, lost, p, faster, slower, statistics.median(saved) if saved else None, speed_p))
    for c, adjusted in zip(out, holm([c.p for c in out])):
        c.holm_p = adjusted
    return out


def steps_to(history: Sequence[tuple[int, float]], threshold: float) -> int | None:
    """The first evaluation step at which the value (accuracy) reached ``threshold``; None when
    it never did within the run (a censored run: it may get there later). "Faster" is read from
    this, "better" from the final value."""
    return next((step for step, value in sorted(history) if value >= threshold), None)


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
