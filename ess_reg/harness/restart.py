"""The restart rule: of several seeds trained a few steps each, say which one to go on with.

    ess-train -m experiment=my_study seed=1,2 trainer.max_steps=100
    python -m ess_reg.harness.restart --experiment my_study --step 100 --max-steps 1200
    ess-train trainer.resume=<the run it names> trainer.max_steps=1200

Every finished run of the experiment that stopped at ``--step`` is a candidate; the one whose
``--metric`` (default the model's utilization, ``ess/util``) is lowest there is named, with the
command that resumes it to the full budget (a resumed run goes on exactly as one trained straight
through would). Lowest, because where it was measured (two-layer ``la`` and ``wla`` on MQAR, 128
tokens) the runs that went on to learn had collapsed their state *further* by step 100, while
their loss did not tell them apart: docs/results.md, ``early_warning_confirm``. ``--highest``
picks the other end, for a measure that points the other way.

The forecast is not universal (a few ``gated_deltanet`` runs pointed the other way, and on one-head
``gla`` at 64 tokens utilization at step 100 did not separate the runs at all). ``--check``
reads it from runs of your own regime trained to the end: the AUC of the metric at ``--step`` for
"higher in the runs that learned" (final accuracy at least ``--learned``), with its permutation p
and BCa interval, which end to pick, if either, and what picking it would have given on those
runs: the share that learned with one seed and with the pick of 2 and 3 (over every subset of the
runs, exact), and the extra steps it costs:

    python -m ess_reg.harness.restart --experiment my_pilot --step 100 --check

Both read every finished run of the experiment: keep one model and task per experiment.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from .runsets import RunRecord, load_runs
from .stats import AucTest, auc_test

__all__ = ["candidates", "pick", "direction", "keep_rate", "main"]

ALPHA = 0.05  # a direction is read where the AUC's permutation p is below it


def candidates(runs: Sequence[RunRecord], step: int, metric: str) -> list[tuple[RunRecord, float]]:
    """The runs that stopped at ``step`` with their ``metric`` there. A candidate without the
    metric at that step, or with a value that is not finite, is an error that names it."""
    found = []
    for run in runs:
        if run.steps != step:
            continue  # went on past it (already chosen) or stopped elsewhere: not a candidate
        value = run.at(metric, step)
        if value is None:
            raise ValueError(f"run {run.run_id} ({run.name}) stopped at step {step} but logged no {metric} there "
                             f"(its {metric} steps: {[s for s, _ in run.history.get(metric, [])]})")
        if not math.isfinite(value):
            raise ValueError(f"run {run.run_id} ({run.name}) has {metric} = {value} at step {step}")
        found.append((run, value))
    if not found:
        reached = sorted({r.steps for r in runs if r.steps is not None})
        raise ValueError(f"no finished run stopped at step {step} (the runs reached steps {reached}); "
                         f"train the seeds with trainer.max_steps={step} first")
    return sorted(found, key=lambda pair: (pair[1], pair[0].name))


def pick(runs: Sequence[RunRecord], step: int, metric: str = "ess/util", highest: bool = False) -> RunRecord:
    """The candidate (see :func:`candidates`) with the lowest ``metric`` at ``step`` (highest with
    ``highest``); ties go to the first by name, so the choice repeats."""
    return _choose(candidates(runs, step, metric), highest)


def _choose(ranked: list[tuple[RunRecord, float]], highest: bool) -> RunRecord:
    if highest:
        best = max(value for _, value in ranked)
        return next(run for run, value in ranked if value == best)
    return ranked[0][0]


def keep_rate(scores: Sequence[float], learned: Sequence[bool], k: int, highest: bool = False) -> float:
    """What the rule gives on runs trained to the end: the share of the k-subsets of the runs whose
    lowest-scoring member (highest with ``highest``) learned, over every subset, not a sample. The
    run ranked j-th from the chosen end of n is a subset's pick in C(n - 1 - j, k - 1) of the C(n, k)
    subsets. Ties are ranked in the runs' order."""
    if len(scores) != len(learned):
        raise ValueError(f"{len(scores)} scores but {len(learned)} outcomes")
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in 1..{n} (the runs), got {k}")
    order = sorted(range(n), key=lambda r: -scores[r] if highest else scores[r])
    return sum(math.comb(n - 1 - j, k - 1) for j, r in enumerate(order) if learned[r]) / math.comb(n, k)


def _scored(runs: Sequence[RunRecord], step: int, metric: str, learned: float) -> list[tuple[float, bool]]:
    """``(metric at step, learned)`` of each run trained past ``step``."""
    scored = []
    for run in runs:
        if run.steps is None or run.steps <= step:
            continue  # stopped at the step (a candidate, not evidence) or before it
        value = run.at(metric, step)
        if value is None:
            raise ValueError(f"run {run.run_id} ({run.name}) logged no {metric} at step {step}")
        scored.append((value, run.metrics["valid/accuracy"] >= learned))
    return scored


