"""The compress_arms studies' tables (conf/experiment/compress_arms.yaml, compress_arms_sizes.yaml):
compress_confirm*.yaml): a small state at 16 pairs made different ways, paired by seed, 1200
steps of training in all:

  cut:     a source (state 16, 1000 steps) cut to the size and fine-tuned 200 steps;
  scratch: the small state from scratch;
  distill: (compress_arms only) the small state trained on the source's outputs.

Primary outcome: the accuracy at the end, compared by the exact paired sign-flip test of the mean
difference with a t-interval. The registered family, Holm-corrected: compress_arms, cut - scratch
and distill - scratch at state 8 (cut - distill reported, not tested); compress_arms_sizes,
cut - scratch at each size; compress_confirm, the same on fresh seeds. Pairs whose source is below
0.8 accuracy are left out. Each arm's lowest accuracy and spread are shown beside the tests (not
tested). The sources and cuts live in the knee_load experiment (compress_confirm_cuts for
compress_confirm), the others in the study's (possibly two stores):

    python docs/results/compression/arms.py [--tracking-uri URI] [--cut-tracking-uri URI]
    python docs/results/compression/arms.py --experiment compress_arms_sizes --sizes 6,4
    python docs/results/compression/arms.py --experiment compress_confirm \
        --cut-experiment compress_confirm_cuts --sizes 6,4

It prints the table and writes arms.md (arms_sizes.md, confirm.md) beside itself (or into --out).
"""

import argparse
from pathlib import Path

from ess_reg.harness.runsets import load_runs
from ess_reg.harness.stats import holm, mean_spread, paired_test, sampled_sign_flip_note
from knee import entropy_rule  # this folder's knee.py: which cut took the entropy size

PAIRS, COMPETENT = 16, 0.8
UNSET = (None, "None")


def accuracy(run) -> float:
    return run.metrics["valid/accuracy"]


def tests_table(tests: list, untested: str = "(not tested)") -> list[str]:
    """Markdown rows for ``(name, PairedTest, in the family)`` triples; Holm's correction runs
    over the family alone, the others are shown with ``untested`` in its column (or with the
    third element itself where it is a string: a test corrected in a family printed elsewhere)."""
    adjusted = iter(holm([t.permutation_p for _, t, tested in tests if tested is True]))
    rows = ["| comparison | n | mean difference | 95% t-interval | higher / lower / tied | sign-flip p | Holm p |",
            "|---|---|---|---|---|---|---|"]
    for name, t, tested in tests:
        rows.append(f"| {name} | {t.n} | {t.mean_difference:+.3f} | [{t.interval[0]:+.3f}, {t.interval[1]:+.3f}] | "
                    f"{t.higher} / {t.lower} / {t.ties} | {t.permutation_p:.4f} | "
                    + (f"{next(adjusted):.4f}" if tested is True else tested or untested) + " |")
    if not all(t.exact for _, t, _ in tests):
        rows += ["", sampled_sign_flip_note()]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--cut-tracking-uri", default=None, help="the knee_load store (default: the same)")
    parser.add_argument("--experiment", default="compress_arms")
    parser.add_argument("--cut-experiment", default="knee_load", help="where the sources and cuts are logged")
    parser.add_argument("--sizes", default="8", help="the small states compared, e.g. 6,4")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="the folder the table goes to")
    args = parser.parse_args(argv)
    sizes = [int(k) for k in args.sizes.split(",")]
    seed = lambda r: int(r.params["seed"])  # noqa: E731
    knee = [r for r in load_runs(args.cut_tracking_uri or args.tracking_uri, experiment=args.cut_experiment)
            if int(r.params["task.num_kv_pairs"]) == PAIRS]
    sources = {seed(r): r for r in knee if r.params.get("init.source") in UNSET}
    study = load_runs(args.tracking_uri, experiment=args.experiment)
    arms: dict[int, dict[str, dict[int, object]]] = {}
    for size in sizes:
        arms[size] = {
            "cut": {seed(r): r for r in knee if r.params.get("init.source") not in UNSET and not entropy_rule(r)
                    and int(r.params["init.compressed.size"]) == size},
            "scratch": {seed(r): r for r in study if r.params.get("distill.teacher") in UNSET
                        and int(r.params["model.state_size"]) == size},
            "distill": {seed(r): r for r in study if r.params.get("distill.teacher") not in UNSET
                        and int(r.params["model.state_size"]) == size},
        }
    lines = []
    say = lines.append
    tests, left_out = [], set()
    for size, made in arms.items():
        names = [name for name in ("cut", "scratch", "distill") if made[name]]
        seeds = sorted(set(sources).intersection(*(made[name] for name in names)))
        left_out |= {s for s in seeds if accuracy(sources[s]) < COMPETENT}
        seeds = [s for s in seeds if accuracy(sources[s]) >= COMPETENT]
        say(f"State {size}, {PAIRS} pairs:")
        say("")
        say("| seed | source (state 16) | " + " | ".join(
            {"cut": f"cut to {size} + 200 steps", "scratch": "scratch, 1200 steps",
             "distill": "distilled, 1200 steps"}[name] for name in names) + " |")
        say("|---" * (2 + len(names)) + "|")
        for s in seeds:
            say(f"| {s} | {accuracy(sources[s]):.3f} | "
                + " | ".join(f"{accuracy(made[name][s]):.3f}" for name in names) + " |")
        say("")
        if len(seeds) > 1:  # is one arm the more reliable? shown, not tested
            say("Each arm over these seeds: " + "; ".join(
                f"{name} lowest {min(accuracy(made[name][s]) for s in seeds):.3f}, standard deviation "
                f"{mean_spread([accuracy(made[name][s]) for s in seeds])[1]:.3f}" for name in names) + ".")
            say("")
        for treated, base, tested in (("cut", "scratch", True), ("distill", "scratch", True),
                                      ("cut", "distill", False)):
            if made[treated] and made[base] and len(seeds) > 1:
                test = paired_test([accuracy(made[treated][s]) - accuracy(made[base][s]) for s in seeds])
                tests.append((f"{treated} - {base} at {size}", test, tested))
    if left_out:
        say(f"Left out (source below {COMPETENT}): seeds {sorted(left_out)}")
        say("")
    lines += tests_table(tests)
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / (args.experiment.replace("compress_", "") + ".md")
    out.write_text(f"# A small state made different ways ({args.experiment})\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
