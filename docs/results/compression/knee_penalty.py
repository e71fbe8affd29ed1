"""The knee_ess_min study's tables (conf/experiment/knee_ess_min_sources.yaml, knee_ess_min.yaml):
does a source trained with a penalty (ess_min) shrink further than one trained without, paired
by seed? Each source is cut to every grid size and to its entropy size, then fine-tuned 200 steps.

The registered family, Holm-corrected (--family after+start, knee_ess_min's): at the primary
size, the cut's accuracy after its fine-tune and at step 0 (before it), arm - baseline, paired by
seed, exact two-sided sign-flip test with a t-interval. --family after+knee (its confirmation's):
the cut's accuracy after its fine-tune at the primary size and the knee (exact sign test).
--family knee+source (the dose study's): the knee and the sources' accuracy, both exact sign tests.
--family knee-step (the fine grid's): one registered test, the step knee(baseline) - knee(arm) in
grid sizes' coordinates, its mean with a t-interval and the exact sign-flip test.
--family none: nothing registered (a secondary comparison, e.g. two weights against each other).
Pairs with a source below 0.8 are left out of the cut comparisons (counted). Secondary, not
corrected: the sources' accuracy over every pair (the penalty's cost), the other sizes and
outcomes, and k_E and the knee (the smallest grid size within 0.05 of the uncut, after the
fine-tune), exact sign tests. Run from the folder the study ran in:

    python docs/results/compression/knee_penalty.py --experiment knee_ess_min --arm ess_min
    python docs/results/compression/knee_penalty.py --experiment knee_ess_min_confirm --arm ess_min \
        --primary 4 --family after+knee

It prints the tables and writes <experiment>.md beside itself (or into --out). --export FILE keeps
the runs read in a records file; --records FILE reads them from one instead of the store (the
confirmation's are in knee_ess_min_confirm.jsonl.gz beside this script).
"""

import argparse
import statistics
from pathlib import Path

from arms import tests_table  # this folder's arms.py: the Holm-corrected table of paired tests
from ess_reg.harness.records import save_records, with_records
from ess_reg.harness.runsets import load_runs
from ess_reg.harness.stats import holm, paired_test, sign_test
from knee import entropy_rule, smallest_holding  # this folder's knee.py: which cut was k_E, the knee
from merge import at_end, at_start  # this folder's merge.py: accuracy after the fine-tune, at step 0

COMPETENT = 0.8
UNSET = (None, "None")


def knee_of(cuts: dict, grid: tuple) -> int:
    """The knee of one source's cuts, the uncut size (grid[0]) as the reference."""
    full = at_end(cuts[grid[0]])
    return smallest_holding({g: full - at_end(cuts[g]) for g in grid})


