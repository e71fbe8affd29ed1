"""The compression study's table (conf/experiment/compress_sources.yaml, compress.yaml): for each
kept state size, the source models cut to it (accuracy right after the cut and after 200 steps
of fine-tuning) against the same state trained from scratch for the same 1200 steps in all,
paired by seed. ess-report keeps runs of different budgets apart, so this pairing is written out
here. Run from the repository root:

    python docs/results/compression/compare.py [--tracking-uri sqlite:///runs/mlflow.db]

It prints the table and writes report.md and compression.png beside itself (or into --out).
"""

import argparse
import statistics
from pathlib import Path

from ess_reg.harness.runsets import load_runs
from ess_reg.harness.stats import paired_test

UNSET = (None, "None")
SOURCE_STATE = 16


def accuracy_at(run, step):
    return dict(run.history.get("valid/accuracy") or []).get(step)


def seed(run) -> int:
    return int(run.params["seed"])


def pairs(run) -> int:
    return int(run.params["task.num_kv_pairs"])


def by_ess_rule(run) -> bool:
    """A cut to the size the tolerance-ESS suggests (init.size=ess), not to a grid size."""
    return "init.size=ess" in run.tags.get("overrides", "")


def split(runs):
    """The study's three kinds of run: sources (full state, no init), cuts, and small states from scratch."""
    sources = {seed(r): r for r in runs if r.params.get("init.source") in UNSET
               and r.params.get("model.state_size") in UNSET}
    cut = [r for r in runs if r.params.get("init.compressed.size") not in UNSET]
    scratch = [r for r in runs if r.params.get("init.source") in UNSET
               and r.params.get("model.state_size") not in UNSET]
    return sources, cut, scratch


def analyse(runs):
    """The report's lines, and per kept size the accuracies (before tuning, after, from scratch)."""
    sources, cut, scratch = split(runs)
    ess_cut = {seed(r): r for r in cut if by_ess_rule(r)}
    ess_sizes = {s: int(r.params["init.compressed.size"]) for s, r in ess_cut.items()}
    lines = []
    say = lines.append
    say(f"sources (state {SOURCE_STATE}, 1000 steps): " + ", ".join(
        f"seed {s}: accuracy {r.metrics['valid/accuracy']:.3f}, ESS/kv {r.metrics.get('ess/per_kv', float('nan')):.2f}"
        for s, r in sorted(sources.items())))
    say("sources' entropy-ESS per head at the end of the context (ESS/kv x pairs): " + ", ".join(
        f"seed {s}: {r.metrics['ess/per_kv'] * pairs(r):.2f}" for s, r in sorted(sources.items())))
    say("size the ESS suggests (init.size=ess), and those runs' accuracy right after the cut / after 200 steps: "
        + ", ".join(f"seed {s}: {n} ({accuracy_at(ess_cut[s], 0):.3f} / {ess_cut[s].metrics['valid/accuracy']:.3f})"
                    for s, n in sorted(ess_sizes.items())))
    say("")
    say("| kept state | seeds | energy kept (min) | cut, before tuning | cut + 200 steps | from scratch, 1200 steps "
        "| difference (cut - scratch) | 95% t-interval | higher / lower | sign-flip p |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    curve = []
    grid = [r for r in cut if not by_ess_rule(r)]
    for size in sorted({int(r.params["init.compressed.size"]) for r in grid}, reverse=True):
        c = {seed(r): r for r in grid if int(r.params["init.compressed.size"]) == size}
        s = {seed(r): r for r in scratch if int(r.params["model.state_size"]) == size}
        both = sorted(set(c) & set(s))
        energy = min(float(c[k].params["init.compressed.energy_kept_min"]) for k in c)
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
        curve.append((size, before, after, fresh))
        say(f"| {size} | {len(c)} | {energy:.3f} | {mean(before)} | {mean(after)} | {mean(fresh)} | "
            + " | ".join(cells) + " |")
    return lines, curve, sources, ess_sizes


def plot(path: Path, curve, sources, ess_sizes) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for k, (label, marker) in enumerate((("cut, before tuning", "v"), ("cut + 200 steps", "o"),
                                         ("from scratch, 1200 steps", "s"))):
        xs = [size for size, *arms in curve for _ in arms[k]]
        ys = [v for size, *arms in curve for v in arms[k]]
        ax.scatter(xs, ys, marker=marker, alpha=0.6, label=label)
    for n, (s, r) in enumerate(sorted(sources.items())):
        ax.scatter([SOURCE_STATE], [r.metrics["valid/accuracy"]], marker="*", color="k",
                   label=f"source ({SOURCE_STATE})" if n == 0 else None)
    for n, size in enumerate(sorted(set(ess_sizes.values()))):
        ax.axvline(size, color="grey", ls=":", lw=1, label="largest tolerance-ESS (init.size=ess)" if n == 0 else None)
    entropy = statistics.mean(r.metrics["ess/per_kv"] * pairs(r) for r in sources.values())
    ax.axvline(entropy, color="tab:red", ls="--", lw=1, label=f"entropy-ESS at context end ({entropy:.1f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
    ax.set_ylim(0, 1)
    ax.set_xlabel("state kept per head")
    ax.set_ylabel("valid accuracy")
    ax.set_title(f"gla on MQAR, {len(sources)} sources", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--experiment", default="compress")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="folder for report.md and the plot")
    args = parser.parse_args(argv)
    lines, curve, sources, ess_sizes = analyse(load_runs(args.tracking_uri, experiment=args.experiment))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text("# The compression study\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(args.out / "compression.png", curve, sources, ess_sizes)


if __name__ == "__main__":
    main()
