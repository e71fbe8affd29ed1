"""The knee studies' tables: does the entropy-ESS say where a trained model's state stops
shrinking? (conf/experiment/knee_sources.yaml and knee.yaml; knee_load_sources.yaml and
knee_load.yaml). Claims as decided before running:

  A. enough: d(k_E) <= 0.05, where d(k) = accuracy(no cut) - accuracy(cut to k), both after
     200 steps of fine-tuning, and k_E is the size init.size=entropy chose;
  B. not much more: d(k) > 0.05 at the grid size nearest k_E / 2 (a tie goes to the larger
     size, the harder one to lose at);
  C. it moves with the task: k_E with the high load > k_E with the low one, paired by seed, and
     the knee (the smallest grid size with d <= 0.05) with it;
  E. (knee_load) k_E ranks the knees: Spearman's rho over every source, permutation p.

A, C (the knee) and E are counted with exact two-sided sign tests or a permutation test; in
knee_load they form one family, Holm-corrected. Sources below 0.8 accuracy are left out. Run
from the repository root:

    python docs/results/compression/knee.py [--tracking-uri sqlite:///runs/mlflow.db]
    python docs/results/compression/knee.py --experiment knee_load --high 16 --grid 16,12,10,8,6,4,3,2

It prints the table and writes <experiment>.md beside itself (or into --out).
"""

import argparse
from pathlib import Path

from ess_reg.harness.runsets import load_runs
from ess_reg.harness.stats import holm, sign_test, spearman, spearman_permutation_p

HOLDS = 0.05  # the largest accuracy loss that counts as "holds", decided before running
COMPETENT = 0.8
TITLES = {"knee": "The knee study", "knee_load": "The knee at a head's capacity (knee_load)",
          "knee_la": "The knee on la, a mixer without decay (knee_la)"}


def nearest_grid(grid: tuple, target: float) -> int:
    return min(grid, key=lambda g: (abs(g - target), -g))


