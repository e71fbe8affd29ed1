"""The collapse_deep survey's counts (conf/experiment/collapse_deep.yaml), as decided before
running: a run's state is "collapsed" at an evaluation when every layer's utilization is at most
0.25 there (the verdict's collapse or near collapse); per mixer, the runs collapsed at the end,
and the runs collapsed at some evaluation before step 600 that are not at the end (a collapse
that passed). Run from the folder the study ran in (or give its store):

    python docs/results/collapse_deep/survey.py [--tracking-uri sqlite:///runs/mlflow.db] [--out DIR]

It prints the table and writes survey.md into --out (default: beside itself).
"""

import argparse
from pathlib import Path

from ess_reg.harness import tracking
from ess_reg.harness.runsets import load_runs

COLLAPSED = 0.25  # every layer at or below it: collapse or near collapse (the verdict's thresholds)
EARLY = 600


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", default="collapse-deep")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args()
    runs = load_runs(args.tracking_uri, experiment=args.experiment, with_history=False)
    lines = ["| mixer | seed | accuracy | verdict | utilization per layer at the end | collapsed at (steps) |",
             "|---|---|---|---|---|---|"]
    counts = {}
    for r in sorted(runs, key=lambda r: (r.mixer, int(r.params["seed"]))):
        layers = sorted({k.split("/")[0] for k in r.metrics if k.startswith("L") and k.endswith("/util")})
        curves = {k: dict(tracking.metric_history(args.tracking_uri, r.run_id, f"{k}/util")) for k in layers}
        steps = sorted(set.intersection(*(set(c) for c in curves.values())))
        collapsed = [s for s in steps if all(curves[k][s] <= COLLAPSED for k in layers)]
        end = steps[-1]
        at_end = end in collapsed
        passed = any(s < EARLY for s in collapsed) and not at_end
        c = counts.setdefault(r.mixer, [0, 0, 0])
        c[0], c[1], c[2] = c[0] + 1, c[1] + at_end, c[2] + passed
        util = ", ".join(f"{curves[k][end]:.2f}" for k in layers)
        lines.append(f"| {r.mixer} | {r.params['seed']} | {r.metrics.get('valid/accuracy', float('nan')):.3f} | "
                     f"{r.tags.get('verdict', '?')} | {util} | {', '.join(map(str, collapsed)) or '-'} |")
    lines += ["", "| mixer | runs | collapsed at the end | collapsed before step 600, not at the end |",
              "|---|---|---|---|"]
    lines += [f"| {m} | {n} | {end} | {passed} |" for m, (n, end, passed) in sorted(counts.items())]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "survey.md").write_text("# collapse_deep: the survey's table\n\n" + text)


if __name__ == "__main__":
    main()
