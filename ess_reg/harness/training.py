"""The training loop: task batches in, ESS / TSS / accuracy / failure modes out to a tracker.

Plain Python on purpose (no Hydra here): :mod:`ess_reg.harness.ess_train` composes the config and calls
:func:`fit`; tests call it directly.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..layer_report import LayerReport, layer_keys, report_metrics
from ..verdict import Verdict, diagnose
from ..tasks import IGNORE, Task
from .checkpoints import save_checkpoint
from .run_probe import RunProbe
from .distributed import Distributed
from .outages import StoreUnavailable
from .step import TrainingDiverged, TrainingStep
from .settings import TrainerSettings, resolve_device

__all__ = ["TrainingDiverged", "TrainingInterrupted", "FitResult", "fit", "evaluate",
           "layer_keys", "report_metrics"]

log = logging.getLogger("ess_reg")


@dataclass
class FitResult:
    """What :func:`fit` leaves: the last metrics, the final per-layer reports and verdict, the
    checkpoint file and the trained model. ``ess-train`` adds the MLflow run id and the config."""

    metrics: dict[str, float]
    reports: dict[str, LayerReport]
    verdict: Verdict | None  # None on the processes other than 0 of a torchrun launch
    checkpoint: Path
    steps: int  # the step the run reached: max_steps, or where trainer.stop ended it
    resumed_from: int
    model: nn.Module
    run_id: str | None = None
    config: dict | None = None
    stopped: str | None = None  # why trainer.stop ended the run before max_steps, or None

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("valid/accuracy")


class TrainingInterrupted(KeyboardInterrupt):
    """A stop was asked for (a signal): raised between two steps, never in the middle of a write
    to the store or a checkpoint."""


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int,
             teacher=None) -> dict[str, float]:
    """Loss and accuracy at the asked positions (labels != IGNORE); with a distillation
    ``teacher``, also ``distill_kl``, its loss of the same logits averaged over the positions its
    settings name (one forward pass of ``model`` serves both)."""
    total_loss, correct, asked = 0.0, 0, 0
    kl_total, kl_count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x, y = inputs[start : start + batch_size], labels[start : start + batch_size]
            logits = model(x).float()
            mask = y != IGNORE
            total_loss += F.cross_entropy(logits[mask], y[mask], reduction="sum").item()
            correct += (logits.argmax(-1)[mask] == y[mask]).sum().item()
            asked += mask.sum().item()
            if teacher is not None:
                n = int(teacher.mask(y).sum())
                if n:
                    kl_total += teacher.loss(x, logits, y).item() * n
                    kl_count += n
    metrics = {"loss": total_loss / max(asked, 1), "accuracy": correct / max(asked, 1),
               "answers": asked}  # how many answers the accuracy counts: its sampling noise
    if teacher is not None:
        metrics["distill_kl"] = kl_total / max(kl_count, 1)
    return metrics


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


@dataclass
class _Record:
    """What the run has measured so far: the latest value of every metric, and the curves that
    trainer.stop (accuracy) and the verdict (training loss) read."""

    accuracy_curve: list[tuple[int, float]]  # (step, valid/accuracy) at each evaluation; a resumed run keeps its own
    last: dict[str, float] = field(default_factory=lambda: {"train/loss": float("nan")})
    # (step, train/loss) at each log step: is the run still learning at the end? Every batch is a
    # fresh sample of the task, so the training loss is the task's loss, not a memorized one.
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    evaluated_at: int = 0  # the step of the latest evaluation, for the progress line

    def log_training(self, tracker, step: int) -> None:
        tracker.log_metrics({k: v for k, v in self.last.items() if k.startswith(("train/", "penalty/"))}, step)
        self.loss_curve.append((step, self.last["train/loss"]))


@dataclass
class _Evaluation:
    """Held-out accuracy and the ESS probe at a step, logged. Process 0 alone evaluates; the
    others go on to the next step and wait for it there."""

    model: nn.Module
    task: Task
    inputs: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    probe: RunProbe
    tracker: object
    record: _Record
    teacher: object = None
    on_evaluate: Callable | None = None
    main: bool = True

    def __call__(self, step: int) -> dict[str, LayerReport]:
        if not self.main:
            return {}
        self.model.eval()
        metrics = {f"valid/{k}": v for k, v in
                   evaluate(self.model, self.inputs, self.labels, self.batch_size, self.teacher).items()}
        if self.task.chance_accuracy is not None:
            metrics["valid/chance"] = self.task.chance_accuracy
        start = time.perf_counter()
        reports = self.probe.report(self.model)
        metrics["time/ess_probe_s"] = time.perf_counter() - start
        metrics.update(report_metrics(reports))
        if "valid/accuracy" in metrics:  # before logging: a store outage raised there keeps it
            self.record.accuracy_curve.append((step, metrics["valid/accuracy"]))
        self.tracker.log_metrics(metrics, step)
        if self.on_evaluate is not None:
            self.on_evaluate(step, reports, metrics)
        self.model.train()
        self.record.last.update(metrics)
        self.record.evaluated_at = step
        return reports

    def teacher_once(self) -> None:
        """What a student learns from, logged once at step 0: the teacher's accuracy and ESS."""
        if not self.main:
            return
        metrics = {f"valid/{k}": v for k, v in
                   evaluate(self.teacher.model, self.inputs, self.labels, self.batch_size).items()}
        metrics.update(report_metrics(self.probe.report(self.teacher.model)))
        self.tracker.log_metrics({f"teacher/{k}": v for k, v in metrics.items()}, 0)


