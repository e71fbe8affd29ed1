"""Resuming a run: find its checkpoint, load it safely, refuse a config that differs.

``trainer.resume`` names what to resume: an MLflow run id, or a checkpoint path. Checkpoints
hold tensors and plain data only and are loaded with ``weights_only=True``: a checkpoint is data,
never code.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import tracking
from .build import ConfigError, build_model, check_targets, with_chosen_init

log = logging.getLogger("ess_reg")

__all__ = ["RESUMABLE_KEYS", "CHECKPOINT_NAME", "checkpoint_path", "save_checkpoint", "locate_checkpoint",
           "load_checkpoint", "trained_model", "config_differences", "check_resume"]

CHECKPOINT_NAME = "last.pt"
# The step budget and logging knobs may change when a run is resumed; nothing else may.
RESUMABLE_KEYS = ("trainer.max_steps", "trainer.log_every", "trainer.eval_every", "trainer.checkpoint_every",
                  "trainer.progress", "trainer.resume", "trainer.threads")


def checkpoint_path(root: str | os.PathLike, run_id: str) -> Path:
    """Where run ``run_id`` keeps its checkpoint: under its own id, shared with no other run."""
    return Path(root) / run_id / CHECKPOINT_NAME


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    run_id: str | None, config: Mapping | None, penalty: Mapping | None = None,
                    accuracy_curve: list | None = None) -> None:
    """Write what a resume needs (weights, optimizer state, step, RNG state, run id, config, and
    the penalty's state, its random stream and a constraint's multiplier; the validation accuracies so
    far, for ``trainer.stop``) to ``path``, atomically: a
    crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "rng": torch.get_rng_state(), "run_id": run_id, "config": dict(config or {}),
                **({"penalty": dict(penalty)} if penalty else {}),
                **({"accuracy_curve": [list(p) for p in accuracy_curve]} if accuracy_curve else {})}, tmp)
    tmp.replace(path)


def locate_checkpoint(resume: str, checkpoint_root: str | os.PathLike, uri: str, scratch: str | os.PathLike,
                      key: str = "trainer.resume") -> Path:
    """The checkpoint file ``resume`` names: a path to a file, or a run id (its local checkpoint
    folder first, else the ``checkpoint/last.pt`` artifact of that run in the store at ``uri``,
    downloaded into ``scratch``). ``key`` is the config key that named it, for the errors."""
    resume = str(resume)
    as_path = Path(resume)
    if as_path.is_file():
        return as_path
    if as_path.is_dir() and (as_path / CHECKPOINT_NAME).is_file():
        return as_path / CHECKPOINT_NAME
    local = checkpoint_path(checkpoint_root, resume)
    if local.is_file():
        return local
    if uri.startswith(("http://", "https://")):  # 5 s, not MLflow's minutes of retries
        try:
            tracking.check_store(uri)
        except ValueError as err:
            raise ConfigError(f"{key}={resume} is not a local checkpoint, and {err}") from None
    if os.sep not in resume and len(resume) < 32:  # a shortened run id, as the UI shows it
        try:
            full = tracking.resolve_run_id(uri, resume)
        except ValueError as err:
            raise ConfigError(f"{key}={resume}: {err}") from None
        if full is not None:
            return locate_checkpoint(full, checkpoint_root, uri, scratch, key)
    if os.sep not in resume and tracking.get_run(uri, resume) is not None:
        fetched = tracking.download_artifact(uri, resume, f"checkpoint/{CHECKPOINT_NAME}", scratch)
        if fetched is not None:
            return fetched
        raise ConfigError(f"{key}={resume}: run {resume} has no checkpoint, neither at {local} nor "
                          "in the store's artifacts")
    raise ConfigError(f"{key}={resume}: neither a checkpoint file nor a run id of the store {uri} "
                      f"(no {local})")


