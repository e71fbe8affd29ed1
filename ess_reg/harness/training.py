"""The training loop: task batches in, ESS / TSS / accuracy / failure modes out to a tracker.

Plain Python on purpose (no Hydra here): :mod:`ess_reg.harness.app` composes the config and calls
:func:`fit`; tests call it directly.
"""

from __future__ import annotations

import contextlib
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

from ..diagnose import FailureThresholds, LayerReport, diagnose, model_summary
from ..probe import measure
from ..tasks import IGNORE, Task

__all__ = ["TrainerSettings", "ProbeSettings", "TrainingDiverged", "TrainingInterrupted", "fit", "resolve_device",
           "resolve_threads", "probe_indices", "probe_batch", "probe_report", "evaluate", "layer_keys",
           "evaluation_metrics"]

log = logging.getLogger("ess_reg")
PROBES = ("entropy", "tolerance", "soft_tolerance")


@dataclass
class TrainerSettings:
    max_steps: int = 1000
    batch_size: int = 64
    eval_every: int = 100
    eval_examples: int = 512
    log_every: int = 25
    checkpoint_every: int = 500
    device: str = "auto"
    precision: str = "auto"
    grad_clip: float | None = 1.0
    threads: int | str = "auto"
    progress: bool = True

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "eval_every", "eval_examples", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"trainer.{name} must be a positive int, got {value!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"trainer.precision must be auto, fp32 or bf16, got {self.precision!r}")
        clip = self.grad_clip
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                                 or not math.isfinite(clip) or clip <= 0):
            raise ValueError(f"trainer.grad_clip must be a positive number or null (no clipping), got {clip!r}")
        resolve_threads(self.threads)


@dataclass
class ProbeSettings:
    """The fixed probe batch on which ESS is measured at every evaluation."""

    examples: int = 4
    num_indices: int = 16  # evenly spaced in 1..L-1, plus the end of the task's context
    kind: str = "entropy"
    thresholds: FailureThresholds = field(default_factory=FailureThresholds)

    def __post_init__(self):
        for name in ("examples", "num_indices"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"probe.{name} must be a positive int, got {value!r}")
        if self.kind not in PROBES:
            raise ValueError(f"probe.kind must be one of {PROBES}, got {self.kind!r}")


class TrainingDiverged(RuntimeError):
    pass


