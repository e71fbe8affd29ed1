"""The compression study's table (conf/experiment/compress_sources.yaml, compress.yaml): for each
kept state size, the source models cut to it (accuracy right after the cut and after 200 steps
of fine-tuning) against the same state trained from scratch for the same 1200 steps in all,
paired by seed. ess-report keeps runs of different budgets apart, so this pairing is written out
here. Run from the repository root:

    python docs/results/compression/compare.py [--tracking-uri sqlite:///runs/mlflow.db]
"""

import argparse
import statistics

from ess_reg.harness.runsets import load_runs
from ess_reg.harness.stats import paired_test


def accuracy_at(run, step):
    return dict(run.history.get("valid/accuracy") or []).get(step)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", default="compress")
    args = parser.parse_args()
    runs = load_runs(args.tracking_uri, experiment=args.experiment)
    seed = lambda r: int(r.params["seed"])  # noqa: E731
    sources = {seed(r): r for r in runs if r.params.get("init.source") in (None, "None")
               and r.params.get("model.state_size") in (None, "None")}
    cut = [r for r in runs if r.params.get("init.compressed.size") not in (None, "None")]
    scratch = [r for r in runs if r.params.get("init.source") in (None, "None")
               and r.params.get("model.state_size") not in (None, "None")]
    ess_sizes = {seed(r): int(r.params["init.compressed.size"]) for r in cut if r.params.get("init.size") and
                 r.tags.get("mlflow.runName", "").endswith("init.size=ess")}
    print(f"sources (state {16}, 1000 steps): " + ", ".join(
        f"seed {s}: accuracy {r.metrics['valid/accuracy']:.3f}, ESS/kv {r.metrics.get('ess/per_kv', float('nan')):.2f}"
        for s, r in sorted(sources.items())))
    print("size the ESS suggests (init.size=ess): " + ", ".join(f"seed {s}: {n}" for s, n in sorted(ess_sizes.items())))
    print()
    print("| kept state | seeds | energy kept (min) | cut, before tuning | cut + 200 steps | from scratch, 1200 steps "
          "| difference (cut - scratch) | 95% t-interval | higher / lower | sign-flip p |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    sizes = sorted({int(r.params["init.compressed.size"]) for r in cut}, reverse=True)
    for size in sizes:
        c = {seed(r): r for r in cut if int(r.params["init.compressed.size"]) == size
             and not r.tags.get("mlflow.runName", "").endswith("init.size=ess")}
        s = {seed(r): r for r in scratch if int(r.params["model.state_size"]) == size}
        both = sorted(set(c) & set(s))
        energy = min(float(c[k].params["init.compressed.energy_kept_min"]) for k in c) if c else float("nan")
        before = [accuracy_at(c[k], 0) for k in sorted(c)]
        after = [c[k].metrics["valid/accuracy"] for k in sorted(c)]
        fresh = [s[k].metrics["valid/accuracy"] for k in sorted(s)]
        mean = lambda xs: f"{statistics.mean(xs):.3f}" if xs else "-"  # noqa: E731
        if len(both) >= 2:
            t = paired_test([c[k].metrics["valid/accuracy"] - s[k].metrics["valid/accuracy"] for k in both])
            cells = [f"{t.mean_difference:+.3f}", f"[{t.interval[0]:+.3f}, {t.interval[1]:+.3f}]",
                     f"{t.higher} / {t.lower}", f"{t.permutation_p:.3f}"]
        else:
            cells = ["-"] * 4
        print(f"| {size} | {len(c)} | {energy:.3f} | {mean(before)} | {mean(after)} | {mean(fresh)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
