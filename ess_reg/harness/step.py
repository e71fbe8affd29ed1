"""One training step, the same for ``fit`` and the benches that time it.

The forward (under autocast when a precision asks for it, captured by the penalty), the task's
cross-entropy (over the global batch when training is distributed), the teacher's blend, the
penalty, backward, clipping, the optimizer and the constraint's multiplier. Each is a part the
step composes; a part left out (no penalty, no teacher, one process) costs nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import IGNORE
from .distributed import Distributed

__all__ = ["TrainingDiverged", "StepOutcome", "TrainingStep", "task_loss"]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN/Inf."""


@dataclass
class StepOutcome:
    loss: torch.Tensor            # the task's loss over the global batch, detached: what the run reports
    total: torch.Tensor           # what was minimized: the task loss (or its blend) plus the penalty, detached
    distill_kl: float | None = None
    penalty: dict[str, float] | None = None  # the penalty's own figures at this step (value, weight, ...)

    def metrics(self) -> dict[str, float]:
        """The step's figures under the names a run logs them."""
        out = {"train/loss": self.loss.item()}
        if self.distill_kl is not None:
            out["train/distill_kl"] = self.distill_kl
        if self.penalty is not None:
            out.update({f"penalty/{k}": v for k, v in self.penalty.items()})
            out["train/total_loss"] = self.total.item()
        return out


def task_loss(logits: torch.Tensor, labels: torch.Tensor, distributed: Distributed | None = None):
    """``(loss to differentiate, loss of the global batch)``: the mean cross-entropy over the
    answered positions. Distributed, each process's loss is its slice's sum over the whole batch's
    answered positions, times the processes, so that the averaged gradient is the gradient of the
    global batch's mean loss."""
    flat_logits, flat_labels = logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1)
    if distributed is None or not distributed.enabled:
        loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE)
        return loss, loss.detach()
    local = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE, reduction="sum")
    totals = distributed.sum(torch.stack([local.detach(), (labels != IGNORE).sum().to(local.dtype)]))
    return local / totals[1].clamp_min(1) * distributed.world_size, totals[0] / totals[1].clamp_min(1)


class TrainingStep:
    """``step(x, y, step_number) -> StepOutcome``: one update of ``model``'s parameters.

    ``forward``: what the forward runs (default ``model``; a data-parallel wrapper of it when
    distributed); ``grad_clip``: the largest gradient norm, or None; ``autocast_dtype``: the
    mixed-precision dtype, or None; ``regularizer``: an ESS penalty (its capture reads the
    forward's operators); ``teacher``: a distillation teacher; ``distributed``: the launch.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, forward: nn.Module | None = None,
                 grad_clip: float | None = None, autocast_dtype: torch.dtype | None = None, regularizer=None,
                 teacher=None, distributed: Distributed | None = None):
        self.model, self.optimizer, self.forward = model, optimizer, forward if forward is not None else model
        self.grad_clip, self.autocast_dtype = grad_clip, autocast_dtype
        self.regularizer, self.teacher, self.distributed = regularizer, teacher, distributed

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int) -> StepOutcome:
        regularizer, teacher = self.regularizer, self.teacher
        capture = regularizer.capture() if regularizer is not None else contextlib.nullcontext()
        with self._autocast(x.device), capture:
            logits = self.forward(x)
        loss, global_loss = task_loss(logits, y, self.distributed)
        objective, kl = loss, None
        if teacher is not None:
            with self._autocast(x.device):
                kl = teacher.loss(x, logits, y)
            objective = teacher.blend(loss, kl)
        if not torch.isfinite(global_loss) or not torch.isfinite(objective):  # before the penalty's spectra
            raise TrainingDiverged(f"non-finite training loss ({global_loss.item()}, the task loss) at step {step}")
        total = objective if regularizer is None else objective + regularizer.compute(step)
        if not torch.isfinite(total):
            raise TrainingDiverged(f"non-finite training loss ({total.item()}, from the penalty) at step {step}")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if regularizer is not None:
            regularizer.after_step()  # a constraint's multiplier moves once per step
        return StepOutcome(loss=global_loss, total=total.detach(), distill_kl=None if kl is None else kl.item(),
                           penalty=None if regularizer is None else dict(regularizer.last))
