"""ESS in Lightning: the callback logs ESS at each validation into a real MLflow store (Lightning's
MLFlowLogger), and the penalty's gradient reaches the layers through a training_step."""

import pytest
import torch

L = pytest.importorskip("lightning")
pytest.importorskip("mlflow")

from lightning.pytorch.loggers import MLFlowLogger  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from ess_reg import Constraint, ESSMonitor, ESSPenalty  # noqa: E402
from ess_reg.integrations.lightning import ESSCallback  # noqa: E402
from ess_reg.tasks import MQAR  # noqa: E402

from factories import lm  # noqa: E402

TASK = MQAR(vocab_size=32, seq_len=24, num_kv_pairs=2)


class Module(L.LightningModule):
    def __init__(self, objective):
        super().__init__()
        self.model = lm("gla")
        self.penalty = ESSPenalty(self.model, objective=objective, schedule=1.0, indices=[6, 12, 18], task=TASK)

    def training_step(self, batch, batch_idx):
        x, y = batch
        with self.penalty.capture():
            logits = self.model(x)
        task_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        return task_loss + self.penalty.compute(self.global_step)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.model(x).flatten(0, 1), y.flatten(),
                                                              ignore_index=-100))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n, seed):
    data = TASK.test_set(n, seed=seed)
    return torch.utils.data.DataLoader(list(zip(data.inputs, data.labels)), batch_size=4)


def trainer(tmp_path, callback, **kw):
    return L.Trainer(max_steps=4, accelerator="cpu", enable_progress_bar=False, enable_checkpointing=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[callback],
                     num_sanity_val_steps=0, **kw)


def test_the_callback_logs_ess_at_each_validation_into_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    module = Module("maximize")
    logger = MLFlowLogger(experiment_name="lightning", tracking_uri=uri)
    callback = ESSCallback(ESSMonitor(module.model, TASK.test_set(4, seed=9).inputs, task=TASK), penalty=module.penalty)
    trainer(tmp_path, callback, logger=logger, val_check_interval=2, limit_val_batches=1).fit(
        module, loader(16, 1), loader(4, 2))
    history = MlflowClient(uri).get_metric_history(logger.run_id, "ess/util")
    assert [m.step for m in history] == [1, 3]  # Lightning logs epoch-end values at the last finished step
    assert history[-1].value == pytest.approx(callback.monitor.last["ess/util"])


def test_a_constraint_multiplier_moves_once_per_optimizer_step(tmp_path):
    module = Module(Constraint(0.99, dual_lr=1.0))  # a floor the untrained model does not meet
    constraint, steps = module.penalty.objective, []
    step = constraint.step
    constraint.step = lambda: steps.append(1) or step()
    trainer(tmp_path, ESSCallback(penalty=module.penalty), logger=False, limit_val_batches=0,
            accumulate_grad_batches=2).fit(module, loader(32, 1))
    # 4 optimizer steps of 2 accumulated batches each: the multiplier moved 4 times, not 8.
    assert len(steps) == 4 and constraint.multiplier > 0


def test_the_callback_needs_something_to_do():
    with pytest.raises(ValueError, match="needs a monitor, a penalty or both"):
        ESSCallback()
