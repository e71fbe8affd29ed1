"""ESS in a Hugging Face ``Trainer``: the penalty in its training loss, and ESS in its
evaluation logs, which reach MLflow, TensorBoard or W&B through the Trainer's own reporting.

    from ess_reg import ESSMonitor, ESSPenalty
    from ess_reg.integrations.hf_trainer import ESSTrainer

    trainer = ESSTrainer(model=model, args=args, train_dataset=train, eval_dataset=valid,
                         ess_penalty=ESSPenalty(model, schedule=0.01, indices=[64, 128]),
                         ess_monitor=ESSMonitor(model, probe_ids))
    trainer.train()

The penalty reads the operators of the forward the Trainer runs anyway (no second forward), is
added to the loss of training steps only, and is weighted so that gradient accumulation gives
the step it would give without it. Its constraint multiplier (``Constraint``) moves once per
optimizer step. Mix :class:`ESSTrainerMixin` into a Trainer subclass of your own instead of
using :class:`ESSTrainer`.
"""

from __future__ import annotations

try:
    from transformers import Trainer, TrainerCallback
except ImportError as err:  # the hf extra is what brings it
    raise ImportError("ess_reg.integrations.hf_trainer needs transformers and accelerate: "
                      "pip install 'ess-reg[hf]'") from err

__all__ = ["ESSTrainerMixin", "ESSTrainer"]


class _ConstraintStep(TrainerCallback):
    """After each optimizer step (not each micro-batch): the penalty's multiplier moves."""

    def __init__(self, penalty):
        self.penalty = penalty

    def on_step_end(self, args, state, control, **kwargs):
        self.penalty.after_step()


class ESSTrainerMixin:
    """``compute_loss`` with the ESS penalty and ``evaluate`` with ESS, for a ``Trainer`` class."""

    def __init__(self, *args, ess_penalty=None, ess_monitor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ess_penalty, self.ess_monitor = ess_penalty, ess_monitor
        if ess_penalty is not None:
            self.add_callback(_ConstraintStep(ess_penalty))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
        penalty = self.ess_penalty
        if penalty is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch, **kwargs)
        with penalty.capture():
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch, **kwargs)
        term = penalty.compute(self.state.global_step)
        if self._loss_scaled_for_accumulation(num_items_in_batch):
            # The Trainer will not divide this loss by the accumulation steps (the model already
            # normalized it by the whole batch's tokens): the penalty, a mean, is divided here.
            term = term / self.current_gradient_accumulation_steps
        loss = loss + term
        return (loss, outputs) if return_outputs else loss

    def _loss_scaled_for_accumulation(self, num_items_in_batch) -> bool:
        # The rule Trainer.training_step applies to decide whether it divides the loss itself.
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or self.compute_loss_func is not None)

    def evaluate(self, *args, **kwargs):
        metrics = super().evaluate(*args, **kwargs)
        if self.ess_monitor is not None and self.is_world_process_zero():
            accuracy = metrics.get("eval_accuracy")
            ess = self.ess_monitor.measure(self.state.global_step, accuracy)
            self.log(dict(ess))  # through the Trainer's reporting: every logger it reports to
            metrics.update(ess)
        return metrics


class ESSTrainer(ESSTrainerMixin, Trainer):
    """A ``transformers.Trainer`` with ``ess_penalty`` (an :class:`ess_reg.ESSPenalty` or
    ``DecayIdentityPenalty`` built on the same model) and ``ess_monitor`` (an
    :class:`ess_reg.ESSMonitor` measured at each evaluation)."""
