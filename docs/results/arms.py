"""Arms of a study paired by seed, as its preset decided before running: the per-seed table,
each named comparison by the exact sign-flip test with Holm's correction over them, the runs
whose state is collapsed at the end (every layer's utilization at most 0.25 at the last
evaluation) and the first step at each accuracy threshold.

    python docs/results/arms.py --experiment collapse_penalty --compare ess_constraint:none \
        --out docs/results/collapse_penalty
    python docs/results/arms.py --experiment tune_check --compare "ess_max w=W:ess_max w=0.01" ...

An arm is the run's penalty option, with its weight when the runs of that option differ in it
("ess_max w=0.01"). A study stopped by the clock takes --paired-only: a seed whose arms did not
all finish is named and left out. --rescue T counts, at the end of the runs, the seeds below T
without the arm that end at T or above with it (rescued) and the reverse (lost), with the exact
McNemar p. --family makes the accuracy and first-step tests one registered family (Holm over
all of them); --at STEP adds the accuracy at an earlier step per seed; --check KEY@STEP (repeatable)
tests a logged measure at an evaluation step, paired by seed by the exact sign test (that an
intervention moved what it acts on: ess/util@100 for a penalty on utilization). --experiment repeats to
pool studies of one design on disjoint seeds (a confirmation beside its original); the report
says it is pooled. --table pools a study whose store is gone
from the per-seed table this script published for it (accuracies to 3 decimals, the collapse
flags and first steps as printed). --records FILE adds the study's own runs kept in a records file
(a study run over several machines, whose stores did not outlive them; one run id counts once),
and --export FILE writes every run analysed to a records file, to commit beside the report. Run
from the folder the study ran in, or give its store with --tracking-uri. Writes arms.md into
--out (pooled.md when pooling).
"""

import argparse
import re
import statistics
from collections import defaultdict
from pathlib import Path

from ess_reg.harness.records import save_records, with_records
from ess_reg.harness.runsets import COLLAPSED, RunRecord, load_runs
from ess_reg.harness.stats import (holm, mcnemar_exact, mean_spread, paired_test, proportion_interval,
                                   sampled_sign_flip_note, sign_test)



def arm_of(run, weighted: set[str]) -> str:
    penalty = run.params.get("penalty", "none")
    weight = run.params.get("penalty.schedule.weight")
    return f"{penalty} w={float(weight):g}" if penalty in weighted and weight is not None else penalty


def first_step(history, threshold):
    return next((step for step, value in history if value >= threshold), None)


def collapsed_at_end(run) -> bool:
    layers = [k for k in run.metrics if k.startswith("L") and k.endswith("/util")]
    return bool(layers) and all(run.metrics[k] <= COLLAPSED for k in layers)


def final(run) -> float:
    return run.metrics["valid/accuracy"]


def by_seed(runs) -> dict[int, dict[str, object]]:
    """seed -> arm -> run; a seed that ran one arm twice (two pooled studies sharing a seed, or a
    repeated run) is an error, not a silent overwrite."""
    weights = defaultdict(set)
    for r in runs:  # a run without the param (read back from a table) names its arm as printed
        if r.params.get("penalty.schedule.weight") is not None:
            weights[r.params.get("penalty", "none")].add(r.params["penalty.schedule.weight"])
    weighted = {p for p, w in weights.items() if len(w) > 1}
    table = defaultdict(dict)
    for r in runs:
        seed, arm = int(r.params["seed"]), arm_of(r, weighted)
        if arm in table[seed]:
            raise SystemExit(f"seed {seed} has two finished runs of arm {arm!r} "
                             f"({table[seed][arm].run_id}, {r.run_id}); pool only studies on disjoint seeds")
        table[seed][arm] = r
    return table


def rescue(pairs, threshold: float) -> tuple[int, int, int, float]:
    """(failing, rescued, lost, exact McNemar p) at the end of the runs: failing = baselines below
    ``threshold``; rescued = of those, arms at or above it; lost = the reverse."""
    failing = sum(final(b) < threshold for _, b in pairs)
    rescued = sum(final(b) < threshold <= final(a) for a, b in pairs)
    lost = sum(final(a) < threshold <= final(b) for a, b in pairs)
    return failing, rescued, lost, mcnemar_exact(rescued, lost)