@dataclass
class _Checkpoints:
    """The run's one checkpoint file, rewritten atomically by process 0: model, optimizer, step,
    the penalty's state and the accuracy curve, all a resume needs."""

    path: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    tracker: object
    config: Mapping | None
    regularizer: object
    record: _Record
    on_checkpoint: Callable[[int], None] | None = None
    main: bool = True

    def __call__(self, step: int) -> None:
        if not self.main:
            return
        save_checkpoint(self.path, self.model, self.optimizer, step, self.tracker.run_id, self.config,
                        penalty=self.regularizer.penalty_state() if self.regularizer is not None else None,
                        accuracy_curve=self.record.accuracy_curve)
        if self.on_checkpoint is not None:
            self.on_checkpoint(step)


@dataclass
class _Progress:
    """The progress line: step, loss, the latest evaluation, speed and time left."""

    max_steps: int
    start_step: int
    enabled: bool = True
    started: float = field(default_factory=time.perf_counter)

    def __call__(self, step: int, record: _Record) -> None:
        if not self.enabled:
            return
        rate = (step - self.start_step) / max(time.perf_counter() - self.started, 1e-9)
        eta = (self.max_steps - step) / rate if rate > 0 else float("inf")
        last, util = record.last, record.last.get("ess/util")
        evaluated = ""  # the latest evaluation's figures, with the step they are from
        if "valid/accuracy" in last:
            evaluated = (f"  [eval @{record.evaluated_at}: acc {last['valid/accuracy']:.3f}"
                         + (f", ESS/reach {util:.3f}" if util is not None else "") + "]")
        log.info("step %d/%d  loss %.3f%s  %.1f it/s  eta %s", step, self.max_steps, last["train/loss"],
                 evaluated, rate, _duration(eta))


def _resume(model: nn.Module, optimizer, regularizer, resume_state: Mapping | None) -> int:
    """Load a checkpoint's state into the run; the step it continues from (0 for a new run)."""
    if resume_state is None:
        return 0
    model.load_state_dict(resume_state["model"])
    optimizer.load_state_dict(resume_state["optimizer"])
    torch.set_rng_state(resume_state["rng"])
    if regularizer is not None:
        saved = resume_state.get("penalty") or {}
        if saved.get("random") is None:
            log.warning("the checkpoint at step %s predates keeping the penalty's random stream (its indices and "
                        "channels): the run goes on with fresh draws from the penalty's seed, equally random "
                        "but not the draws a run trained straight through would have made", resume_state["step"])
        regularizer.load_penalty_state(saved)
    return int(resume_state["step"])


