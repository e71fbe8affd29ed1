"""Arms of a study paired by seed, as its preset decided before running: the per-seed table,
each named comparison by the exact sign-flip test with Holm's correction over them, the runs
whose state is collapsed at the end (every layer's utilization at most 0.25 at the last
evaluation) and the first step at each accuracy threshold.

    python docs/results/arms.py --experiment collapse_penalty --compare ess_constraint:none \
        --out docs/results/collapse_penalty
    python docs/results/arms.py --experiment tune_check --compare "ess_max w=W:ess_max w=0.01" ...

An arm is the run's penalty option, with its weight when the runs of that option differ in it
("ess_max w=0.01"). A study stopped by the clock takes --paired-only: a seed whose arms did not
all finish is named and left out. Run from the folder the study ran in, or give its store with
--tracking-uri. Writes arms.md into --out.
"""

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from ess_reg.harness.runsets import load_runs
from ess_reg.harness.stats import holm, paired_test, proportion_interval, sign_test

COLLAPSED = 0.25  # every layer at or below it: collapse or near collapse (the verdict's thresholds)


def arm_of(run, weighted: set[str]) -> str:
    penalty = run.params.get("penalty", "none")
    weight = run.params.get("penalty.schedule.weight")
    return f"{penalty} w={float(weight):g}" if penalty in weighted and weight is not None else penalty


def first_step(history, threshold):
    return next((step for step, value in history if value >= threshold), None)


def collapsed_at_end(run) -> bool:
    layers = [k for k in run.metrics if k.startswith("L") and k.endswith("/util")]
    return bool(layers) and all(run.metrics[k] <= COLLAPSED for k in layers)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--compare", action="append", required=True, help="ARM:BASELINE, repeatable")
    parser.add_argument("--thresholds", default="0.25,0.5")
    parser.add_argument("--steps-test", type=float, default=None, metavar="THRESHOLD",
                        help="also test 'faster': the first step at THRESHOLD, paired by seed, by the exact sign "
                             "test (a run that never gets there ranks after every run that does; two such tie)")
    parser.add_argument("--paired-only", action="store_true",
                        help="keep only the seeds where every arm finished (a clock stop's complete pairs); "
                             "the others are named and left out of every table")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    runs = [r for r in load_runs(args.tracking_uri, experiment=args.experiment)  # FINISHED runs only
            if "valid/accuracy" in r.metrics]
    weights = defaultdict(set)
    for r in runs:
        weights[r.params.get("penalty", "none")].add(r.params.get("penalty.schedule.weight"))
    weighted = {p for p, w in weights.items() if len(w) > 1}
    table = defaultdict(dict)  # seed -> arm -> run
    for r in runs:
        table[int(r.params["seed"])][arm_of(r, weighted)] = r
    arms = sorted({a for row in table.values() for a in row})
    incomplete = sorted(s for s in table if len(table[s]) < len(arms)) if args.paired_only else []
    seeds = sorted(s for s in table if s not in incomplete)
    lines = [f"# {args.experiment}: arms paired by seed", "",
             *([f"Left out, not every arm finished (--paired-only): seeds {incomplete}", ""] if incomplete else []),
             "Accuracy at the end (first step at " + ", ".join(map(str, thresholds))
             + "; C: every layer's utilization <= 0.25 at the end)", "",
             "| seed | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for seed in seeds:
        cells = []
        for arm in arms:
            r = table[seed].get(arm)
            if r is None:
                cells.append("-")
                continue
            steps = [first_step(r.history.get("valid/accuracy", []), t) for t in thresholds]
            cells.append(f"{r.metrics['valid/accuracy']:.3f} ({', '.join('-' if s is None else str(s) for s in steps)})"
                         + (" C" if collapsed_at_end(r) else ""))
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += ["", "| arm | runs | collapsed at the end [exact 95%] | "
              + " | ".join(f"reached {t}" for t in thresholds) + " |", "|---" * (3 + len(thresholds)) + "|"]
    for arm in arms:
        mine = [table[s][arm] for s in seeds if arm in table[s]]
        c = sum(collapsed_at_end(r) for r in mine)
        low, high = proportion_interval(c, len(mine))
        reached = [sum(first_step(r.history.get("valid/accuracy", []), t) is not None for r in mine)
                   for t in thresholds]
        lines.append(f"| {arm} | {len(mine)} | {c} [{low:.2f}, {high:.2f}] | " + " | ".join(map(str, reached)) + " |")
    tests = []
    for spec in args.compare:
        arm, _, base = spec.partition(":")
        pairs = [(table[s][arm], table[s][base]) for s in seeds if arm in table[s] and base in table[s]]
        d = [a.metrics["valid/accuracy"] - b.metrics["valid/accuracy"] for a, b in pairs]
        tests.append((arm, base, pairs, paired_test(d)))
    corrected = holm([t.permutation_p for *_, t in tests])
    lines += ["", f"Paired by seed; exact sign-flip p, Holm over the {len(tests)} comparison(s):", "",
              "| arm vs baseline | pairs | mean difference [95% t] | higher / lower / tied | p | Holm p |"
              + " steps to thresholds, where both reached (median difference, pairs) |", "|---" * 7 + "|"]
    for (arm, base, pairs, t), p_holm in zip(tests, corrected):
        steps = []
        for threshold in thresholds:
            both = [(first_step(a.history.get("valid/accuracy", []), threshold),
                     first_step(b.history.get("valid/accuracy", []), threshold)) for a, b in pairs]
            diffs = [x - y for x, y in both if x is not None and y is not None]
            median = statistics.median(diffs) if diffs else None
            steps.append(f"{threshold}: {'-' if median is None else f'{median:+g}'} ({len(diffs)})")
        low, high = t.interval
        lines.append(f"| {arm} vs {base} | {t.n} | {t.mean_difference:+.3f} [{low:+.3f}, {high:+.3f}] | "
                     f"{t.higher} / {t.lower} / {t.ties} | {t.permutation_p:.3f} | {p_holm:.3f} | {'; '.join(steps)} |")
    if args.steps_test is not None:
        lines += ["", f"Faster: the first step at accuracy {args.steps_test:g}, paired by seed (never reached ranks "
                  "last; two such runs tie); exact two-sided sign test, Holm over the comparisons:", "",
                  "| arm vs baseline | pairs | earlier / later / tied | median difference, where both reached | p "
                  "| Holm p |", "|---" * 6 + "|"]
        never = float("inf")
        rows = []
        for arm, base, pairs, _ in tests:
            steps = [(first_step(a.history.get("valid/accuracy", []), args.steps_test),
                      first_step(b.history.get("valid/accuracy", []), args.steps_test)) for a, b in pairs]
            # later minus earlier: a positive difference means the arm got there later
            d = [0.0 if x is None and y is None else (never if x is None else x) - (never if y is None else y)
                 for x, y in steps]
            later, earlier, ties, p = sign_test([float((v > 0) - (v < 0)) for v in d])  # the signs are what counts
            both = [x - y for x, y in steps if x is not None and y is not None]
            rows.append((arm, base, len(pairs), earlier, later, ties, statistics.median(both) if both else None, p))
        for (arm, base, n, earlier, later, ties, median, p), p_holm in zip(rows, holm([r[-1] for r in rows])):
            lines.append(f"| {arm} vs {base} | {n} | {earlier} / {later} / {ties} | "
                         f"{'-' if median is None else f'{median:+g}'} | {p:.3f} | {p_holm:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "arms.md").write_text(text)


if __name__ == "__main__":
    main()
