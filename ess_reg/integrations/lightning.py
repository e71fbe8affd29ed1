"""ESS in Lightning: a ``Callback`` that logs ESS at each validation through the module's logger,
and steps a penalty's constraint multiplier once per optimizer step.

    from ess_reg import ESSMonitor, ESSPenalty
    from ess_reg.integrations.lightning import ESSCallback

    class Module(L.LightningModule):
        def __init__(self, model, task):
            super().__init__()
            self.model = model
            self.penalty = ESSPenalty(model, schedule=0.01, indices="random", task=task)

        def training_step(self, batch, batch_idx):
            x, y = batch
            with self.penalty.capture():              # the forward you run anyway
                logits = self.model(x)
            return task_loss(logits, y) + self.penalty.compute(self.global_step)

    trainer = L.Trainer(callbacks=[ESSCallback(ESSMonitor(model, probe_batch), penalty=module.penalty)])
"""

from __future__ import annotations

try:
    from lightning.pytorch import Callback
except ImportError as err:  # the lightning extra is what brings it
    raise ImportError("ess_reg.integrations.lightning needs Lightning: pip install 'ess-reg[lightning]'") from err

__all__ = ["ESSCallback"]


class ESSCallback(Callback):
    """``monitor`` (an :class:`ess_reg.ESSMonitor` built without ``log``) measured at the end of
    each validation (not the sanity check) and logged with ``LightningModule.log_dict``, so every
    logger of the Trainer receives it at the global step; ``penalty`` (optional): its
    ``after_step`` runs once per optimizer step, after the last accumulated batch."""

    def __init__(self, monitor=None, penalty=None):
        if monitor is None and penalty is None:
            raise ValueError("ESSCallback needs a monitor, a penalty or both")
        self.monitor, self.penalty = monitor, penalty

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.monitor is None or trainer.sanity_checking:
            return
        metrics = self.monitor.measure(trainer.global_step)
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.penalty is not None and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.penalty.after_step()