def fmt(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 or p != p else f"{p:.1e}"


def counted(name: str, outcomes: list[bool]) -> tuple[str, float]:
    higher, lower, _, p = sign_test([1.0 if o else -1.0 for o in outcomes])
    return f"{name}: holds on {higher} of {len(outcomes)} sources (exact sign test p = {fmt(p)})", p


def smallest_holding(losses: dict) -> int:
    """The knee: the smallest size whose accuracy loss d (uncut minus cut, after the fine-tune)
    is at most HOLDS."""
    return min(size for size, d in losses.items() if d <= HOLDS)


def entropy_rule(run) -> bool:
    """The cut's size was the entropy-ESS's: the logged rule, or (runs logged before it was) the
    command line."""
    rule = run.params.get("init.compressed.rule")
    return rule == "entropy" if rule not in (None, "None") else "init.size=entropy" in run.tags.get("overrides", "")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", default="knee")
    parser.add_argument("--low", type=int, default=4, help="the smaller load (key-value pairs)")
    parser.add_argument("--high", type=int, default=8, help="the larger load")
    parser.add_argument("--grid", default="16,8,6,4,3,2", help="the cut sizes, the uncut size first")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="the folder <experiment>.md goes to")
    args = parser.parse_args(argv)
    grid = tuple(int(g) for g in args.grid.split(","))
    full_size, low, high = grid[0], args.low, args.high
    runs = load_runs(args.tracking_uri, experiment=args.experiment)
    key = lambda r: (int(r.params["task.num_kv_pairs"]), int(r.params["seed"]))  # noqa: E731
    sources = {key(r): r for r in runs if r.params.get("init.source") in (None, "None")}
    cuts: dict[tuple, dict] = {}
    for r in runs:
        if r.params.get("init.source") in (None, "None"):
            continue
        # the logged init.size is the size chosen; the command line says it was the entropy's
        size = "entropy" if entropy_rule(r) else int(r.params["init.compressed.size"])
        cuts.setdefault(key(r), {})[size] = r
    lines = []
    say = lines.append
    say("| pairs | seed | source accuracy | k_E | " + " | ".join(f"cut to {g}" for g in grid)
        + " | cut to k_E | d(k_E) | knee |")
    say("|---" * (7 + len(grid)) + "|")
    left_out, a, b, k_e, knees = [], [], [], {}, {}
    for (pairs, seed), source in sorted(sources.items()):
        acc = source.metrics["valid/accuracy"]
        got = cuts.get((pairs, seed), {})
        if acc < COMPETENT or any(g not in got for g in grid) or "entropy" not in got:
            left_out.append(f"{pairs} pairs seed {seed} (accuracy {acc:.3f}, cuts {sorted(map(str, got))})")
            continue
        full = got[full_size].metrics["valid/accuracy"]
        d = {g: full - got[g].metrics["valid/accuracy"] for g in grid}
        ke = int(got["entropy"].params["init.compressed.size"])
        de = full - got["entropy"].metrics["valid/accuracy"]
        half = nearest_grid(grid, ke / 2)
        knee = smallest_holding(d)
        a.append(de <= HOLDS)
        if half < ke:
            b.append(d[half] > HOLDS)
        k_e[(pairs, seed)], knees[(pairs, seed)] = ke, knee
        say(f"| {pairs} | {seed} | {acc:.3f} | {ke} | "
            + " | ".join(f"{got[g].metrics['valid/accuracy']:.3f}" for g in grid)
            + f" | {got['entropy'].metrics['valid/accuracy']:.3f} | {de:+.3f} | {knee} |")
    say("")
    say(f"d(k) = accuracy after 200 steps uncut ({full_size}) - after the cut to k and 200 steps; "
        f"'holds' is d <= {HOLDS}; the knee is the smallest grid size that holds.")
    if left_out:
        say("Left out: " + "; ".join(left_out))
    say("")
    text_a, p_a = counted("A, the entropy size is enough (d(k_E) <= 0.05)", a)
    text_b, _ = counted("B, half the entropy size is not (d > 0.05 at the grid size nearest k_E / 2)", b)
    seeds = sorted({s for _, s in k_e if (low, s) in k_e and (high, s) in k_e})
    moved = [k_e[(high, s)] - k_e[(low, s)] for s in seeds]
    knee_moved = [knees[(high, s)] - knees[(low, s)] for s in seeds]
    h, lo, t, p = sign_test(moved)
    text_c = (f"C, k_E moves with the task: larger with {high} pairs than with {low} on {h} of {len(seeds)} seeds "
              f"(smaller on {lo}, equal on {t}; sign p = {p:.3f}); k_E with {low} pairs "
              f"{[k_e[(low, s)] for s in seeds]}, with {high} {[k_e[(high, s)] for s in seeds]}")
    h, lo, t, p_c = sign_test(knee_moved)
    text_knee = (f"and the knee with it: larger on {h} of {len(seeds)} (smaller {lo}, equal {t}; sign p = {p_c:.3f}); "
                 f"knees with {low} pairs {[knees[(low, s)] for s in seeds]}, with {high} "
                 f"{[knees[(high, s)] for s in seeds]}")
    names = sorted(k_e)
    rho = spearman([k_e[n] for n in names], [knees[n] for n in names]) if len(names) > 2 else float("nan")
    p_e = spearman_permutation_p([k_e[n] for n in names], [knees[n] for n in names]) if len(names) > 2 else float("nan")
    within = []
    for load in (low, high):
        at = [n for n in names if n[0] == load]
        if len(at) > 2:
            r = spearman([k_e[n] for n in at], [knees[n] for n in at])
            shown = f"{r:+.2f}" if r == r else "undefined (no spread in k_E or the knee)"  # nan: a constant side
            within.append(f"with {load} pairs {shown} (n = {len(at)})")
    text_e = (f"E, k_E ranks the knees: Spearman's rho {rho:+.2f} over {len(names)} sources, permutation "
              f"p = {fmt(p_e)}; within a load: {', '.join(within) or 'too few sources'}")
    say("- " + text_a)
    say("- " + text_b)
    say("- " + text_c)
    say("  " + text_knee)
    if args.experiment != "knee":  # the registered family of knee_load: C (the knee), A, E
        adjusted = holm([p_c, p_a, p_e])
        say("- " + text_e)
        say(f"- Holm-corrected (C the knee, A, E): p = {', '.join(fmt(p) for p in adjusted)}")
        for load in (low, high):
            ratio = [k_e[n] / knees[n] for n in names if n[0] == load]
            if ratio:
                say(f"- k_E / knee with {load} pairs: {', '.join(f'{r:.2f}' for r in ratio)}")
    text = "\n".join(lines)
    title = TITLES.get(args.experiment, args.experiment)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.experiment}.md").write_text(f"# {title}\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
