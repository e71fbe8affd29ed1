"""The knee study's table (conf/experiment/knee_sources.yaml, knee.yaml): does the entropy-ESS
say where a trained model's state stops shrinking? Claims A-C as decided before running:

  A. enough: d(k_E) <= 0.05, where d(k) = accuracy(no cut) - accuracy(cut to k), both after
     200 steps of fine-tuning, and k_E is the size init.size=entropy chose;
  B. not much more: d(k) > 0.05 at the grid size nearest k_E / 2 (a tie goes to the larger
     size, the harder one to lose at);
  C. it moves with the task: k_E with 8 pairs > k_E with 4 pairs, paired by seed, and the knee
     (the smallest grid size with d <= 0.05) with it.

Each claim is counted over the sources and tested with an exact two-sided sign test; sources
below 0.8 accuracy are left out. Run from the repository root:

    python docs/results/compression/knee.py [--tracking-uri sqlite:///runs/mlflow.db]

It prints the table and writes knee.md beside itself.
"""

import argparse
from pathlib import Path

from ess_reg.harness.runsets import load_runs
from ess_reg.harness.stats import sign_test

GRID = (16, 8, 6, 4, 3, 2)
HOLDS = 0.05  # the largest accuracy loss that counts as "holds", decided before running
COMPETENT = 0.8


def nearest_grid(target: float) -> int:
    return min(GRID, key=lambda g: (abs(g - target), -g))


def counted(name: str, outcomes: list[bool]) -> str:
    higher, lower, _, p = sign_test([1.0 if o else -1.0 for o in outcomes])
    return f"{name}: holds on {higher} of {len(outcomes)} sources (exact sign test p = {p:.3f})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", default="knee")
    args = parser.parse_args()
    runs = load_runs(args.tracking_uri, experiment=args.experiment)
    key = lambda r: (int(r.params["task.num_kv_pairs"]), int(r.params["seed"]))  # noqa: E731
    sources = {key(r): r for r in runs if r.params.get("init.source") in (None, "None")}
    cuts: dict[tuple, dict] = {}
    for r in runs:
        if r.params.get("init.source") in (None, "None"):
            continue
        # the logged init.size is the size chosen; the command line says it was the entropy's
        size = ("entropy" if "init.size=entropy" in r.tags.get("overrides", "")
                else int(r.params["init.compressed.size"]))
        cuts.setdefault(key(r), {})[size] = r
    lines, say = [], None
    say = lines.append
    say("| pairs | seed | source accuracy | k_E | " + " | ".join(f"cut to {g}" for g in GRID)
        + " | cut to k_E | d(k_E) | knee |")
    say("|---" * (6 + len(GRID)) + "|")
    left_out, a, b, k_e, knees = [], [], [], {}, {}
    for (pairs, seed), source in sorted(sources.items()):
        acc = source.metrics["valid/accuracy"]
        got = cuts.get((pairs, seed), {})
        if acc < COMPETENT or 16 not in got or "entropy" not in got:
            left_out.append(f"{pairs} pairs seed {seed} (accuracy {acc:.3f}, cuts {sorted(map(str, got))})")
            continue
        full = got[16].metrics["valid/accuracy"]
        d = {g: full - got[g].metrics["valid/accuracy"] for g in GRID if g in got}
        ke = int(got["entropy"].params["init.compressed.size"])
        de = full - got["entropy"].metrics["valid/accuracy"]
        half = nearest_grid(ke / 2)
        knee = min(g for g in d if d[g] <= HOLDS)
        a.append(de <= HOLDS)
        if half in d and half < ke:
            b.append(d[half] > HOLDS)
        k_e[(pairs, seed)], knees[(pairs, seed)] = ke, knee
        say(f"| {pairs} | {seed} | {acc:.3f} | {ke} | "
            + " | ".join(f"{got[g].metrics['valid/accuracy']:.3f}" if g in got else "-" for g in GRID)
            + f" | {got['entropy'].metrics['valid/accuracy']:.3f} | {de:+.3f} | {knee} |")
    say("")
    say(f"d(k) = accuracy after 200 steps uncut (16) - after the cut to k and 200 steps; 'holds' is d <= {HOLDS}.")
    if left_out:
        say("Left out: " + "; ".join(left_out))
    say("")
    say("- " + counted("A, the entropy size is enough (d(k_E) <= 0.05)", a))
    say("- " + counted("B, half the entropy size is not (d > 0.05 at the grid size nearest k_E / 2)", b))
    seeds = sorted({s for _, s in k_e if (4, s) in k_e and (8, s) in k_e})
    moved = [k_e[(8, s)] - k_e[(4, s)] for s in seeds]
    knee_moved = [knees[(8, s)] - knees[(4, s)] for s in seeds]
    h, lo, t, p = sign_test(moved)
    say(f"- C, k_E moves with the task: larger with 8 pairs than with 4 on {h} of {len(seeds)} seeds "
        f"(smaller on {lo}, equal on {t}; sign p = {p:.3f}); k_E with 4 pairs "
        f"{[k_e[(4, s)] for s in seeds]}, with 8 {[k_e[(8, s)] for s in seeds]}")
    h, lo, t, p = sign_test(knee_moved)
    say(f"  and the knee with it: larger on {h} of {len(seeds)} (smaller {lo}, equal {t}; sign p = {p:.3f}); "
        f"knees with 4 pairs {[knees[(4, s)] for s in seeds]}, with 8 {[knees[(8, s)] for s in seeds]}")
    text = "\n".join(lines)
    (Path(__file__).parent / "knee.md").write_text("# The knee study\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
