"""What the ESS penalty costs per training step, measured side by side in one run.

For every mixer of the zoo on MQAR at L=256 (batch 64, d_model 64, 2 layers, CPU): the time of a
training step with ``penalty=ess_max`` as configured in conf/penalty/ess_max.yaml (8 random
indices per step, every layer, the first 8 examples of the batch, 16 random channels per layer:
``batch_limit``, ``channel_limit``) against the same step without it. Each side trains in its
own run, timed on its own: best (and median) of ``--steps`` steps after 2 warm-up steps. The
penalty's random indices change from step to step, so its steps vary more than the plain ones.
The GRU and the LSTM are left out: their operator is a Jacobian (``L d_model`` backward passes
with a graph kept for the penalty's gradient), not a per-step penalty at this size.

Usage: python bench/penalty_overhead.py [--steps 20] [--batch-limit 8] [--mixers gla s6 ...] [--threads N]
       BENCH_MIXERS=s6,gla python bench/penalty_overhead.py    # a subset (as --mixers)
"""

from __future__ import annotations

import argparse
import itertools
import os

import torch
from hydra.utils import instantiate

from common import Results, Timing, add_common_args, best_of, machine_line, setup
from ess_reg.harness.ess_train import compose_config
from ess_reg.harness.build import trainer_settings
from ess_reg.harness.step import TrainingStep
from ess_reg.models import MIXERS as ZOO
from train_speed import L256

SUMMARY = ("The time of a training step with the ESS penalty (penalty=ess_max) / the same step without it, "
           "for each mixer on MQAR at L=256 (batch 64, d_model 64, 2 layers).")
MIXERS = [m for m in ZOO if m not in ("gru", "lstm")]  # every mixer with an operator of its own
WARMUP_STEPS = 2


def step_time(mixer: str, with_penalty: bool, steps: int, batch_limit: int) -> Timing:
    cfg = compose_config([f"model={mixer}", *L256, "penalty=ess_max", f"penalty.budget.batch_limit={batch_limit}"])
    trainer = trainer_settings(cfg.trainer)
    torch.manual_seed(0)
    task, model = instantiate(cfg.task), instantiate(cfg.model)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    penalty = instantiate(cfg.penalty)(model, task=task) if with_penalty else None
    counter = itertools.count()
    train_step = TrainingStep(model, optimizer, grad_clip=trainer.grad_clip, regularizer=penalty)  # ess-train's step

    def step():
        batch = task.train_batch(trainer.batch_size, next(counter))
        train_step(batch.inputs, batch.labels, 1000)  # past any warm-up of the penalty's schedule

    return best_of(step, steps, warmup=WARMUP_STEPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each side (best is kept)")
    parser.add_argument("--batch-limit", type=int, default=8)
    only = os.environ.get("BENCH_MIXERS")
    parser.add_argument("--mixers", nargs="+", default=only.split(",") if only else MIXERS)
    add_common_args(parser)
    args = parser.parse_args()
    setup(args)
    results = Results("penalty_overhead", SUMMARY, {"steps": args.steps, "batch_limit": args.batch_limit,
                                                    "mixers": args.mixers})
    print(f"machine: {machine_line()}")
    results.describe(f"MQAR L=256, batch 64, penalty on {args.batch_limit} examples x 8 random indices x 16 channels "
          f"x every layer; best of {args.steps} steps after {WARMUP_STEPS} warm-up, each side in its own run")
    table = results.table(["mixer", "step ms", "with penalty ms", "ratio", "median ratio"],
                          key=["ratio"], widths=[6, 9, 16, 7, 13])
    for mixer in args.mixers:
        base = step_time(mixer, False, args.steps, args.batch_limit)
        with_penalty = step_time(mixer, True, args.steps, args.batch_limit)
        table.add(mixer, f"{1e3 * base.best:.1f}", f"{1e3 * with_penalty.best:.1f}",
                  f"{with_penalty.best / base.best:.2f}x", f"{with_penalty.median / base.median:.2f}x",
                  mixer=mixer, step_s=base.best, penalty_step_s=with_penalty.best,
                  step_median_s=base.median, penalty_step_median_s=with_penalty.median)
    results.write(args.json)


if __name__ == "__main__":
    main()
