"""Distillation: a student trains on a frozen teacher's outputs (the ``distill`` config group).

    ess-train distill=teacher distill.teacher=<run id or checkpoint> model.state_size=4

The teacher is any earlier ess-train run: its checkpoint is found as ``trainer.resume`` finds
one (a run id of the store, its folder or a ``last.pt`` path), loaded as data only, and its model
rebuilt from the config stored beside the weights. Its parameters are frozen and it stays in
eval mode. The loss at the positions ``positions`` names is

    (1 - weight) * cross-entropy(student, labels) + weight * T^2 * KL(teacher_T || student_T)

with both distributions softened by the temperature T (the T^2 keeps the gradient's scale
independent of T). The teacher's own accuracy and ESS are logged once, under ``teacher/``, so
a study can set the student's distillation loss against the teacher's ESS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import IGNORE
from .build import ConfigError
from .checkpoints import check_same_task, trained_model

__all__ = ["DistillSettings", "Teacher", "distillation_loss"]


POSITIONS = ("answers", "all")


@dataclass(frozen=True)
class DistillSettings:
    """The ``distill`` group: which teacher, how soft, how much of the loss, where."""

    teacher: str | None = None    # a run id of the store or a checkpoint path; None: no distillation
    temperature: float = 1.0
    weight: float = 1.0           # the teacher's share of the loss; the labels get 1 - weight
    positions: str = "answers"    # answers: where the task asks (labels set) | all: every position
    other_task: bool = False      # accept a teacher trained on another task of the same vocabulary

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ConfigError(f"distill.temperature must be a finite number > 0, got {self.temperature!r}")
        if not (isinstance(self.weight, (int, float)) and 0 <= self.weight <= 1):
            raise ConfigError(f"distill.weight must be in [0, 1] (the teacher's share of the loss), "
                              f"got {self.weight!r}")
        if self.positions not in POSITIONS:
            raise ConfigError(f"distill.positions must be one of {POSITIONS}, got {self.positions!r}")

    @classmethod
    def from_config(cls, node: Mapping | None) -> DistillSettings:
        node = dict(node or {})
        known = {"teacher", "temperature", "weight", "positions", "other_task"}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ConfigError(f"distill: unknown keys {unknown} (known: {', '.join(sorted(known))})")
        return cls(**node)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the positions
    where ``mask`` is true (logits ``(..., vocab)``, mask ``(...)``)."""
    s = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits[mask].float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


class Teacher(nn.Module):
    """A frozen model whose outputs a student learns; built from an ess-train checkpoint."""

    def __init__(self, model: nn.Module, settings: DistillSettings, source: str | None = None,
                 config: Mapping | None = None, run_id: str | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.settings = settings
        self.source = source        # the checkpoint file it came from
        self.config = dict(config or {})  # the teacher run's config, as stored
        self.run_id = run_id        # the teacher's MLflow run
        self.train(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # a teacher never leaves eval mode (dropout, norms)

    @classmethod
    def load(cls, settings: DistillSettings, *, checkpoint_root: str, uri: str, vocab_size: int,
             seq_len: int | None = None, task: Mapping | None = None) -> Teacher:
        """The teacher ``settings.teacher`` names; its vocabulary must be the student task's, it
        must read sequences of the student task's length (``seq_len``), and it must have been
        trained on the student's ``task`` config unless ``settings.other_task``."""
        model, state, path = trained_model(settings.teacher, checkpoint_root, uri, key="distill.teacher")
        config = state["config"]
        max_len = (config.get("model") or {}).get("max_len")
        if seq_len is not None and max_len is not None and max_len < seq_len:
            raise ConfigError(f"distill.teacher={settings.teacher}: the teacher has learned positions up to {max_len} "
                              f"tokens, the student's task has sequences of {seq_len}: it cannot read them")
        teacher_vocab = model.embedding.num_embeddings if hasattr(model, "embedding") else None
        if teacher_vocab != vocab_size:
            raise ConfigError(f"distill.teacher={settings.teacher}: the teacher's vocabulary is {teacher_vocab}, "
                              f"the student's task has {vocab_size}: they must be equal")
        check_same_task("distill.teacher", settings.teacher, config.get("task"), task,
                        other_task=settings.other_task, flag="distill.other_task")
        return cls(model, settings, source=str(Path(path)), config=config, run_id=state["run_id"])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(inputs)

    def mask(self, labels: torch.Tensor) -> torch.Tensor:
        if self.settings.positions == "all":
            return torch.ones_like(labels, dtype=torch.bool)
        return labels != IGNORE

    def loss(self, inputs: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The distillation term for one batch (the student's logits of ``inputs``)."""
        return distillation_loss(student_logits, self(inputs), self.mask(labels), self.settings.temperature)

    def blend(self, task_loss: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        w = self.settings.weight
        return kl if w == 1 else (1 - w) * task_loss + w * kl
