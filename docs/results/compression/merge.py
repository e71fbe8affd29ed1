"""The merge_s4d study's table (conf/experiment/merge_s4d_sources.yaml and merge_s4d.yaml): on a
trained two-layer s4d (Compression at 16 tokens), does merging the state (init.method=merge, the
kept poles' residues refit to the whole operator) keep what dropping coordinates (keep) loses?

Primary outcome, decided before running: the accuracy at step 0 of the cut run, the compressed
model before any fine-tuning. The registered family, Holm-corrected over the sizes: merge - keep
at 4, 2 and 1, paired by seed, exact sign-flip test of the mean difference with a t-interval.
Secondary, not corrected: the same after the 100 fine-tuning steps; the entropy size k_E, and
whether the merge to k_E keeps step-0 accuracy within 0.05 of the source (exact sign test).
Sources below 0.8 accuracy are left out (counted). Run from the repository root:

    python docs/results/compression/merge.py [--tracking-uri sqlite:///runs/mlflow.db]

It prints the table and writes <experiment>.md beside itself (or into --out).
"""

import argparse
from pathlib import Path

from ess_reg.harness.runsets import load_runs
from arms import tests_table  # this folder's arms.py: the Holm-corrected table of paired tests
from ess_reg.harness.stats import paired_test, sign_test
from knee import entropy_rule  # this folder's knee.py: which cut took the entropy size

SIZES, METHODS = (4, 2, 1), ("keep", "merge")
HOLDS, COMPETENT = 0.05, 0.8


def at_start(run) -> float:
    """Valid accuracy at step 0: the compressed model before fine-tuning."""
    first = min(run.history["valid/accuracy"])
    if first[0] != 0:
        raise ValueError(f"run {run.run_id} has no evaluation at step 0 (first at {first[0]})")
    return first[1]


def at_end(run) -> float:
    return run.metrics["valid/accuracy"]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", default="merge_s4d")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="the folder <experiment>.md goes to")
    args = parser.parse_args(argv)
    runs = load_runs(args.tracking_uri, experiment=args.experiment)
    seed = lambda r: int(r.params["seed"])  # noqa: E731
    sources = {seed(r): r for r in runs if r.params.get("init.source") in (None, "None")}
    cuts: dict[int, dict] = {}
    for r in runs:
        if r.params.get("init.source") not in (None, "None"):
            size = "entropy" if entropy_rule(r) else int(r.params["init.compressed.size"])
            cuts.setdefault(seed(r), {})[(r.params["init.method"], size)] = r
    wanted = [(m, k) for k in (*SIZES, "entropy") for m in METHODS]
    lines = []
    say = lines.append
    say("Accuracy at step 0 (the cut model before fine-tuning), then after 100 steps:")
    say("")
    say("| seed | source | k_E | " + " | ".join(f"{m} to {k}" for m, k in wanted) + " |")
    say("|---" * (3 + len(wanted)) + "|")
    kept, left_out = [], []
    for s, source in sorted(sources.items()):
        got = cuts.get(s, {})
        if at_end(source) < COMPETENT or any(w not in got for w in wanted):
            left_out.append(f"seed {s} (accuracy {at_end(source):.3f}, {len(got)} of {len(wanted)} cuts)")
            continue
        kept.append(s)
        k_e = int(got[("merge", "entropy")].params["init.compressed.size"])
        say(f"| {s} | {at_end(source):.3f} | {k_e} | "
            + " | ".join(f"{at_start(got[w]):.3f} / {at_end(got[w]):.3f}" for w in wanted) + " |")
    say("")
    if left_out:
        say("Left out: " + "; ".join(left_out))
        say("")
    tests = []
    for when, measure in (("step 0", at_start), ("after 100 steps", at_end)):
        for k in SIZES:
            d = [measure(cuts[s][("merge", k)]) - measure(cuts[s][("keep", k)]) for s in kept]
            if len(d) > 1:
                tests.append((f"merge - keep at {k}, {when}", paired_test(d), when == "step 0"))
    lines += tests_table(tests, untested="(secondary)")
    if kept:
        holds = [at_end(sources[s]) - at_start(cuts[s][("merge", "entropy")]) <= HOLDS for s in kept]
        higher, _, _, p = sign_test([1.0 if h else -1.0 for h in holds])
        sizes = [int(cuts[s][("merge", "entropy")].params["init.compressed.size"]) for s in kept]
        say("")
        say(f"- Secondary: the merge to the entropy size (k_E {sorted(sizes)}) keeps step-0 accuracy within "
            f"{HOLDS} of the source on {higher} of {len(kept)} sources (exact sign test p = {p:.4f}).")
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.experiment}.md").write_text(
        f"# Merge or keep on a trained s4d ({args.experiment})\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
