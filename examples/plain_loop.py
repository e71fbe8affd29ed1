"""ESS in a training loop of your own: the penalty in the loss, ESS logged every k steps.

A two-layer gated linear attention from the zoo learns MQAR (generated, nothing downloaded) for
200 steps on the CPU, with an ESS penalty and an ESSMonitor writing to MLflow:

    python examples/plain_loop.py [--steps 200] [--tracking-uri sqlite:///runs/mlflow.db]
"""

import argparse

import mlflow
import torch
import torch.nn.functional as F

from ess_reg import ESSMonitor, ESSPenalty
from ess_reg.models.lm import LanguageModel
from ess_reg.tasks import IGNORE, MQAR


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    task = MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4)
    model = LanguageModel(task.vocab_size, 32, 2, "gla", {"num_heads": 2, "feature_dim": 8})
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    penalty = ESSPenalty(model, objective="maximize", schedule=0.01, indices="random", task=task)
    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("examples")
    with mlflow.start_run(run_name="plain loop"):
        every = max(1, args.steps // 4)  # four measurements over the run, and one at step 0
        monitor = ESSMonitor(model, task.test_set(8, seed=1).inputs, every=every, log=mlflow.log_metrics, task=task)
        for step in range(args.steps + 1):
            batch = task.train_batch(32, step)
            with penalty.capture():  # the forward you run anyway: the penalty reads its operators
                logits = model(batch.inputs)
            loss = F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE)
            total = loss + penalty.compute(step)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            penalty.after_step()
            mlflow.log_metric("train/loss", loss.item(), step=step)
            if monitor(step) is not None:
                print(f"step {step}: loss {loss.item():.3f}, ESS/reach {monitor.last['ess/util']:.3f}")
    print("verdict:", monitor.verdict.mode)
    return monitor


if __name__ == "__main__":
    main()
