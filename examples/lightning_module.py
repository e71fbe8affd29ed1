"""ESS in Lightning: a two-layer gated linear attention from the zoo learns MQAR (generated,
nothing downloaded) in a LightningModule with an ESS penalty in its training_step; ESSCallback
logs ESS at each validation through the Trainer's MLFlowLogger:

    python examples/lightning_module.py [--steps 100] [--tracking-uri sqlite:///runs/mlflow.db]
"""

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import MLFlowLogger

from ess_reg import ESSMonitor, ESSPenalty
from ess_reg.integrations.lightning import ESSCallback
from ess_reg.models.lm import LanguageModel
from ess_reg.tasks import IGNORE, MQAR


class Recall(L.LightningModule):
    def __init__(self, task):
        super().__init__()
        self.model = LanguageModel(task.vocab_size, 32, 2, "gla", {"num_heads": 2, "feature_dim": 8})
        self.penalty = ESSPenalty(self.model, objective="maximize", schedule=0.01, indices="random", task=task)

    def loss(self, logits, y):
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)

    def training_step(self, batch, batch_idx):
        x, y = batch
        with self.penalty.capture():  # the forward you run anyway: the penalty reads its operators
            logits = self.model(x)
        loss = self.loss(logits, y)
        self.log("train_loss", loss)
        return loss + self.penalty.compute(self.global_step)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(self.model(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def loader(task, n, seed, shuffle=False):
    data = task.test_set(n, seed=seed)
    return torch.utils.data.DataLoader(list(zip(data.inputs, data.labels)), batch_size=32, shuffle=shuffle)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    args = parser.parse_args(argv)
    L.seed_everything(0, verbose=False)
    task = MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4)
    module = Recall(task)
    callback = ESSCallback(ESSMonitor(module.model, task.test_set(8, seed=12).inputs, task=task),
                           penalty=module.penalty)
    trainer = L.Trainer(max_steps=args.steps, val_check_interval=args.steps // 2, accelerator="cpu",
                        logger=MLFlowLogger(experiment_name="examples", tracking_uri=args.tracking_uri),
                        callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, loader(task, 32 * args.steps, seed=10, shuffle=True), loader(task, 64, seed=11))
    print("ESS/reach at the last validation:", round(callback.monitor.last["ess/util"], 3),
          "verdict:", callback.monitor.verdict.mode)
    return callback


if __name__ == "__main__":
    main()
