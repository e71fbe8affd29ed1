"""The training loop: task batches in, ESS / TSS / accuracy / failure modes out to a tracker.

Plain Python on purpose (no Hydra here): :mod:`ess_reg.train` composes the config and calls
:func:`fit`; tests call it directly.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .diagnose import FailureThresholds, LayerReport
from .probe import measure
from .tasks import IGNORE, Task

__all__ = ["TrainerSettings", "ProbeSettings", "TrainingDiverged", "fit", "resolve_device", "probe_indices",
           "probe_report", "evaluate"]


@dataclass
class TrainerSettings:
    max_steps: int = 1000
    batch_size: int = 64
    eval_every: int = 100
    eval_examples: int = 512
    log_every: int = 25
    checkpoint_every: int = 500
    checkpoint_dir: str = "runs/checkpoints/default"
    resume: bool = False
    device: str = "auto"
    precision: str = "auto"
    grad_clip: float | None = 1.0
    progress: bool = True

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "eval_every", "eval_examples", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"trainer.{name} must be a positive int, got {value!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"trainer.precision must be auto, fp32 or bf16, got {self.precision!r}")


@dataclass
class ProbeSettings:
    """The fixed probe batch on which ESS is measured at every evaluation."""

    examples: int = 4
    num_indices: int = 16  # evenly spaced in 1..L-1, plus the end of the task's context
    kind: str = "entropy"
    thresholds: FailureThresholds = field(default_factory=FailureThresholds)


class TrainingDiverged(RuntimeError):
    pass


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={device!r} but CUDA is not available here; use auto or cpu")
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"trainer.device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def probe_indices(task: Task, num_indices: int) -> torch.Tensor:
    idx = torch.linspace(1, task.seq_len - 1, num_indices).round().long()
    if task.context_end is not None and 1 <= task.context_end <= task.seq_len - 1:
        idx = torch.cat([idx, torch.tensor([task.context_end])])
    return idx.unique()


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


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.start = total, enabled, time.perf_counter()
        self.tty = sys.stdout.isatty()

    def update(self, step: int, first_step: int, text: str) -> None:
        if not self.enabled:
            return
        done = step - first_step
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        line = f"step {step:>6}/{self.total}  {text}  {rate:5.1f} it/s  eta {_duration(eta)}"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print()


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
    seed: int = 0,
    config: Mapping | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    regularizer=None,
) -> dict:
    """Train ``model`` on ``task``; log to ``tracker`` (an :class:`ess_reg.tracking.Tracker`).

    ``regularizer`` (an :class:`ess_reg.penalty.ESSPenalty` or ``DecayIdentityPenalty``) reads the
    operators of each training forward pass and adds its term to the loss.

    Returns the final evaluation metrics, the per-layer reports and failure modes.
    """
    device = resolve_device(trainer.device)
    autocast_dtype = _autocast_dtype(trainer.precision, device)
    torch.manual_seed(seed)
    model.to(device)
    optimizer = make_optimizer(model.parameters())
    checkpoint_path = Path(trainer.checkpoint_dir) / "last.pt"
    start_step = 0
    if trainer.resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
        torch.set_rng_state(state["rng"])
    test = task.test_set(trainer.eval_examples, seed=seed)
    test_inputs, test_labels = test.inputs.to(device), test.labels.to(device)
    probe_inputs = test_inputs[: probe.examples]
    progress = _Progress(trainer.max_steps, trainer.progress)
    last = {"train/loss": float("nan")}
    reports: dict[str, LayerReport] = {}

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
        for name, report in reports.items():
            metrics.update({f"ess/{name}/{k}": v for k, v in report.metrics().items()})
        tracker.log_metrics(metrics, step)
        model.train()
        last.update(metrics)
        return reports

    model.train()
    for step in range(start_step + 1, trainer.max_steps + 1):
        batch = task.train_batch(trainer.batch_size, step, seed)
        x, y = batch.inputs.to(device), batch.labels.to(device)
        capture = regularizer.capture() if regularizer is not None else contextlib.nullcontext()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None), capture:
            logits = model(x)
        task_loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)
        loss = task_loss if regularizer is None else task_loss + regularizer.compute(step)
        if not torch.isfinite(loss):
            reason = f"non-finite training loss ({loss.item()}) at step {step}"
            tracker.set_tags({"failure_reason": reason})
            tracker.finish("FAILED")
            progress.close()
            raise TrainingDiverged(reason)
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
            ratio = [v for k, v in last.items() if k.endswith("/ess_over_tss")]
            ess_text = f"ESS/TSS {sum(ratio) / len(ratio):.2f}" if ratio else ""
            progress.update(step, start_step, f"loss {last['train/loss']:.3f}  "
                            f"acc {last.get('valid/accuracy', float('nan')):.3f}  {ess_text}")
    progress.close()
    if not reports:  # resumed at the end: nothing was trained, measure once
        reports = probe_report(model.eval(), task, probe_inputs, probe)
    modes = {name: report.failure_mode(probe.thresholds) for name, report in reports.items()}
    return {"metrics": dict(last), "reports": reports, "failure_modes": modes,
            "checkpoint": checkpoint_path, "steps": trainer.max_steps, "resumed_from": start_step}
