"""init_s6_deep: does ESS at initialization tell which s6 A-init trains fastest, in a regime s6
learns? (conf/experiment/init_s6_deep.yaml, where the tests were decided before running.)

Outcome: steps to 0.9 valid accuracy (the first evaluation at >= 0.9); a run that never gets
there ranks after every run that does, tied with the others that do not. Predictor: ESS/kv at
step 0. Two tests, Holm-corrected:

  R. over every run, Spearman's rho between ESS/kv at init and steps to 0.9, permutation p;
  W. within a scheme: the mean of the schemes' rhos, its p by permuting within each scheme
     (exact, every ordering).

Reported, not tested: the schemes by mean ESS/kv at init beside their mean steps, and per seed
the scheme select_init would pick (the highest ESS/kv at init) against the four schemes' mean.
Run from the folder the study ran in, or give its store:

    python docs/results/init/s6_deep.py [--tracking-uri sqlite:///runs/mlflow.db]

It prints the report and writes s6_deep.md beside itself.
"""

import argparse
import itertools
import math
import statistics
from collections import defaultdict
from pathlib import Path

from ess_reg.harness.comparison import steps_to
from ess_reg.harness.runsets import load_runs
from ess_reg.harness.stats import holm, spearman, spearman_permutation_p

TARGET = 0.9
SECONDARY = 0.5
SCHEMES = ("s4d_real", "s4d_lin", "constant", "uniform")


def fmt(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 or p != p else f"{p:.1e}"


def ranked_steps(step: int | None, cap: int) -> float:
    """Steps to the threshold as a rank key: a run that never reached it sorts after every run
    that did (cap + 1), tied with the others that did not."""
    return float(step) if step is not None else float(cap + 1)


def within_scheme_test(groups: list[tuple[list[float], list[float]]]) -> tuple[float, float, int]:
    """The mean within-group Spearman rho over the groups where it is defined, and its two-sided
    p over every ordering of y within each group (ties and undefined groups stay as they are)."""
    defined = [(x, y) for x, y in groups if not math.isnan(spearman(x, y))]
    if not defined:
        return math.nan, math.nan, 0
    observed = statistics.fmean(spearman(x, y) for x, y in defined)
    orderings = [[spearman(x, list(p)) for p in itertools.permutations(y)] for x, y in defined]
    hits = total = 0
    for combo in itertools.product(*orderings):
        total += 1
        hits += abs(statistics.fmean(combo)) >= abs(observed) - 1e-12
    return observed, hits / total, len(defined)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", default="init_s6_deep")
    args = parser.parse_args()

    runs = load_runs(args.tracking_uri, experiment=args.experiment)
    if not runs:
        raise SystemExit(f"no finished runs of experiment {args.experiment!r} in {args.tracking_uri}")
    cap = max(int(r.params["trainer.max_steps"]) for r in runs)
    rows = []
    for r in runs:
        history = r.history["valid/accuracy"]
        rows.append(dict(scheme=r.params["model.mixer_kwargs.a_init"], seed=int(r.params["seed"]),
                         ess=r.at_init["ess/per_kv"], to_target=steps_to(history, TARGET),
                         to_half=steps_to(history, SECONDARY), steps=r.steps, accuracy=r.metrics["valid/accuracy"]))
    rows.sort(key=lambda row: (SCHEMES.index(row["scheme"]) if row["scheme"] in SCHEMES else 99, row["seed"]))

    out = ["# ESS at initialization and s6's A-init in a regime it learns (init_s6_deep)", "",
           f"| scheme | seed | ESS/kv at init | steps to {SECONDARY} | steps to {TARGET} | steps run "
           "| accuracy at the end |",
           "|---|---|---|---|---|---|---|"]
    never = "never"
    for row in rows:
        out.append(f"| {row['scheme']} | {row['seed']} | {row['ess']:.3f} | {row['to_half'] or never} "
                   f"| {row['to_target'] or never} | {row['steps']} | {row['accuracy']:.3f} |")
    out += ["", f"Runs stop at the first evaluation at >= {TARGET} (trainer.stop.target) or at {cap} steps; "
            f"'never': not within the run (ranked after every run that got there).", ""]

    ess = [row["ess"] for row in rows]
    steps = [ranked_steps(row["to_target"], cap) for row in rows]
    rho_r, p_r = spearman(ess, steps), spearman_permutation_p(ess, steps)
    by_scheme = defaultdict(list)
    for row in rows:
        by_scheme[row["scheme"]].append(row)
    groups = [([row["ess"] for row in g], [ranked_steps(row["to_target"], cap) for row in g])
              for g in by_scheme.values()]
    rho_w, p_w, n_w = within_scheme_test(groups)
    adjusted = holm([p for p in (p_r, p_w) if p == p])
    out.append(f"- R, over the runs: Spearman's rho (ESS/kv at init, steps to {TARGET}) = {rho_r:+.2f} over "
               f"{len(rows)} runs, permutation p = {fmt(p_r)}")
    out.append(f"- W, within a scheme: mean rho = {rho_w:+.2f} over {n_w} schemes with a defined rho, "
               f"exact within-scheme permutation p = {fmt(p_w)}")
    out.append(f"- Holm-corrected (R, W): p = {', '.join(fmt(p) for p in adjusted)}")
    out += ["", f"| scheme | runs | mean ESS/kv at init | reached {TARGET} | mean steps to {TARGET} (runs that "
            "reached it) | mean accuracy at the end |",
            "|---|---|---|---|---|---|"]
    for scheme, g in sorted(by_scheme.items(), key=lambda kv: -statistics.fmean(r["ess"] for r in kv[1])):
        reached = [r["to_target"] for r in g if r["to_target"] is not None]
        mean_steps = f"{statistics.fmean(reached):.0f}" if reached else "-"
        out.append(f"| {scheme} | {len(g)} | {statistics.fmean(r['ess'] for r in g):.3f} | {len(reached)} of {len(g)} "
                   f"| {mean_steps} | {statistics.fmean(r['accuracy'] for r in g):.3f} |")
    out += ["", "Per seed, the scheme with the highest ESS/kv at init (what select_init over the schemes "
            "would pick):", ""]
    by_seed = defaultdict(list)
    for row in rows:
        by_seed[row["seed"]].append(row)
    for seed, g in sorted(by_seed.items()):
        pick = max(g, key=lambda r: r["ess"])
        mean_all = statistics.fmean(ranked_steps(r["to_target"], cap) for r in g)
        out.append(f"- seed {seed}: picks {pick['scheme']} (steps to {TARGET}: {pick['to_target'] or never}); "
                   f"the {len(g)} schemes' mean {mean_all:.0f} (a run that never got there counted as {cap + 1})")
    text = "\n".join(out) + "\n"
    print(text)
    (Path(__file__).parent / "s6_deep.md").write_text(text)


if __name__ == "__main__":
    main()
