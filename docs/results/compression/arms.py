"""The compress_arms study's table (conf/experiment/compress_arms.yaml): a state of 8 at 16 pairs
three ways, paired by seed, 1200 steps of training in all for each:

  cut:     a knee_load source (state 16, 1000 steps) cut to 8 and fine-tuned 200 steps;
  scratch: state 8 from scratch;
  distill: state 8 trained on the source's outputs.

Primary outcome: the accuracy at the end; cut - scratch and distill - scratch, each by the exact
paired sign-flip test of the mean difference with a t-interval, Holm-corrected over the two;
cut - distill reported, not tested. Pairs whose source is below 0.8 accuracy are left out. The
cut runs live in the knee_load experiment, the others in compress_arms (possibly two stores):

    python docs/results/compression/arms.py [--tracking-uri URI] [--cut-tracking-uri URI]

It prints the table and writes arms.md beside itself.
"""

import argparse
from pathlib import Path

from ess_reg.harness.runsets import load_runs
from ess_reg.harness.stats import holm, paired_test
from knee import entropy_rule  # this folder's knee.py: which cut took the entropy size

PAIRS, SIZE, COMPETENT = 16, 8, 0.8


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--cut-tracking-uri", default=None, help="the knee_load store (default: the same)")
    args = parser.parse_args()
    seed = lambda r: int(r.params["seed"])  # noqa: E731
    unset = (None, "None")
    knee = [r for r in load_runs(args.cut_tracking_uri or args.tracking_uri, experiment="knee_load")
            if int(r.params["task.num_kv_pairs"]) == PAIRS]
    sources = {seed(r): r for r in knee if r.params.get("init.source") in unset}
    cut = {seed(r): r for r in knee if r.params.get("init.source") not in unset
           and not entropy_rule(r)
           and int(r.params["init.compressed.size"]) == SIZE}
    arms = load_runs(args.tracking_uri, experiment="compress_arms")
    scratch = {seed(r): r for r in arms if r.params.get("distill.teacher") in unset}
    distill = {seed(r): r for r in arms if r.params.get("distill.teacher") not in unset}
    acc = lambda r: r.metrics["valid/accuracy"]  # noqa: E731
    seeds = sorted(set(sources) & set(cut) & set(scratch) & set(distill))
    left_out = [s for s in seeds if acc(sources[s]) < COMPETENT]
    seeds = [s for s in seeds if s not in left_out]
    lines = []
    say = lines.append
    say(f"| seed | source (state 16) | cut to {SIZE} + 200 steps | scratch, 1200 steps | distilled, 1200 steps |")
    say("|---|---|---|---|---|")
    for s in seeds:
        say(f"| {s} | {acc(sources[s]):.3f} | {acc(cut[s]):.3f} | {acc(scratch[s]):.3f} | {acc(distill[s]):.3f} |")
    say("")
    if left_out:
        say(f"Left out (source below {COMPETENT}): seeds {left_out}")
    tests = {}
    for name, arm in (("cut - scratch", cut), ("distill - scratch", distill), ("cut - distill", cut)):
        base = distill if name == "cut - distill" else scratch
        tests[name] = paired_test([acc(arm[s]) - acc(base[s]) for s in seeds]) if len(seeds) > 1 else None
    adjusted = holm([t.permutation_p if t else float("nan") for t in list(tests.values())[:2]]) + [float("nan")]
    say("| comparison | n | mean difference | 95% t-interval | higher / lower / tied | sign-flip p | Holm p |")
    say("|---|---|---|---|---|---|---|")
    for (name, t), p_holm in zip(tests.items(), adjusted):
        if t is None:
            continue
        say(f"| {name} | {t.n} | {t.mean_difference:+.3f} | [{t.interval[0]:+.3f}, {t.interval[1]:+.3f}] | "
            f"{t.higher} / {t.lower} / {t.ties} | {t.permutation_p:.4f} | "
            + ("(not tested)" if name == "cut - distill" else f"{p_holm:.4f}") + " |")
    text = "\n".join(lines)
    (Path(__file__).parent / "arms.md").write_text("# A small state three ways (compress_arms)\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
