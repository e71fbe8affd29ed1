"""``trainer.*`` of the config: the settings of the training loop, checked on construction."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .stopping import StopRule

__all__ = ["TrainerSettings", "resolve_device", "resolve_threads"]


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
    stop: StopRule = field(default_factory=StopRule)  # or its keys as a mapping (the config's trainer.stop)

    def __post_init__(self):
        if isinstance(self.stop, Mapping):
            unknown = set(self.stop) - {"target", "patience", "min_delta"}
            if unknown:
                raise ValueError(f"trainer.stop has no key {sorted(unknown)[0]!r}; "
                                 "it takes target, patience, min_delta")
            self.stop = StopRule(**self.stop)
        elif self.stop is None:
            self.stop = StopRule()
        elif not isinstance(self.stop, StopRule):
            raise ValueError(f"trainer.stop must be a mapping (target, patience, min_delta), got {self.stop!r}")
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
