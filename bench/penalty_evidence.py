"""Evidence for ESS as training signal, on CPU scale; every run is logged to MLflow (runs/).

1. Regularizers against state collapse: gla with a small state on a harder MQAR setting,
   ``penalty=none | decay_identity | ess_max`` over several seeds: final ESS/reach, ESS/kv and
   accuracy, mean +- spread (sample standard deviation).
2. Init search: K candidate initializations of gla (seeds x gate normalizers), each scored by
   ESS/reach at init, then trained for the same short budget: the Spearman correlation between the
   ESS score at init and the final accuracy.

A study (tens of minutes), not a benchmark: bench/report.py runs it only with ``--only penalty_evidence``.

Usage: python bench/penalty_evidence.py [--seeds 3] [--steps 800] [--init-steps 400] [--part 1|2|all]
       [--penalties none decay_identity ess_max ess_max:0.01 ...] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics

from hydra.utils import instantiate

from common import Results, add_common_args, machine_line, setup
from ess_reg.harness.app import compose_config, run
from ess_reg.indices import EvenIndices
from ess_reg.init_search import select_init

SUMMARY = ("ESS as training signal: final accuracy and ESS of gla with a small state under each regularizer "
           "(mean +- sample standard deviation over seeds), and the rank correlation between the ESS score "
           "of an initialization and the accuracy it trains to.")

HARD = ["model=gla", "model.mixer_kwargs.feature_dim=8", "task.num_kv_pairs=12", "task.seq_len=64",
        "task.vocab_size=256", "tracking.experiment=penalty-evidence", "trainer.progress=false"]


def mean_spread(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def layer_means(result):
    reports = result.reports.values()
    return (sum(r.utilization for r in reports) / len(reports),
            sum(r.ess_per_item for r in reports) / len(reports))


def regularizers(results: Results, seeds: int, steps: int, penalties: list[str], threads: int) -> None:
    table = results.table(["penalty", "accuracy", "ESS/reach", "ESS/kv"], key=["accuracy", "ESS/reach"],
                          title=f"gla, feature_dim 8 (TSS 8 per value channel), MQAR kv=12, L=64, V=256, "
                                f"{steps} steps, {seeds} seeds", widths=[20, 16, 16, 16])
    for spec in penalties:
        penalty, _, weight = spec.partition(":")  # e.g. "ess_max:0.01" sets penalty.schedule.weight
        extra = [f"penalty.schedule.weight={weight}"] if weight else []
        acc, util, per_kv = [], [], []
        for seed in range(seeds):
            cfg = compose_config([*HARD, f"penalty={penalty}", *extra, f"seed={seed}", f"trainer.max_steps={steps}",
                                  f"trainer.threads={threads}"])
            result = run(cfg)
            u, k = layer_means(result)
            acc.append(result.metrics["valid/accuracy"]), util.append(u), per_kv.append(k)
        cells = [f"{m:.3f} +- {s:.3f}" for m, s in (mean_spread(acc), mean_spread(util), mean_spread(per_kv))]
        table.add(spec, *cells, penalty=spec, accuracy=acc, ess_per_reach=util, ess_per_kv=per_kv)


def spearman(a, b) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def init_search(results: Results, steps: int, threads: int) -> None:
    normalizers = [1, 4, 16, 64]
    candidates = [{"seed": s, "gate_normalizer": g} for s in (0, 1) for g in normalizers]
    base = compose_config([*HARD, f"trainer.max_steps={steps}"])
    task = instantiate(base.task)
    inputs = task.test_set(4).inputs

    def factory(c):
        return instantiate(base.model, mixer_kwargs={"num_heads": 2, "feature_dim": 8, "gate_normalizer": c["gate_normalizer"]})

    search = select_init(factory, candidates, inputs, indices=EvenIndices(16),
                         context_end=task.context_end, items_to_recall=task.items_to_recall)
    accuracies = []
    for c in candidates:
        cfg = compose_config([*HARD, f"trainer.max_steps={steps}", f"seed={c['seed']}", f"trainer.threads={threads}",
                              f"model.mixer_kwargs.gate_normalizer={c['gate_normalizer']}"])
        accuracies.append(run(cfg).accuracy)
    table = results.table(["candidate", "ESS/reach at init", "final accuracy"],
                          title=f"init search: K={len(candidates)} gla candidates (seed x gate_normalizer), "
                                f"{steps} steps each", widths=[36, 17, 15])
    for c, s, a in zip(candidates, search.scores, accuracies):
        table.add(str(c), f"{s:.3f}", f"{a:.3f}", candidate=c, score=s, accuracy=a)
    results.note(f"Spearman(ESS/reach at init, final accuracy) = {spearman(search.scores, accuracies):.2f}; "
                 f"select_init chose {search.candidate}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--init-steps", type=int, default=400)
    parser.add_argument("--part", choices=["1", "2", "all"], default="all")
    parser.add_argument("--penalties", nargs="+", default=["none", "decay_identity", "ess_max", "ess_max:0.01",
                                                           "ess_max:0.001"],
                        help="penalty configs, optionally with a weight: name[:weight]")
    add_common_args(parser)
    args = parser.parse_args()
    setup(args)
    results = Results("penalty_evidence", SUMMARY, {"seeds": args.seeds, "steps": args.steps,
                                                    "init_steps": args.init_steps, "part": args.part,
                                                    "penalties": args.penalties})
    print(f"machine: {machine_line()}")
    if args.part in ("1", "all"):
        regularizers(results, args.seeds, args.steps, args.penalties, args.threads)
    if args.part in ("2", "all"):
        init_search(results, args.init_steps, args.threads)
    results.write(args.json)


if __name__ == "__main__":
    main()