def direction(runs: Sequence[RunRecord], step: int, metric: str = "ess/util", learned: float = 0.25) -> AucTest:
    """Over the runs trained past ``step``: the AUC of ``metric`` at ``step`` for "higher in the runs
    whose final accuracy is at least ``learned``" (its ``n_positive`` learned). A run without the
    metric there is an error that names it; so is a group left empty."""
    scored = _scored(runs, step, metric, learned)
    higher = [v for v, ok in scored if ok]
    lower = [v for v, ok in scored if not ok]
    if not higher or not lower:
        raise ValueError(f"of {len(scored)} runs trained past step {step}, {len(higher)} reached accuracy {learned} "
                         f"and {len(lower)} did not: a direction needs runs of both kinds")
    return auc_test(higher, lower)


def _say_gain(scored: list[tuple[float, bool]], highest: bool, step: int, max_steps: int,
              keep_of: Sequence[int] = (2, 3)) -> str:
    scores, learned = [v for v, _ in scored], [ok for _, ok in scored]
    end = "highest" if highest else "lowest"
    cells = [f"one seed {sum(learned) / len(learned):.2f}"]
    for k in (k for k in keep_of if k <= len(scored)):
        cells.append(f"{end} of {k} {keep_rate(scores, learned, k, highest):.2f} "
                     f"(+{(k - 1) * step / max_steps:.0%} steps)")
    return (f"on these {len(scored)} runs the rule would have given (share that learned, every subset): "
            + "; ".join(cells))


def _say_direction(test: AucTest, metric: str, step: int, alpha: float = ALPHA) -> str:
    low, high = test.interval
    lines = [f"{test.n_positive} runs learned, {test.n_negative} did not; AUC of {metric} at step {step} "
             f"for 'higher in the runs that learned': {test.auc:.3f} [{low:.3f}, {high:.3f}], "
             f"permutation p {test.p:.4f}"]
    if test.p >= alpha:
        lines.append(f"no direction at p < {alpha}: the metric at this step does not tell them apart here, so "
                     "the restart rule has nothing to go on")
    elif test.auc < 0.5:
        lines.append("lower in the runs that learned: pick the lowest (the default)")
    else:
        lines.append("higher in the runs that learned: pick with --highest")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ess_reg.harness.restart", description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--step", type=int, required=True, help="the step the seeds were trained to")
    parser.add_argument("--metric", default="ess/util", help="the logged measure to rank by (default ess/util)")
    parser.add_argument("--highest", action="store_true", help="go on with the highest instead of the lowest")
    parser.add_argument("--max-steps", type=int, default=None, help="the full budget, for the resume command")
    parser.add_argument("--check", action="store_true",
                        help="instead of picking: read the direction from runs of the experiment trained to the end")
    parser.add_argument("--learned", type=float, default=0.25,
                        help="with --check: the final accuracy at or above which a run learned (default 0.25)")
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    args = parser.parse_args(argv)
    if args.step < 1:
        parser.error(f"--step must be at least 1, got {args.step}")
    if args.max_steps is not None and args.max_steps <= args.step:
        parser.error(f"--max-steps ({args.max_steps}) must be beyond --step ({args.step})")
    try:
        runs = load_runs(args.tracking_uri, experiment=args.experiment)
        if args.check:
            test = direction(runs, args.step, args.metric, args.learned)
            print(_say_direction(test, args.metric, args.step))
            if test.p < ALPHA:  # the end the direction names, and what it buys on the same runs
                budget = args.max_steps or max(r.steps for r in runs if r.steps is not None)  # the pilot's own
                print(_say_gain(_scored(runs, args.step, args.metric, args.learned), test.auc > 0.5, args.step,
                                budget))
            return 0
        ranked = candidates(runs, args.step, args.metric)
        chosen = _choose(ranked, args.highest)
    except ValueError as err:
        print(f"restart: error: {err}", file=sys.stderr)
        return 2
    width = max(len(run.name) for run, _ in ranked)
    print(f"{'run':<{width}}  {'id':<32}  {args.metric} at step {args.step}")
    for run, value in ranked:
        mark = "  <- go on with this one" if run is chosen else ""
        print(f"{run.name:<{width}}  {run.run_id:<32}  {value:.4f}{mark}")
    budget = args.max_steps if args.max_steps is not None else "<budget>"
    print(f"\ness-train trainer.resume={chosen.run_id} trainer.max_steps={budget}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
