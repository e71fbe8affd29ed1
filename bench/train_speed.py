"""Training speed and the cost of ESS logging, measured side by side on this machine.

For the default config (ess-train's main job) and for model=sa / gla / s6 on MQAR at L=256:
training steps per second (best of ``--steps`` timed steps after 3 warm-up steps), the time of
one ESS probe (the fixed probe batch, every layer; best of ``--probes`` after a warm-up) as a
ratio to one training step, and what ESS logging adds to a run at the default evaluation
frequency: probe / (eval_every x step). Steps and probes are timed apart, each on its own.

Usage: python bench/train_speed.py [--steps 30] [--probes 3] [--setups default sa gla s6] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools

import torch
from hydra.utils import instantiate

from common import Results, add_common_args, best_of, machine_line, setup
from ess_reg.harness.ess_train import compose_config
from ess_reg.harness.build import probe_settings, trainer_settings
from ess_reg.harness.run_probe import RunProbe
from ess_reg.harness.step import TrainingStep

SUMMARY = ("Training steps per second of ess-train's default job and of sa / gla / s6 on MQAR at L=256, "
           "and the time of one ESS probe / one training step (what ESS logging adds to a run).")
L256 = ["task.seq_len=256", "task.vocab_size=512", "task.num_kv_pairs=16"]
SETUPS = {  # key: (label, overrides)
    "default": ("default (gla, L=64)", []),
    "sa": ("sa, L=256", ["model=sa", *L256]),
    "gla": ("gla, L=256", ["model=gla", *L256]),
    "s6": ("s6, L=256", ["model=s6", *L256]),
}
WARMUP_STEPS = 3


def measure(overrides, steps: int, probes: int) -> dict:
    cfg = compose_config(overrides)
    trainer, probe = trainer_settings(cfg.trainer), probe_settings(cfg.probe)
    torch.manual_seed(0)
    task, model = instantiate(cfg.task), instantiate(cfg.model)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    counter = itertools.count()
    train_step = TrainingStep(model, optimizer, grad_clip=trainer.grad_clip)  # ess-train's step

    def step():
        i = next(counter)
        batch = task.train_batch(trainer.batch_size, i)
        train_step(batch.inputs, batch.labels, i)

    step_s = best_of(step, steps, warmup=WARMUP_STEPS).best
    run_probe = RunProbe(task, probe, seed=0)
    model.eval()
    probe_s = best_of(lambda: run_probe.report(model), probes, warmup=1).best
    return {"step_s": step_s, "probe_s": probe_s, "eval_every": trainer.eval_every}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per setup (best is kept)")
    parser.add_argument("--probes", type=int, default=3, help="timed probes per setup (best is kept)")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    add_common_args(parser)
    args = parser.parse_args()
    setup(args)
    results = Results("train_speed", SUMMARY, {"steps": args.steps, "probes": args.probes, "setups": args.setups})
    print(f"machine: {machine_line()}")
    results.describe(f"batch 64, d_model 64, 2 layers, probe: 4 examples x 17 indices; steps best of {args.steps} "
          f"after {WARMUP_STEPS} warm-up, probes best of {args.probes} after 1")
    table = results.table(["setup", "steps/s", "probe ms", "probe/step", "ESS logging overhead"],
                          key=["probe/step", "ESS logging overhead"], widths=[22, 8, 9, 11, 22])
    for key in args.setups:
        name, overrides = SETUPS[key]
        r = measure(overrides, args.steps, args.probes)
        overhead = r["probe_s"] / (r["eval_every"] * r["step_s"])
        table.add(name, f"{1 / r['step_s']:.1f}", f"{1e3 * r['probe_s']:.1f}", f"{r['probe_s'] / r['step_s']:.2f}x",
                  f"{100 * overhead:.1f}% (every {r['eval_every']} steps)", setup=key, overhead=overhead, **r)
    results.write(args.json)


if __name__ == "__main__":
    main()