class TrainingInterrupted(KeyboardInterrupt):
    """A stop was asked for (a signal): raised between two steps, never in the middle of a write
    to the store or a checkpoint."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={device!r} but CUDA is not available here; use auto or cpu")
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"trainer.device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def resolve_threads(threads: int | str) -> int:
    """``trainer.threads``: a positive int, or ``auto`` = half the cores, at most 4.

    Half, because on a shared machine torch's default (every core) makes each thread wait for
    the slowest: with other processes busy, steps ran 10-40x slower; small models gain little
    from more than a few threads anyway.
    """
    if threads == "auto":
        return max(1, min(4, (os.cpu_count() or 2) // 2))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"trainer.threads must be a positive int or auto, got {threads!r}")
    return threads


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def probe_indices(task: Task, num_indices: int) -> torch.Tensor:
    idx = torch.linspace(1, task.seq_len - 1, num_indices).round().long()
    if task.context_end is not None and 1 <= task.context_end <= task.seq_len - 1:
        idx = torch.cat([idx, torch.tensor([task.context_end])])
    return idx.unique()


def probe_batch(task: Task, examples: int, seed: int) -> torch.Tensor:
    """The probe batch of a run: held-out inputs on which ESS is measured. The one definition,
    used by training, ``ess-analyze`` and the init search alike."""
    return task.test_set(examples, seed=seed).inputs


def layer_keys(names) -> dict[str, str]:
    """Short metric names for layers, in model order: ``{"blocks.0.mixer": "L0", ...}``."""
    return {name: f"L{i}" for i, name in enumerate(names)}


def evaluation_metrics(reports: Mapping[str, LayerReport]) -> dict[str, float]:
    """The ESS metrics of one evaluation: model-wide ``ess/*`` and per-layer ``L<i>/*``."""
    metrics = {f"ess/{k}": v for k, v in model_summary(reports).items()}
    for name, key in layer_keys(reports).items():
        metrics.update({f"{key}/{k}": v for k, v in reports[name].metrics().items()})
    return metrics


def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Loss and accuracy at the asked positions (labels != IGNORE)."""
    total_loss, correct, asked = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x, y = inputs[start : start + batch_size], labels[start : start + batch_size]
            logits = model(x).float()
            mask = y != IGNORE
            total_loss += F.cross_entropy(logits[mask], y[mask], reduction="sum").item()
            correct += (logits.argmax(-1)[mask] == y[mask]).sum().item()
            asked += mask.sum().item()
    return {"loss": total_loss / max(asked, 1), "accuracy": correct / max(asked, 1)}


def probe_report(model: nn.Module, task: Task, probe_inputs: torch.Tensor, settings: ProbeSettings) -> dict[str, LayerReport]:
    with torch.no_grad():
        return measure(model, probe_inputs, probe_indices(task, settings.num_indices), kind=settings.kind,
                       context_end=task.context_end, items_to_recall=task.items_to_recall, dtype=torch.float32)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def fit(
    model: nn.Module,
    task: Task,
    make_optimizer: Callable[[list], torch.optim.Optimizer],
    trainer: TrainerSettings,
    probe: ProbeSettings,
    tracker,
    *,
    checkpoint_path: str | os.PathLike,
    seed: int = 0,
    config: Mapping | None = None,
    resume_state: Mapping | None = None,
    regularizer=None,
    on_evaluate: Callable[[int, dict[str, LayerReport], dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    stop: Callable[[], str | None] | None = None,
) -> dict:
    """Train ``model`` on ``task``; log to ``tracker`` (an :class:`ess_reg.harness.tracking.Tracker`).

    Evaluates (accuracy, ESS probe) at step 0, every ``eval_every`` steps and at the end;
    checkpoints to ``checkpoint_path`` (atomically). ``resume_state`` (a loaded checkpoint)
    continues from its step. ``regularizer`` (an :class:`ess_reg.penalty.ESSPenalty` or
    ``DecayIdentityPenalty``) reads the operators of each training forward pass and adds its
    term to the loss. ``on_evaluate(step, reports, metrics)`` runs after each evaluation.
    ``stop()``, asked before every step, returns a reason to stop (then
    :class:`TrainingInterrupted` is raised there) or None.

    Returns the final metrics, the per-layer reports, the model's verdict and the model.
    """
    device = resolve_device(trainer.device)
    autocast_dtype = _autocast_dtype(trainer.precision, device)
    torch.manual_seed(seed)
    model.to(device)
    optimizer = make_optimizer(model.parameters())
    checkpoint_path = Path(checkpoint_path)
    start_step = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        start_step = int(resume_state["step"])
        torch.set_rng_state(resume_state["rng"])
    test = task.test_set(trainer.eval_examples, seed=seed)
    test_inputs, test_labels = test.inputs.to(device), test.labels.to(device)
    probe_inputs = probe_batch(task, probe.examples, seed).to(device)
    last = {"train/loss": float("nan")}
    reports: dict[str, LayerReport] = {}
    started = time.perf_counter()

    def save_checkpoint(step: int) -> None:
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "rng": torch.get_rng_state(), "run_id": tracker.run_id, "config": dict(config or {})}, tmp)
        tmp.replace(checkpoint_path)  # atomic: a crash never leaves half a checkpoint
        if on_checkpoint is not None:
            on_checkpoint(step)

    def evaluate_and_log(step: int) -> dict[str, LayerReport]:
        model.eval()
        metrics = {f"valid/{k}": v for k, v in evaluate(model, test_inputs, test_labels, trainer.batch_size).items()}
        start = time.perf_counter()
        reports = probe_report(model, task, probe_inputs, probe)
        metrics["time/ess_probe_s"] = time.perf_counter() - start
        metrics.update(evaluation_metrics(reports))
        tracker.log_metrics(metrics, step)
        if on_evaluate is not None:
            on_evaluate(step, reports, metrics)
        model.train()
        last.update(metrics)
        return reports

    def progress(step: int) -> None:
        if not trainer.progress:
            return
        rate = (step - start_step) / max(time.perf_counter() - started, 1e-9)
        eta = (trainer.max_steps - step) / rate if rate > 0 else float("inf")
        util = last.get("ess/util")
        log.info("step %d/%d  loss %.3f  acc %.3f%s  %.1f it/s  eta %s", step, trainer.max_steps,
                 last["train/loss"], last.get("valid/accuracy", float("nan")),
                 f"  ESS/reach {util:.2f}" if util is not None else "", rate, _duration(eta))

    if start_step == 0:
        reports = evaluate_and_log(0)  # ESS and accuracy at initialization
    model.train()
    for step in range(start_step + 1, trainer.max_steps + 1):
        reason = stop() if stop is not None else None
        if reason:
            raise TrainingInterrupted(f"{reason} before step {step}")
        batch = task.train_batch(trainer.batch_size, step, seed)
        x, y = batch.inputs.to(device), batch.labels.to(device)
        capture = regularizer.capture() if regularizer is not None else contextlib.nullcontext()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None), capture:
            logits = model(x)
        task_loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)
        if not torch.isfinite(task_loss):  # before the penalty, whose spectra would fail on NaN operators
            raise TrainingDiverged(f"non-finite training loss ({task_loss.item()}, the task loss) at step {step}")
        loss = task_loss if regularizer is None else task_loss + regularizer.compute(step)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"non-finite training loss ({loss.item()}, from the penalty) at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if trainer.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip)
        optimizer.step()
        last["train/loss"] = task_loss.item()
        if regularizer is not None:
            last.update({f"penalty/{k}": v for k, v in regularizer.last.items()})
            last["train/total_loss"] = loss.item()
        if step % trainer.log_every == 0 or step == trainer.max_steps:
            tracker.log_metrics({k: v for k, v in last.items() if k.startswith(("train/", "penalty/"))}, step)
        if step % trainer.eval_every == 0 or step == trainer.max_steps:
            reports = evaluate_and_log(step)
        if step % trainer.checkpoint_every == 0 or step == trainer.max_steps:
            save_checkpoint(step)
        if step % trainer.log_every == 0 or step == trainer.max_steps:
            progress(step)
    if not reports:  # resumed at the end: nothing was trained, measure once
        reports = evaluate_and_log(trainer.max_steps)
    verdict = diagnose(reports, last.get("valid/accuracy"), probe.thresholds)
    return {"metrics": dict(last), "reports": reports, "verdict": verdict, "checkpoint": checkpoint_path,
            "steps": trainer.max_steps, "resumed_from": start_step, "model": model}
