"""ESS in a Hugging Face Trainer: a tiny randomly initialised Llama (eager attention) learns MQAR
(generated, nothing downloaded) with an ESS penalty in its loss and ESS in its evaluation logs,
which the Trainer reports to MLflow beside eval_loss:

    python examples/hf_trainer.py [--steps 60] [--tracking-uri sqlite:///runs/mlflow.db]
"""

import argparse
import os
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from ess_reg import ESSMonitor, ESSPenalty
from ess_reg.integrations.hf_trainer import ESSTrainer
from ess_reg.tasks import IGNORE, MQAR


def examples(task, n, seed):
    """MQAR as causal-LM examples: the Trainer's model shifts labels by one, so each answer is
    placed one position later than the task puts it."""
    data = task.test_set(n, seed=seed)
    labels = torch.cat([torch.full_like(data.labels[:, :1], IGNORE), data.labels[:, :-1]], dim=1)
    return [{"input_ids": x, "labels": y} for x, y in zip(data.inputs, labels)]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_TRACKING_URI", args.tracking_uri)
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "examples")
    torch.manual_seed(0)
    task = MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4)
    config = LlamaConfig(vocab_size=task.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=task.seq_len)
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = "eager"  # the probe reads the attention probabilities
    with tempfile.TemporaryDirectory() as out:
        trainer = ESSTrainer(
            model=model,
            args=TrainingArguments(output_dir=out, max_steps=args.steps, per_device_train_batch_size=16,
                                   learning_rate=3e-3, eval_strategy="steps", eval_steps=args.steps // 2,
                                   logging_steps=10, save_strategy="no", report_to=["mlflow"], use_cpu=True,
                                   disable_tqdm=True),
            train_dataset=examples(task, 16 * args.steps, seed=10), eval_dataset=examples(task, 64, seed=11),
            ess_penalty=ESSPenalty(model, schedule=0.01, indices="random", task=task),
            ess_monitor=ESSMonitor(model, task.test_set(8, seed=12).inputs, task=task),
        )
        trainer.train()
    print("ESS/reach at the last evaluation:", round(trainer.ess_monitor.last["ess/util"], 3),
          "verdict:", trainer.ess_monitor.verdict.mode)
    return trainer


if __name__ == "__main__":
    main()
