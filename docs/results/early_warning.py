"""Does a run's utilization early in training say whether it will learn? (conf/experiment/early_warning.yaml)

Per mixer, over runs without a penalty: a run *learned* when its validation accuracy at the end
is at least --learned (0.25). The registered family, Holm over the mixers: the AUC of the model's
mean utilization at step --step (higher in the runs that learn), two-sided permutation test of
the Mann-Whitney statistic, with a BCa interval. Secondary, not corrected: the AUC of the
validation loss at that step (lower in the runs that learn: what a researcher reads anyway) and
the difference of the two AUCs with a bootstrap interval (runs resampled within each group, both
scores kept together); the AUC of utilization at other evaluations; the collapse flag at --step
(every layer's utilization at most 0.25) as a rule for stopping a run, with the failing runs it
catches and the learners it would stop (exact intervals) and the steps it would save; and a
restart rule, the direction early_warning found turned into a procedure (added 2026-12-04, before
any early_warning_confirm run was looked at): start k seeds, read each one's utilization at
--step, go on with the lowest; its rate of runs that learn over every k-subset of a mixer's runs
(exact, not sampled) against the base rate, with a percentile bootstrap over runs.

    python docs/results/early_warning.py --records docs/results/early_warning/runs.jsonl.gz \
        --out docs/results/early_warning

--experiment reads the store instead (or beside, --records repeats); --export FILE keeps the runs
read in a records file. Writes early_warning.md into --out.
"""

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from ess_reg.harness.records import save_records, with_records
from ess_reg.harness.restart import keep_rate
from ess_reg.harness.runsets import COLLAPSED, LAYER_UTILIZATION, load_runs
from ess_reg.harness.stats import (auc_test, bootstrap_interval, holm, pairwise_auc, proportion_interval,
                                  two_group_percentile_interval)


def at_step(run, key: str, step: int) -> float:
    """A run's evaluation of ``key`` at ``step``; a run without it is an error, not a gap."""
    value = run.at(key, step)
    if value is not None:
        return value
    raise SystemExit(f"run {run.run_id} ({run.name}) has no {key} at step {step}: its history has "
                     f"{[s for s, _ in run.history.get(key, [])]}")


def collapsed_at(run, step: int) -> bool:
    layers = sorted(k for k in run.history if LAYER_UTILIZATION.match(k))
    if not layers:
        raise SystemExit(f"run {run.run_id} ({run.name}) has no per-layer utilization history")
    return all(at_step(run, k, step) <= COLLAPSED for k in layers)


def difference_interval(learners, failures, level=0.95, resamples=2000, seed=0):
    """Percentile bootstrap of AUC(utilization) - AUC(-loss): each group resampled on its own, a
    run's two scores kept together."""
    def difference(a, b):  # (resamples, runs, 2): utilization, -loss
        return pairwise_auc(a[..., 0], b[..., 0]) - pairwise_auc(a[..., 1], b[..., 1])

    return two_group_percentile_interval(np.asarray(learners), np.asarray(failures), difference, level=level,
                                         resamples=resamples, seed=seed)