def load_checkpoint(path: str | os.PathLike, label: str | None = None) -> dict:
    """A checkpoint's contents, loaded without executing anything it holds. ``label`` is what
    the errors call it (``trainer.resume=<run id>``: not the scratch path of a downloaded file).

    A file that is not a torch zip archive is refused from its first bytes, and the archive is
    memory-mapped, so a large file that is not a checkpoint is never read whole."""
    import zipfile

    name = label or str(path)
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{name} is not an ess-train checkpoint (not a torch.save archive)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for a bad file
        text = str(err).strip()
        if "Weights only load failed" in text:  # torch's message goes on to advise weights_only=False: not here
            reason = "it holds objects other than tensors and plain data, which loading could run; refused"
        else:
            reason = text.splitlines()[0] if text else type(err).__name__
        raise ConfigError(f"{name} is not a loadable ess-train checkpoint (tensors and plain data only): "
                          f"{reason}") from None
    missing = [k for k in ("model", "optimizer", "step", "rng", "run_id", "config")
               if not isinstance(state, Mapping) or k not in state]
    if missing:
        raise ConfigError(f"{name} is not an ess-train checkpoint (missing {missing})")
    wrong = _malformed(state)
    if wrong:
        raise ConfigError(f"{name} is not an ess-train checkpoint: {wrong}")
    return dict(state)


