"""What the ESS penalty costs per training step, measured side by side in one run.

For gla, s6 and sa on MQAR at L=256 (batch 64, d_model 64, 2 layers, CPU): the median time of a
training step with ``penalty=ess_max`` as configured in conf/penalty/ess_max.yaml (8 random
indices per step, every layer, the first 8 examples of the batch, 16 random channels per layer:
``batch_limit``, ``channel_limit``) against the same step without it.

Usage: python bench/penalty_overhead.py [--steps 20] [--batch-limit 8]
       BENCH_MIXERS=s6,gla python bench/penalty_overhead.py    # a subset
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
from train_speed import L256

MIXERS = ["gla", "s6", "sa"]
ONLY = os.environ.get("BENCH_MIXERS")


def step_time(mixer: str, with_penalty: bool, steps: int, batch_limit: int) -> float:
    cfg = compose_config([f"model={mixer}", *L256, "penalty=ess_max", f"penalty.budget.batch_limit={batch_limit}"])
    trainer = trainer_settings(cfg.trainer)
    torch.manual_seed(0)
    task, model = instantiate(cfg.task), instantiate(cfg.model)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    penalty = instantiate(cfg.penalty)(model, task=task) if with_penalty else None

    def step(i):
        batch = task.train_batch(trainer.batch_size, i)
        if penalty is not None:
            with penalty.capture():
                logits = model(batch.inputs)
        else:
            logits = model(batch.inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1), ignore_index=IGNORE)
        if penalty is not None:
            loss = loss + penalty.compute(1000)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for i in range(2):
        step(i)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(i + 2)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-limit", type=int, default=8)
    args = parser.parse_args()
    print(f"CPU: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; MQAR L=256, "
          f"batch 64, penalty on {args.batch_limit} examples x 8 random indices x 16 channels x every layer")
    print(f"{'mixer':<6} {'step ms':>9} {'with penalty ms':>16} {'ratio':>7}")
    for mixer in (ONLY.split(",") if ONLY else MIXERS):
        base = step_time(mixer, False, args.steps, args.batch_limit)
        with_penalty = step_time(mixer, True, args.steps, args.batch_limit)
        print(f"{mixer:<6} {1e3 * base:>9.1f} {1e3 * with_penalty:>16.1f} {with_penalty / base:>6.2f}x")


if __name__ == "__main__":
    main()