def analyse(runs, *, step: int = 200, learned: float = 0.25, other_steps=(100, 200, 300, 400),
            keep_of=(2, 3)) -> str:
    by_mixer = defaultdict(list)
    for r in runs:
        if r.params.get("penalty", "none") == "none":
            by_mixer[r.mixer].append(r)
    if not by_mixer:
        raise SystemExit("no runs without a penalty to analyse")
    lines = []
    say = lines.append
    say(f"A run learned: validation accuracy at the end >= {learned}. Scores at step {step}: the model's mean "
        "utilization (higher in learners) and the validation loss (lower in learners).")
    say("")
    say("| mixer | runs | learned | AUC utilization [95% BCa] | p | Holm p | AUC loss [95% BCa] | p "
        "| utilization - loss [95% bootstrap] |")
    say("|---|---|---|---|---|---|---|---|---|")
    rows, registered = [], []
    for mixer in sorted(by_mixer):
        group = by_mixer[mixer]
        learners = [r for r in group if r.metrics["valid/accuracy"] >= learned]
        failures = [r for r in group if r.metrics["valid/accuracy"] < learned]
        if not learners or not failures:
            rows.append((mixer, group, learners, None, None, None))
            continue
        scores = {id(r): (at_step(r, "ess/util", step), -at_step(r, "valid/loss", step)) for r in group}
        util = auc_test([scores[id(r)][0] for r in learners], [scores[id(r)][0] for r in failures])
        loss = auc_test([scores[id(r)][1] for r in learners], [scores[id(r)][1] for r in failures])
        diff = difference_interval([scores[id(r)] for r in learners], [scores[id(r)] for r in failures])
        rows.append((mixer, group, learners, util, loss, diff))
        registered.append(util.p)
    corrected = iter(holm(registered))
    for mixer, group, learners, util, loss, diff in rows:
        if util is None:
            say(f"| {mixer} | {len(group)} | {len(learners)} | (one group is empty: no test) | | | | | |")
            continue
        say(f"| {mixer} | {len(group)} | {len(learners)} | {util.auc:.3f} [{util.interval[0]:.3f}, "
            f"{util.interval[1]:.3f}] | {util.p:.4f} | {next(corrected):.4f} | {loss.auc:.3f} "
            f"[{loss.interval[0]:.3f}, {loss.interval[1]:.3f}] | {loss.p:.4f} | "
            f"{util.auc - loss.auc:+.3f} [{diff[0]:+.3f}, {diff[1]:+.3f}] |")
    say("")
    other_steps = [s for s in other_steps if s != step]
    say("Secondary: the AUC of utilization at other evaluations (uncorrected).")
    say("")
    say("| mixer | " + " | ".join(f"step {s}" for s in other_steps) + " |")
    say("|---" * (1 + len(other_steps)) + "|")
    tested = [(mixer, group, learners) for mixer, group, learners, util, _, _ in rows if util is not None]
    for mixer, group, learners in tested:
        failures = [r for r in group if r not in learners]
        cells = []
        for s in other_steps:
            t = auc_test([at_step(r, "ess/util", s) for r in learners], [at_step(r, "ess/util", s) for r in failures])
            cells.append(f"{t.auc:.3f} (p {t.p:.3f})")
        say(f"| {mixer} | " + " | ".join(cells) + " |")
    say("")
    say(f"Secondary: the collapse flag at step {step} (every layer's utilization <= {COLLAPSED}) as a rule that "
        "stops a run there.")
    say("")
    say("| mixer | failures flagged [exact 95%] | learners flagged [exact 95%] | steps saved |")
    say("|---|---|---|---|")
    for mixer, group, learners, _, _, _ in rows:
        failures = [r for r in group if r not in learners]
        flagged_f = sum(collapsed_at(r, step) for r in failures)
        flagged_l = sum(collapsed_at(r, step) for r in learners)
        total = sum(int(r.params.get("trainer.max_steps", 0)) for r in group)
        saved = sum(int(r.params.get("trainer.max_steps", 0)) - step for r in group if collapsed_at(r, step))

        def rate(k, n):
            if n == 0:
                return "-"
            low, high = proportion_interval(k, n)
            return f"{k} of {n} [{low:.2f}, {high:.2f}]"
        say(f"| {mixer} | {rate(flagged_f, len(failures))} | {rate(flagged_l, len(learners))} | "
            + (f"{saved / total:.0%} |" if total else "- |"))
    say("")
    say(f"Secondary: start k seeds, go on with the one whose utilization at step {step} is lowest. Its share "
        "of runs that learn over every k-subset, and its gain over the base rate (one seed), each with a 95% "
        "percentile bootstrap over runs; the extra steps it costs, as a share of one run.")
    say("")
    say("| mixer | one seed | " + " | ".join(f"lowest of {k}" for k in keep_of) + " |")
    say("|---" * (2 + len(keep_of)) + "|")
    for mixer, group, learners in tested:
        scores = [at_step(r, "ess/util", step) for r in group]
        outcome = [r in learners for r in group]
        max_steps = int(group[0].params.get("trainer.max_steps", 0))
        cells = [f"{sum(outcome) / len(group):.2f}"]
        for k in keep_of:
            def statistic(picks, k=k):
                return keep_rate([scores[i] for i in picks], [outcome[i] for i in picks], k)

            def gain(picks, k=k):  # against one seed, on the same resample
                return statistic(picks) - sum(outcome[i] for i in picks) / len(picks)
            low, high = bootstrap_interval(statistic, len(group))
            gain_low, gain_high = bootstrap_interval(gain, len(group))
            rate = keep_rate(scores, outcome, k)
            cost = f", +{(k - 1) * step / max_steps:.0%} steps" if max_steps else ""
            cells.append(f"{rate:.2f} [{low:.2f}, {high:.2f}]; gain {rate - sum(outcome) / len(group):+.2f} "
                         f"[{gain_low:+.2f}, {gain_high:+.2f}]{cost}")
        say(f"| {mixer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", default=None)
    parser.add_argument("--records", type=Path, action="append", default=[])
    parser.add_argument("--export", type=Path, default=None)
    parser.add_argument("--step", type=int, default=200, help="the evaluation the scores are read at")
    parser.add_argument("--learned", type=float, default=0.25, help="final accuracy at or above it: learned")
    parser.add_argument("--out", type=Path, default=Path("docs/results/early_warning"))
    args = parser.parse_args(argv)
    if args.experiment is None and not args.records:
        parser.error("give --experiment or --records")
    runs = load_runs(args.tracking_uri, experiment=args.experiment) if args.experiment else []
    runs = with_records(runs, args.records)
    if args.export is not None:
        save_records(runs, args.export)
    text = analyse(runs, step=args.step, learned=args.learned)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "early_warning.md").write_text("# Does early utilization say which runs will learn? (early_warning)\n\n"
                                               + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