def _malformed(state: Mapping) -> str | None:
    """What is of the wrong kind in a loaded checkpoint, before any of it is used (a malformed
    field found later would fail a resumed run after it was reopened)."""
    step, rng, run_id = state["step"], state["rng"], state["run_id"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"its step must be an int >= 0, got {step!r}"
    if not (torch.is_tensor(rng) and rng.dtype == torch.uint8 and rng.dim() == 1):
        return "its rng must be a 1-d uint8 tensor (torch.get_rng_state())"
    if run_id is not None and not isinstance(run_id, str):
        return f"its run_id must be a string, got {type(run_id).__name__}"
    for key in ("config", "model", "optimizer"):
        if not isinstance(state[key], Mapping):
            return f"its {key} must be a mapping, got {type(state[key]).__name__}"
    if not all(torch.is_tensor(v) for v in state["model"].values()):
        return "its model weights must all be tensors"
    curve = state.get("accuracy_curve", [])
    if not isinstance(curve, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in curve):
        return "its accuracy_curve must be a list of (step, accuracy) pairs"
    penalty = state.get("penalty", {})
    if not isinstance(penalty, Mapping):
        return "its penalty state must be a mapping"
    random = penalty.get("random")
    if random is not None and not (torch.is_tensor(random) and random.dtype == torch.uint8
                                   and tuple(random.shape) == tuple(torch.Generator().get_state().shape)):
        return "its penalty's random state must be a CPU generator's state (torch.Generator.get_state())"
    return None


def check_weights_fit(model_config: Mapping, weights: Mapping, what: str) -> None:
    """Refuse weights that the model ``model_config`` builds cannot take, before that model is
    built: it is built on the meta device first (no memory), so a small file whose config asks
    for a huge model is refused instead of allocated."""
    try:
        with torch.device("meta"):
            skeleton = build_model(model_config)
    except ConfigError:
        raise
    except Exception as err:  # a config the zoo cannot build: say so as build_model would
        raise ConfigError(f"{what}: its stored model config does not build: {err}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != given:
        missing, extra = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
        shapes = [k for k in sorted(set(expected) & set(given)) if expected[k] != given[k]]
        parts = [f"{len(missing)} missing, e.g. {missing[0]}" if missing else "",
                 f"{len(extra)} unexpected, e.g. {extra[0]}" if extra else "",
                 f"{len(shapes)} of another shape, e.g. {shapes[0]}: {list(given[shapes[0]])} in the file, "
                 f"{list(expected[shapes[0]])} in the model" if shapes else ""]
        detail = "; ".join(p for p in parts if p)
        raise ConfigError(f"{what}: the weights do not fit the model its config builds ({detail})")


def trained_model(target: str, checkpoint_root: str | os.PathLike, uri: str,
                  key: str = "trainer.resume") -> tuple[torch.nn.Module, dict, Path]:
    """The model of the run ``target`` names (as :func:`locate_checkpoint` finds it), rebuilt
    from the config stored beside its weights through the project's registries, in eval mode.
    Returns ``(model, checkpoint state, checkpoint path)``."""
    with scratch_dir() as scratch:
        path = locate_checkpoint(target, checkpoint_root, uri, scratch, key=key)
        state = load_checkpoint(path, f"{key}={target}")
    check_weights_fit(state["config"].get("model") or {}, state["model"], f"{key}={target}")
    model = build_model(state["config"].get("model") or {})
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ConfigError(f"{key}={target}: the weights in {path} do not fit the model its config builds: "
                          f"{str(err).splitlines()[0]}") from None
    return model.eval(), state, path


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


def check_same_task(key: str, source: str, trained: Mapping | None, task: Mapping | None, *,
                    other_task: bool, flag: str) -> None:
    """A model trained on another task config than this run's (a teacher, a source to cut) is
    refused unless ``other_task`` (the config key ``flag`` set true), and then logged as a warning:
    what it is compared with would measure the move to the new task as well."""
    trained = dict(trained or {})
    if task is None or not trained:
        return
    differs = config_differences(trained, dict(task), allowed=())
    if not differs:
        return
    text = (f"{key}={source} was trained on another task (differs in "
            + ", ".join(f"task.{k}: {a!r} vs {b!r}" for k, (a, b) in differs.items()) + ")")
    if not other_task:
        raise ConfigError(f"{text}; add {flag}=true to use it anyway")
    log.warning("warning: %s; using it anyway (%s=true)", text, flag)


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="ess-reg-")


def _given(key: str, given: set[str]) -> bool:
    """Whether the command line set ``key``: itself, or a node above it (``model=s6`` sets every
    ``model.*`` key)."""
    return any(key == g or key.startswith(g + ".") for g in given)


def given_keys(overrides: Sequence[str]) -> set[str]:
    """The config keys a list of Hydra overrides sets (``+a.b=1`` -> ``a.b``; ``model=s6`` -> ``model``)."""
    return {o.partition("=")[0].lstrip("+~") for o in overrides if "=" in o}


def check_resume(config: Mapping, overrides: Sequence[str]) -> tuple[dict, dict, dict]:
    """What ``trainer.resume`` in ``config`` resumes, checked before anything is written.

    The run goes on under its *stored* config: a key the command line (``overrides``) did not
    set is the run's, not the default's, so ``trainer.resume=<id> trainer.max_steps=2000`` is
    enough for a run trained with any overrides. Keys the command line sets must be ones that
    may change (:data:`RESUMABLE_KEYS`) or equal the stored ones; the stored config may name
    only ``_target_`` values that ess-reg's own configs name.

    Returns ``(checkpoint state, the config to run, {changed key: (old, new)})``; a refused key,
    a budget below the checkpoint's step, or a run that is not in the store raises
    :class:`ConfigError`."""
    resume, t = config["trainer"]["resume"], config["tracking"]
    with scratch_dir() as scratch:
        state = load_checkpoint(locate_checkpoint(resume, config["trainer"]["checkpoint_dir"], t["uri"], scratch),
                                f"trainer.resume={resume}")
    stored = state["config"]
    check_targets(stored, f"trainer.resume={resume}")
    if not Path(str(resume)).exists() and not str(state["run_id"] or "").startswith(str(resume)):
        # found by run id: the file must be that run's, or the resume would extend another run
        raise ConfigError(f"trainer.resume={resume}: the checkpoint found for it belongs to run {state['run_id']}; "
                          "refusing to continue another run than the one asked for")
    check_weights_fit(stored.get("model") or {}, state["model"], f"trainer.resume={resume}")
    chosen = (stored.get("init") or {}).get("chosen")
    compared = with_chosen_init(config, chosen) if chosen and not config["init"].get("chosen") else dict(config)
    given = given_keys(overrides)
    differences = {k: v for k, v in config_differences(stored, compared).items() if _given(k, given)}
    if differences:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in differences.items())
        raise ConfigError(f"trainer.resume={resume}: the config differs from the run's in {listed}. Only the step "
                          "budget and logging knobs may change on resume; start a new run for anything else "
                          "(keys you leave out are taken from the run)")
    requested = copy.deepcopy(dict(stored))
    flat = _flat(config)
    for key in RESUMABLE_KEYS:
        if _given(key, given) or key == "trainer.resume":
            section, _, name = key.partition(".")
            requested[section] = {**requested.get(section, {}), name: flat.get(key)}
    max_steps = requested["trainer"]["max_steps"]
    if not isinstance(max_steps, int) or max_steps < int(state["step"]):
        raise ConfigError(f"trainer.max_steps={max_steps} is below the step {state['step']} the checkpoint of "
                          f"trainer.resume={resume} reached: give a larger trainer.max_steps")
    if tracking.get_run(t["uri"], state["run_id"]) is None:
        raise ConfigError(f"trainer.resume: run {state['run_id']} of that checkpoint is not in the store {t['uri']}")
    changes = config_differences(stored, requested, allowed=())
    changes.pop("trainer.resume", None)
    return state, requested, changes