def runs_from_table(path: Path, thresholds) -> list[RunRecord]:
    """The runs of a published arms.md, rebuilt from its per-seed table: the accuracy at the end
    as printed, a collapse flag as every layer at 0 (else 1), and an accuracy history holding just
    the printed first steps. Only the thresholds the table was printed with can be read back."""
    text = path.read_text()
    printed = re.search(r"first step at ([0-9., ]+);", text)
    if printed is None or [float(t) for t in printed.group(1).split(",")] != list(thresholds):
        raise SystemExit(f"{path}: printed with thresholds {printed and printed.group(1)!r}, asked for {thresholds}")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| seed |"))
    names = [c.strip() for c in lines[start].strip("|").split("|")][1:]
    cell = re.compile(r"^([0-9.]+) \(([^)]*)\)( C)?$")
    runs = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        seed, *cells = [c.strip() for c in line.strip("|").split("|")]
        for arm, value in zip(names, cells):
            if value == "-":
                continue
            match = cell.match(value)
            if match is None:
                raise SystemExit(f"{path}: cannot read {value!r} (seed {seed}, arm {arm})")
            steps = [s.strip() for s in match.group(2).split(",")]
            history = [(int(step), t) for step, t in zip(steps, thresholds) if step != "-"]
            runs.append(RunRecord(f"{path.parent.name}:{seed}:{arm}", arm, {"seed": seed, "penalty": arm},
                                  {"valid/accuracy": float(match.group(1)), "L0/util": 0.0 if match.group(3) else 1.0},
                                  {}, history={"valid/accuracy": sorted(history)}))
    return runs


def accuracy_at(run, step: int) -> float | None:
    return run.at("valid/accuracy", step)


def value_at(run, key: str, step: int) -> float:
    """``key``'s evaluation at ``step``; a run without it is an error, not a gap."""
    value = run.at(key, step)
    if value is None:
        raise SystemExit(f"run {run.run_id} ({run.name}) has no {key} at step {step}")
    return value


def parse_check(spec: str) -> tuple[str, int]:
    key, _, step = spec.rpartition("@")
    if not key or not step.isdigit():
        raise SystemExit(f"--check {spec!r}: give KEY@STEP, e.g. ess/util@100")
    return key, int(step)