def fit(
    model: nn.Module,
    task: Task,
    make_optimizer: Callable[[list], torch.optim.Optimizer],
    trainer: TrainerSettings,
    probe: RunProbe,
    tracker,
    *,
    checkpoint_path: str | os.PathLike,
    seed: int = 0,
    config: Mapping | None = None,
    resume_state: Mapping | None = None,
    regularizer=None,
    teacher=None,
    distributed: Distributed | None = None,
    on_evaluate: Callable[[int, dict[str, LayerReport], dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    stop: Callable[[], str | None] | None = None,
) -> FitResult:
    """Train ``model`` on ``task``; log to ``tracker`` (an :class:`ess_reg.harness.tracking.Tracker`).

    Evaluates (accuracy, ESS probe) at step 0, every ``eval_every`` steps and at the end;
    checkpoints to ``checkpoint_path`` (atomically). ``resume_state`` (a loaded checkpoint)
    continues from its step. ``regularizer`` (an :class:`ess_reg.penalty.ESSPenalty` or
    ``DecayIdentityPenalty``) reads the operators of each training forward pass and adds its
    term to the loss. ``teacher`` (an :class:`ess_reg.harness.distill.Teacher`) turns the task
    loss into its blend of the labels and the teacher's outputs, and adds the held-out
    distillation loss (``valid/distill_kl``) to each evaluation. ``on_evaluate(step, reports, metrics)``
    runs after each evaluation.
    ``distributed`` (a ``torchrun`` launch, :mod:`ess_reg.harness.distributed`) trains each
    process on its slice of the global batch with averaged gradients; process 0 alone evaluates,
    logs and checkpoints (the others return without reports or verdict).
    ``stop()``, asked before every step, returns a reason to stop (then
    :class:`TrainingInterrupted` is raised there) or None.

    Returns a :class:`FitResult`.
    """
    distributed = distributed or Distributed()
    device = distributed.device(resolve_device(trainer.device))
    main = distributed.is_main
    torch.manual_seed(seed)
    model.to(device)
    optimizer = make_optimizer(model.parameters())
    trained = model  # what the training forward runs: the model, or its data-parallel wrapper
    if distributed.enabled:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    start_step = _resume(model, optimizer, regularizer, resume_state)
    record = _Record(accuracy_curve=[tuple(p) for p in (resume_state or {}).get("accuracy_curve", [])])
    test = task.test_set(trainer.eval_examples, seed=seed)
    probe.to(device)
    evaluate_and_log = _Evaluation(model, task, test.inputs.to(device), test.labels.to(device), trainer.batch_size,
                                   probe, tracker, record, teacher, on_evaluate, main)
    checkpoint = _Checkpoints(Path(checkpoint_path), model, optimizer, tracker, config, regularizer, record,
                              on_checkpoint, main)
    progress = _Progress(trainer.max_steps, start_step, trainer.progress)
    train_step = TrainingStep(model, optimizer, forward=trained, grad_clip=trainer.grad_clip,
                              autocast_dtype=_autocast_dtype(trainer.precision, device), regularizer=regularizer,
                              teacher=teacher, distributed=distributed)
    reports: dict[str, LayerReport] = {}
    stopped: str | None = None  # trainer.stop's reason, once it ends the run
    trained_to = step = start_step  # the last step whose update is done: where a checkpoint can stand
    try:
        if teacher is not None:
            teacher.to(device)
            if start_step == 0:
                evaluate_and_log.teacher_once()
        if start_step == 0:
            reports = evaluate_and_log(0)  # ESS and accuracy at initialization
            checkpoint(0)  # at once: whatever happens next, the run can be resumed
        model.train()
        for step in range(start_step + 1, trainer.max_steps + 1):
            reason = stop() if stop is not None else None
            if reason:
                raise TrainingInterrupted(f"{reason} before step {step}")
            batch = task.train_batch(trainer.batch_size, step, seed)  # the global batch, the same on every process
            outcome = train_step(distributed.shard(batch.inputs).to(device),
                                 distributed.shard(batch.labels).to(device), step)
            trained_to = step
            record.last.update(outcome.metrics())
            last_step = step == trainer.max_steps
            if step % trainer.log_every == 0 or last_step:
                record.log_training(tracker, step)
            if step % trainer.eval_every == 0 or last_step:
                reports = evaluate_and_log(step)
                if not last_step and trainer.stop.active:  # converged: end here, every process together
                    stopped = distributed.broadcast(trainer.stop.reason(record.accuracy_curve) if main else None)
                    last_step = bool(stopped)
            if stopped and step % trainer.log_every:  # stopped between two log steps: the loss where it ended
                record.log_training(tracker, step)
            if step % trainer.checkpoint_every == 0 or last_step:
                checkpoint(step)
            if step % trainer.log_every == 0 or last_step:
                progress(step, record)
            if stopped:
                log.info("trainer.stop at step %d: %s", step, stopped)
                break
    except StoreUnavailable as err:  # the store stayed away: keep the work, and say how to go on
        checkpoint(trained_to)
        err.step, err.checkpoint = trained_to, checkpoint.path
        raise
    if not reports and main:  # resumed at the end: nothing was trained, measure once
        reports = evaluate_and_log(trainer.max_steps)
        step = trainer.max_steps
    verdict = (diagnose(reports, record.last.get("valid/accuracy"), probe.thresholds, loss_curve=record.loss_curve)
               if main else None)
    return FitResult(metrics=dict(record.last), reports=reports, verdict=verdict, checkpoint=checkpoint.path,
                     steps=step, resumed_from=start_step, model=model, stopped=stopped)
