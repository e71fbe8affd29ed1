"""Everything a run needs, built and checked before anything is written (:func:`prepare`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..tasks import Task
from . import tracking
from .build import ConfigError, build_task, initial_model, probe_settings, trainer_settings, with_state_size
from .checkpoints import check_resume
from .distill import DistillSettings, Teacher
from .run_probe import RunProbe
from .settings import TrainerSettings, resolve_device

__all__ = ["Plan", "prepare"]

log = logging.getLogger("ess_reg")


@dataclass
class Plan:
    """Everything a run needs, built and checked before anything is written."""

    config: dict  # resolved, exactly what trains (an init search's choice included)
    trainer: TrainerSettings
    probe: RunProbe
    task: Task
    model: torch.nn.Module
    make_optimizer: Any
    regularizer: Any
    choices: dict[str, str]
    overrides: list[str]
    job: int | None  # the job's number in a sweep
    search: Any = None  # the init search's result, if one ran
    resume_state: dict | None = None
    resumed_changes: dict = field(default_factory=dict)
    teacher: Any = None  # the frozen teacher of a distillation run


def _hydra_context() -> tuple[dict[str, str], list[str], int | None]:
    if not HydraConfig.initialized():
        return {}, [], None
    hc = HydraConfig.get()
    choices = {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if not k.startswith("hydra")}
    job = hc.job.num if hc.mode == RunMode.MULTIRUN else None
    return choices, list(hc.overrides.task), job


def _check_outputs(config: dict) -> None:
    """The store and the folders a run writes to, checked before anything is written."""
    t = config["tracking"]
    try:
        tracking.check_store(t["uri"])
        retry = t.get("retry_seconds", tracking.RETRY_SECONDS)
        if isinstance(retry, bool) or not isinstance(retry, (int, float)) or not retry >= 0:
            raise ValueError(f"tracking.retry_seconds must be a number of seconds >= 0, got {retry!r}")
        if t.get("artifact_location"):
            tracking.check_writable_dir(t["artifact_location"], "tracking.artifact_location")
        tracking.check_writable_dir(config["trainer"]["checkpoint_dir"], "trainer.checkpoint_dir")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _plain_error(err: Exception) -> str:
    """The error a part of a nested config raised, with the key it came from: Hydra wraps it in
    an InstantiationException whose text repeats the class path and the exception's repr."""
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        key = next((line.split(":", 1)[1].strip() for line in str(err).splitlines() if line.startswith("full_key:")),
                   None)
        return f"{key}: {err.__cause__}" if key else str(err.__cause__)
    return str(err)


def _make_optimizer(cfg: DictConfig):
    try:
        make = instantiate(cfg.optimizer)
        make([torch.nn.Parameter(torch.zeros(1))])  # the optimizer checks its own arguments here
    except Exception as err:  # an unknown class or a bad argument: name the group
        raise ConfigError(f"optimizer: {str(err).strip().splitlines()[0]}") from None
    return make


def prepare(cfg: DictConfig) -> Plan:
    """Check and build everything the run needs; raises :class:`ConfigError` naming the key.

    Nothing is written: no MLflow run, no checkpoint folder. A resume is checked here too: its
    checkpoint is found and loaded, the run goes on under its stored config, and a key given on
    the command line that differs from the stored one, other than the step budget and logging
    knobs, is refused with the differing keys.
    """
    choices, overrides, job = _hydra_context()
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:
        raise ConfigError(f"config: {err}") from None
    config = with_state_size(config)
    _check_outputs(config)
    resume_state, changes = None, {}
    if config["trainer"].get("resume"):
        # The run goes on under its stored config (the keys given on the command line that may
        # change replaced): everything below is built from it.
        trainer_settings(config["trainer"])  # a malformed budget is named before the checkpoint is read
        resume_state, config, changes = check_resume(config, overrides)
        cfg = OmegaConf.create(config)
    trainer = trainer_settings(config["trainer"])
    probe_config = probe_settings(config["probe"])
    try:
        resolve_device(trainer.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    task = build_task(config["task"])
    make_optimizer = _make_optimizer(cfg)

    probe = RunProbe(task, probe_config, config["seed"])

    def candidate(i, cand, score, reports):
        log.info("init search: candidate %s -> %s %.4f", cand, config["init"]["score"], score)

    try:
        init = config.get("init") or {}
        if init.get("source") and not init.get("compressed"):  # init=compressed, before the cut
            from .compress import compressed_start

            model, config, _ = compressed_start(config, probe)
            search = None
        else:
            model, config, search = initial_model(config, probe, on_candidate=candidate)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"init: {err}") from None
    regularizer = None
    if cfg.penalty.get("_target_"):
        try:
            regularizer = instantiate(cfg.penalty)(model, task=task)
            regularizer.check(probe.inputs[:2])
        except (TypeError, ValueError, InstantiationException) as err:
            raise ConfigError(f"penalty={choices.get('penalty', cfg.penalty._target_)}: {_plain_error(err)}") from None
    teacher = None
    distill = DistillSettings.from_config(config.get("distill"))
    if distill.teacher is not None:
        teacher = Teacher.load(distill, checkpoint_root=config["trainer"]["checkpoint_dir"],
                               uri=config["tracking"]["uri"], vocab_size=task.vocab_size, seq_len=task.seq_len,
                               task=config["task"])
    return Plan(config, trainer, probe, task, model, make_optimizer, regularizer, choices, overrides, job,
                search, resume_state, changes, teacher=teacher)
