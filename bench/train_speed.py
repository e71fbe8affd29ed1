"""Training speed and the cost of ESS logging, measured side by side on this machine.

For the default config (ess-train's main job) and for model=sa / gla / s6 on MQAR at L=256:
training steps per second, the time of one ESS probe (the fixed probe batch, every layer) as a
ratio to one training step, and what ESS logging adds to a run at the default evaluation
frequency: probe / (eval_every x step).

Usage: python bench/train_speed.py [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from ess_reg.tasks import IGNORE
from ess_reg.harness.build import probe_settings, trainer_settings
from ess_reg.harness.app import compose_config
from ess_reg.harness.run_probe import RunProbe

L256 = ["task.seq_len=256", "task.vocab_size=512", "task.num_kv_pairs=16"]
SETUPS = {
    "default (gla, L=64)": [],
    "sa, L=256": ["model=sa", *L256],
    "gla, L=256": ["model=gla", *L256],
    "s6, L=256": ["model=s6", *L256],
}


def measure(overrides, steps: int) -> dict:
    cfg = compose_config(overrides)
    trainer, probe = trainer_settings(cfg.trainer), probe_settings(cfg.probe)
    torch.manual_seed(0)
    task, model = instantiate(cfg.task), instantiate(cfg.model)
    optimizer = instantiate(cfg.optimizer)(model.parameters())

    def step(i):
        batch = task.train_batch(trainer.batch_size, i)
        logits = model(batch.inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1), ignore_index=IGNORE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for i in range(3):
        step(i)  # warm-up
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(i + 3)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    run_probe = RunProbe(task, probe, seed=0)
    model.eval()
    run_probe.report(model)  # warm-up
    probes = []
    for _ in range(3):
        start = time.perf_counter()
        run_probe.report(model)
        probes.append(time.perf_counter() - start)
    probe_s = statistics.median(probes)
    return {"step_s": step_s, "probe_s": probe_s, "eval_every": trainer.eval_every}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per setup (median kept)")
    args = parser.parse_args()
    print(f"CPU: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"batch 64, d_model 64, 2 layers, probe: 4 examples x 17 indices")
    print(f"{'setup':<22} {'steps/s':>8} {'probe ms':>9} {'probe/step':>11} {'ESS logging overhead':>21}")
    for name, overrides in SETUPS.items():
        r = measure(overrides, args.steps)
        overhead = r["probe_s"] / (r["eval_every"] * r["step_s"])
        print(f"{name:<22} {1 / r['step_s']:>8.1f} {1e3 * r['probe_s']:>9.1f} {r['probe_s'] / r['step_s']:>10.2f}x "
              f"{100 * overhead:>17.1f}% (every {r['eval_every']} steps)")


if __name__ == "__main__":
    main()