def analyse(runs, compare: list[str], *, title: str, thresholds=(0.25, 0.5), paired_only=False,
            steps_test: float | None = None, rescue_at: float | None = None, family: bool = False,
            at: int | None = None, checks: tuple[str, ...] = ()) -> str:
    if family and steps_test is None:
        raise SystemExit("a registered family of accuracy and first step (--family) needs --steps-test")
    table = by_seed(runs)
    arms = sorted({a for row in table.values() for a in row})
    incomplete = sorted(s for s in table if len(table[s]) < len(arms)) if paired_only else []
    seeds = sorted(s for s in table if s not in incomplete)
    if not seeds:
        raise SystemExit(f"no seed has a run of every arm {arms}: nothing is paired")
    lines = [f"# {title}: arms paired by seed", "",
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
            cells.append(f"{final(r):.3f} ({', '.join('-' if s is None else str(s) for s in steps)})"
                         + (" C" if collapsed_at_end(r) else ""))
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    if at is not None:  # the same runs earlier on: a budget's end beside the longer one
        lines += ["", f"Accuracy at step {at} (- : not evaluated there)", "",
                  "| seed | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
        for seed in seeds:
            values = [accuracy_at(table[seed][arm], at) if arm in table[seed] else None for arm in arms]
            lines.append(f"| {seed} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " |")
    lines += ["", "| arm | runs | mean ± sd | collapsed at the end [exact 95%] | "
              + " | ".join(f"reached {t}" for t in thresholds) + " |", "|---" * (4 + len(thresholds)) + "|"]
    for arm in arms:
        mine = [table[s][arm] for s in seeds if arm in table[s]]
        c = sum(collapsed_at_end(r) for r in mine)
        low, high = proportion_interval(c, len(mine))
        mean, spread = mean_spread([final(r) for r in mine])
        reached = [sum(first_step(r.history.get("valid/accuracy", []), t) is not None for r in mine)
                   for t in thresholds]
        lines.append(f"| {arm} | {len(mine)} | {mean:.3f} ± {spread:.3f} | "
                     f"{c} [{low:.2f}, {high:.2f}] | " + " | ".join(map(str, reached)) + " |")
    tests = []
    for spec in compare:
        arm, _, base = spec.partition(":")
        if arm not in arms or base not in arms:
            raise SystemExit(f"--compare {spec!r}: the arms are {arms}")
        pairs = [(table[s][arm], table[s][base]) for s in seeds if arm in table[s] and base in table[s]]
        tests.append((arm, base, pairs, paired_test([final(a) - final(b) for a, b in pairs])))
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
    if not all(t.exact for *_, t in tests):
        lines += ["", sampled_sign_flip_note()]
    if rescue_at is not None:
        lines += ["", f"Rescued at the end: seeds whose baseline ended below {rescue_at:g} and whose arm ended at "
                  "or above it (exact 95% interval of the rate over the failing seeds); lost: the reverse; "
                  "exact McNemar p (rescued against lost), Holm over the comparisons:", "",
                  "| arm vs baseline | pairs | failing | rescued [exact 95%] | lost | p | Holm p |", "|---" * 7 + "|"]
        rows = [(arm, base, len(pairs), *rescue(pairs, rescue_at)) for arm, base, pairs, _ in tests]
        for (arm, base, n, failing, rescued, lost, p), p_holm in zip(rows, holm([r[-1] for r in rows])):
            rate = "-" if not failing else "{} of {} [{:.2f}, {:.2f}]".format(
                rescued, failing, *proportion_interval(rescued, failing))
            lines.append(f"| {arm} vs {base} | {n} | {failing} | {rate} | {lost} | {p:.3f} | {p_holm:.3f} |")
    if checks:
        lines += ["", "Checks: a logged measure at an evaluation step, paired by seed; exact two-sided sign test "
                  "(uncorrected):", "", "| arm vs baseline | measure | pairs | arm lower / higher / tied "
                  "| median difference [arm - baseline] | p |", "|---" * 6 + "|"]
        for key, step in map(parse_check, checks):
            for arm, base, pairs, _ in tests:
                d = [value_at(a, key, step) - value_at(b, key, step) for a, b in pairs]
                higher, lower, ties, p = sign_test(d)
                lines.append(f"| {arm} vs {base} | {key} at step {step} | {len(d)} | {lower} / {higher} / {ties} | "
                             f"{statistics.median(d):+.4f} | {p:.3f} |")
    if steps_test is not None:
        lines += ["", f"Faster: the first step at accuracy {steps_test:g}, paired by seed (never reached ranks "
                  "last; two such runs tie); exact two-sided sign test, Holm over the comparisons:", "",
                  "| arm vs baseline | pairs | earlier / later / tied | median difference, where both reached | p "
                  "| Holm p |", "|---" * 6 + "|"]
        never = float("inf")
        rows = []
        for arm, base, pairs, _ in tests:
            steps = [(first_step(a.history.get("valid/accuracy", []), steps_test),
                      first_step(b.history.get("valid/accuracy", []), steps_test)) for a, b in pairs]
            # later minus earlier: a positive difference means the arm got there later
            d = [0.0 if x is None and y is None else (never if x is None else x) - (never if y is None else y)
                 for x, y in steps]
            later, earlier, ties, p = sign_test([float((v > 0) - (v < 0)) for v in d])  # the signs are what counts
            both = [x - y for x, y in steps if x is not None and y is not None]
            rows.append((arm, base, len(pairs), earlier, later, ties, statistics.median(both) if both else None, p))
        for (arm, base, n, earlier, later, ties, median, p), p_holm in zip(rows, holm([r[-1] for r in rows])):
            lines.append(f"| {arm} vs {base} | {n} | {earlier} / {later} / {ties} | "
                         f"{'-' if median is None else f'{median:+g}'} | {p:.3f} | {p_holm:.3f} |")
        if family:  # the study registered both outcomes as one family: Holm over all of them
            named = ([(f"{arm} vs {base}: accuracy at the end (sign-flip)", t.permutation_p)
                      for arm, base, _, t in tests]
                     + [(f"{arm} vs {base}: first step at {steps_test:g} (sign test)", r[-1])
                        for r, (arm, base, *_) in zip(rows, tests)])
            lines += ["", f"The registered family: Holm over the {len(named)} tests above together "
                      "(better and faster as one family):", "", "| test | p | Holm p |", "|---|---|---|"]
            for (name, p), p_holm in zip(named, holm([p for _, p in named])):
                lines.append(f"| {name} | {p:.3f} | {p_holm:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", action="append", default=[],
                        help="repeatable: studies of one design on disjoint seeds, pooled (the report says so)")
    parser.add_argument("--table", action="append", default=[], type=Path,
                        help="repeatable: pool the per-seed table of a published arms.md (its store gone)")
    parser.add_argument("--records", action="append", default=[], type=Path,
                        help="repeatable: the study's runs kept in a records file (ess_reg.harness.records)")
    parser.add_argument("--export", type=Path, default=None, metavar="FILE",
                        help="write every run analysed (store and records) to a records file")
    parser.add_argument("--compare", action="append", required=True, help="ARM:BASELINE, repeatable")
    parser.add_argument("--thresholds", default="0.25,0.5")
    parser.add_argument("--steps-test", type=float, default=None, metavar="THRESHOLD",
                        help="also test 'faster': the first step at THRESHOLD, paired by seed, by the exact sign "
                             "test (a run that never gets there ranks after every run that does; two such tie)")
    parser.add_argument("--rescue", type=float, default=None, metavar="THRESHOLD",
                        help="also count rescued and lost seeds at THRESHOLD on the accuracy at the end")
    parser.add_argument("--family", action="store_true",
                        help="with --steps-test: the accuracy and first-step tests form one registered family; "
                             "also report Holm over all of them together")
    parser.add_argument("--at", type=int, default=None, metavar="STEP",
                        help="also the accuracy at evaluation step STEP per seed (an earlier budget's end)")
    parser.add_argument("--check", action="append", default=[], metavar="KEY@STEP",
                        help="repeatable: a logged measure at an evaluation step, paired by seed (sign test), "
                             "e.g. ess/util@100")
    parser.add_argument("--title", default=None, help="the report's title (default: the experiment's name)")
    parser.add_argument("--paired-only", action="store_true",
                        help="keep only the seeds where every arm finished (a clock stop's complete pairs); "
                             "the others are named and left out of every table")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    if not args.experiment and not args.table and not args.records:
        parser.error("give --experiment, --records or --table")
    runs = [r for experiment in args.experiment  # FINISHED runs only
            for r in load_runs(args.tracking_uri, experiment=experiment) if "valid/accuracy" in r.metrics]
    if args.experiment and not runs:
        raise SystemExit(f"no finished run with an accuracy in {args.experiment} at {args.tracking_uri}")
    # a run both in the store and in a records file counts once; without an accuracy it is left out
    runs = [r for r in with_records(runs, args.records) if "valid/accuracy" in r.metrics]
    if args.export is not None:
        save_records(runs, args.export)
    runs += [r for table in args.table for r in runs_from_table(table, thresholds)]
    sources = (args.experiment or [f"{r.parent.name} (records)" for r in args.records[:1]]) \
        + [f"{t.parent.name} (published table)" for t in args.table]
    pooled = len(sources) > 1
    title = args.title or ("pooled " + " + ".join(sources) if pooled else sources[0])
    text = analyse(runs, args.compare, title=title, thresholds=thresholds, paired_only=args.paired_only,
                   steps_test=args.steps_test, rescue_at=args.rescue, family=args.family, at=args.at,
                   checks=tuple(args.check))
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("pooled.md" if pooled else "arms.md")).write_text(text)


if __name__ == "__main__":
    main()
