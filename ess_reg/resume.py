"""Resuming a run: find its checkpoint, load it safely, refuse a config that differs.

``trainer.resume`` names what to resume: an MLflow run id, or a checkpoint path. Checkpoints
hold tensors and plain data only and are loaded with ``weights_only=True``: a checkpoint is data,
never code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import tracking
from .build import ConfigError

__all__ = ["RESUMABLE_KEYS", "CHECKPOINT_NAME", "checkpoint_path", "locate_checkpoint", "load_checkpoint",
           "config_differences"]

CHECKPOINT_NAME = "last.pt"
# The step budget and logging knobs may change when a run is resumed; nothing else may.
RESUMABLE_KEYS = ("trainer.max_steps", "trainer.log_every", "trainer.eval_every", "trainer.checkpoint_every",
                  "trainer.progress", "trainer.resume", "trainer.threads")


def checkpoint_path(root: str | os.PathLike, run_id: str) -> Path:
    """Where run ``run_id`` keeps its checkpoint: under its own id, shared with no other run."""
    return Path(root) / run_id / CHECKPOINT_NAME


def locate_checkpoint(resume: str, checkpoint_root: str | os.PathLike, uri: str, scratch: str | os.PathLike) -> Path:
    """The checkpoint file ``resume`` names: a path to a file, or a run id (its local checkpoint
    folder first, else the ``checkpoint/last.pt`` artifact of that run in the store at ``uri``,
    downloaded into ``scratch``)."""
    resume = str(resume)
    as_path = Path(resume)
    if as_path.is_file():
        return as_path
    if as_path.is_dir() and (as_path / CHECKPOINT_NAME).is_file():
        return as_path / CHECKPOINT_NAME
    local = checkpoint_path(checkpoint_root, resume)
    if local.is_file():
        return local
    if os.sep not in resume and tracking.get_run(uri, resume) is not None:
        fetched = tracking.download_artifact(uri, resume, f"checkpoint/{CHECKPOINT_NAME}", scratch)
        if fetched is not None:
            return fetched
        raise ConfigError(f"trainer.resume={resume}: run {resume} has no checkpoint, neither at {local} nor "
                          "in the store's artifacts")
    raise ConfigError(f"trainer.resume={resume}: neither a checkpoint file nor a run id of the store {uri} "
                      f"(no {local})")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint's contents, loaded without executing anything it holds."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path} is not a loadable ess-train checkpoint (tensors and plain data only): "
                          f"{first}") from None
    missing = [k for k in ("model", "optimizer", "step", "rng", "run_id", "config")
               if not isinstance(state, Mapping) or k not in state]
    if missing:
        raise ConfigError(f"{path} is not an ess-train checkpoint (missing {missing})")
    return dict(state)


def _flat(config: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(stored: Mapping, requested: Mapping, allowed=RESUMABLE_KEYS) -> dict[str, tuple]:
    """``{key: (stored, requested)}`` for every key that differs, except the ``allowed`` ones."""
    a, b = _flat(stored), _flat(requested)
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if k not in allowed and a.get(k, "<absent>") != b.get(k, "<absent>")}


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="ess-reg-")