def is_arm(run, spec: str) -> bool:
    """Whether a source belongs to an arm: ``"ess_min"`` (the penalty option) or ``"ess_min w=0.01"``
    (and its weight)."""
    option, _, weight = spec.partition(" w=")
    if run.params.get("penalty", "none") != option:
        return False
    return not weight or float(run.params.get("penalty.schedule.weight", "nan")) == float(weight)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", default=None,
                        help="the study's runs in the store (default knee_ess_min, unless --records is given)")
    parser.add_argument("--arm", default="ess_min",
                        help="the sources' penalty option under test, with its weight where the runs hold several "
                             "(\"ess_min w=0.01\")")
    parser.add_argument("--baseline", default="none")
    parser.add_argument("--grid", default="16,8,6,4", help="the cut sizes, the uncut size first")
    parser.add_argument("--primary", type=int, default=6, help="the size of the registered comparisons")
    parser.add_argument("--family", choices=("after+start", "after+knee", "knee+source", "knee-step", "none"),
                        default="after+start",
                        help="the registered family: at --primary the cut after its fine-tune and at step 0, or "
                             "after its fine-tune and the knee; or the knee and the sources' accuracy; or none "
                             "(every line secondary)")
    parser.add_argument("--records", type=Path, action="append", default=[],
                        help="repeatable: runs from a records file (beside the store only with --experiment); "
                             "one run id counts once")
    parser.add_argument("--export", type=Path, default=None, help="write the runs read to a records file")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="the folder <experiment>.md goes to")
    args = parser.parse_args(argv)
    grid = tuple(int(g) for g in args.grid.split(","))
    if args.primary not in grid:
        parser.error(f"--primary {args.primary} is not in --grid {args.grid}")
    if args.experiment is None and not args.records:
        args.experiment = "knee_ess_min"
    runs = load_runs(args.tracking_uri, experiment=args.experiment) if args.experiment else []
    runs = with_records(runs, args.records)  # one run id counts once
    if args.export is not None:
        save_records(runs, args.export)
    study = args.experiment or args.records[0].name.split(".")[0]
    sources = {r.run_id: r for r in runs if r.params.get("init.source") in UNSET}
    by_arm: dict[str, dict[int, object]] = {args.arm: {}, args.baseline: {}}
    others = set()
    for r in sources.values():
        arm = next((a for a in by_arm if is_arm(r, a)), None)
        if arm is None:  # a third arm in the same runs (a dose study beside its confirmation)
            others.add(f"{r.params.get('penalty', 'none')} w={r.params.get('penalty.schedule.weight')}")
            continue
        seed = int(r.params["seed"])
        if seed in by_arm[arm]:
            raise SystemExit(f"two {arm} sources for seed {seed}: {by_arm[arm][seed].run_id}, {r.run_id}")
        by_arm[arm][seed] = r
    cuts: dict[str, dict] = {}  # source run id -> size -> cut run
    for r in runs:
        if r.params.get("init.source") in UNSET:
            continue
        size = "entropy" if entropy_rule(r) else int(r.params["init.compressed.size"])
        cuts.setdefault(r.params["init.compressed.source"], {})[size] = r
    weights = {by_arm[args.arm][s].params.get("penalty.schedule.weight") for s in by_arm[args.arm]}
    seeds = sorted(set(by_arm[args.arm]) & set(by_arm[args.baseline]))
    wanted = (*grid, "entropy")

    lines = []
    say = lines.append
    say(f"Sources: {args.arm} (weight {', '.join(sorted(map(str, weights))) or '-'}) and {args.baseline}, "
        f"paired by seed. Each cut: accuracy at step 0 / after the fine-tune."
        + (f" Other sources in these runs, not compared here: {', '.join(sorted(others))}." if others else ""))
    say("")
    say("| seed | source | source accuracy | k_E | " + " | ".join(f"cut to {g}" for g in grid)
        + " | cut to k_E | knee |")
    say("|---" * (6 + len(grid)) + "|")
    complete, left_out = [], []
    for s in seeds:
        pair = {arm: by_arm[arm][s] for arm in (args.arm, args.baseline)}
        got = {arm: cuts.get(src.run_id, {}) for arm, src in pair.items()}
        for arm, src in pair.items():
            mine = got[arm]
            if all(w in mine for w in wanted):
                k_e = mine["entropy"].params["init.compressed.size"]
                say(f"| {s} | {arm} | {at_end(src):.3f} | {k_e} | "
                    + " | ".join(f"{at_start(mine[g]):.3f} / {at_end(mine[g]):.3f}" for g in grid)
                    + f" | {at_start(mine['entropy']):.3f} / {at_end(mine['entropy']):.3f} | {knee_of(mine, grid)} |")
            else:
                say(f"| {s} | {arm} | {at_end(src):.3f} | - | " + " | ".join("-" for _ in grid) + " | - | - |")
        weak = [arm for arm, src in pair.items() if at_end(src) < COMPETENT]
        missing = [arm for arm in pair if any(w not in got[arm] for w in wanted)]
        if weak or missing:
            left_out.append(f"seed {s} ({', '.join(f'{a} source below {COMPETENT}' for a in weak)}"
                            f"{'; ' if weak and missing else ''}{', '.join(f'{a} cuts incomplete' for a in missing)})")
        else:
            complete.append(s)
    say("")
    if left_out:
        say("Left out of the cut comparisons: " + "; ".join(left_out))
        say("")

    def cut(arm, s, size):
        return cuts[by_arm[arm][s].run_id][size]

    with_knee = args.family == "after+knee"
    knee_and_source = args.family == "knee+source"
    knee_step = args.family == "knee-step"
    nothing_registered = args.family in ("none", "knee-step")  # knee-step's one test is below the table

    def registered(size, when):  # in the family: True (Holm in the table) or where it is corrected
        if knee_and_source or nothing_registered or size != args.primary or (with_knee and when == "step 0"):
            return False
        return "(the family below)" if with_knee else True

    tests = []
    for size in (args.primary, *[g for g in grid[1:] if g != args.primary]):
        for when, measure in (("after the fine-tune", at_end), ("step 0", at_start)):
            d = [measure(cut(args.arm, s, size)) - measure(cut(args.baseline, s, size)) for s in complete]
            if len(d) > 1:
                tests.append((f"cut to {size}, {when}", paired_test(d), registered(size, when)))
    d = [at_end(by_arm[args.arm][s]) - at_end(by_arm[args.baseline][s]) for s in seeds]
    if len(d) > 1:
        tests.append(("the sources (uncut, every pair)", paired_test(d), "(the family below)" if knee_and_source
                      else False))
    if tests:
        family = ("the knee and the sources (below)" if knee_and_source
                  else f"the cut to {args.primary} (" + ("the cut's accuracy and the knee" if with_knee
                                                          else "two outcomes") + ")")
        say(f"{args.arm} - {args.baseline}, paired by seed; " + ("nothing registered, every line secondary:"
                                                                 if nothing_registered else f"Holm over {family}:"))
        say("")
        lines.extend(tests_table(tests, untested="(secondary)"))
        say("")
    knee_p = None
    if complete:
        for name, value in (("k_E", lambda c: int(c["entropy"].params["init.compressed.size"])),
                            ("the knee", lambda c: knee_of(c, grid))):
            pairs = [(value(cuts[by_arm[args.arm][s].run_id]), value(cuts[by_arm[args.baseline][s].run_id]))
                     for s in complete]
            smaller, larger, ties, p = sign_test([float(b - a) for a, b in pairs])
            kind = "Registered" if (with_knee or knee_and_source) and name == "the knee" else "Secondary"
            say(f"- {kind}: {name} smaller with {args.arm} on {smaller} of {len(pairs)} seeds (larger on "
                f"{larger}, equal on {ties}; exact sign test p = {p:.4f}); {args.arm} {[a for a, _ in pairs]}, "
                f"{args.baseline} {[b for _, b in pairs]}")
            knee_p = p if name == "the knee" else knee_p
        if knee_step:
            knees = [(knee_of(cuts[by_arm[args.baseline][s].run_id], grid),
                      knee_of(cuts[by_arm[args.arm][s].run_id], grid)) for s in complete]
            step = paired_test([float(b - a) for b, a in knees])
            low, high = step.interval
            say(f"- Registered (one test): the step, knee({args.baseline}) - knee({args.arm}), "
                f"{step.mean_difference:+.2f} coordinates [{low:+.2f}, {high:+.2f}] ({step.level:.0%} t) over "
                f"{step.n} seeds ({step.higher} smaller with {args.arm}, {step.lower} larger, {step.ties} equal); "
                f"{'exact' if step.exact else 'sampled'} sign-flip p = {step.permutation_p:.4f}")
            # A source none of whose cuts holds has its knee at the uncut size: one such seed moves
            # the mean by several coordinates, so the step is also shown robustly.
            largest_cut = grid[1]
            capped = paired_test([float(min(b, largest_cut) - min(a, largest_cut)) for b, a in knees])
            say(f"- Secondary: the median step {statistics.median(b - a for b, a in knees):+g}; "
                f"with knees above {largest_cut} counted as {largest_cut}, {capped.mean_difference:+.2f} "
                f"[{capped.interval[0]:+.2f}, {capped.interval[1]:+.2f}], sign-flip p = {capped.permutation_p:.4f}")
    primary = next((t for name, t, _ in tests if name == f"cut to {args.primary}, after the fine-tune"), None)
    cost = next((t for name, t, _ in tests if name.startswith("the sources")), None)
    named = []
    if with_knee and primary is not None and knee_p is not None:
        named = [(f"cut to {args.primary}, after the fine-tune (sign-flip)", primary.permutation_p),
                 ("the knee smaller (sign test)", knee_p)]
    elif knee_and_source and cost is not None and knee_p is not None:
        # the sign test: a penalty's cost is a small loss on most seeds and a large one on a few
        named = [("the knee smaller (sign test)", knee_p), ("the sources' accuracy (sign test)", cost.sign_p)]
    if named:
        say("")
        say("The registered family, Holm over the two:")
        say("")
        say("| test | p | Holm p |")
        say("|---|---|---|")
        for (name, p), p_holm in zip(named, holm([p for _, p in named])):
            say(f"| {name} | {p:.4f} | {p_holm:.4f} |")
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{study}.md").write_text(f"# Does a penalty let the state shrink further? ({study})\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
