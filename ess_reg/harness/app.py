"""``ess-train``: the Hydra application (the one module that imports hydra).

    ess-train                                   # the default: a small MQAR run, minutes on a CPU
    ess-train model=s6 task.num_kv_pairs=8      # any key of conf/ can be overridden
    ess-train -m model=la,gla hydra/launcher=joblib hydra.launcher.n_jobs=2   # a sweep
    ess-train trainer.resume=<run id>           # continue a stopped run where its checkpoint left it

Everything a run needs is checked before the MLflow run exists (:func:`prepare`): a bad key
or value ends with one line naming it, exit code 2, and nothing written.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import tracking
from .build import ConfigError, build_task, initial_model, probe_settings, trainer_settings
from ..diagnose import LayerReport
from .reporting import ess_figure, ess_table, format_report
from .resume import check_resume, checkpoint_path
from .runinfo import run_name, run_tags
from ..tasks import Task
from .training import (ProbeSettings, TrainerSettings, TrainingDiverged, TrainingInterrupted, fit, layer_keys,
                       probe_batch, resolve_device, resolve_threads)

__all__ = ["compose_config", "prepare", "run", "main", "ConfigError"]

def _config_dir() -> str:
    """``conf/`` ships inside the installed package (``ess_reg/conf``); in a source checkout
    (an editable install) it is the repository's top-level ``conf/``."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"ess-reg's configs are missing: no conf/config.yaml in {package} or {package.parent}")


CONFIG_DIR = _config_dir()
log = logging.getLogger("ess_reg")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config ``ess-train OVERRIDES...`` would run, for notebooks, tests and benchmarks.

    ``${hydra:...}`` interpolations resolve as in a real run, and the run is named and tagged
    from these overrides; the ``hydra`` node is dropped.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides or []), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@dataclass
class Plan:
    """Everything a run needs, built and checked before anything is written."""

    config: dict  # resolved, exactly what trains (an init search's choice included)
    trainer: TrainerSettings
    probe: ProbeSettings
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
        if t.get("artifact_location"):
            tracking.check_writable_dir(t["artifact_location"], "tracking.artifact_location")
        tracking.check_writable_dir(config["trainer"]["checkpoint_dir"], "trainer.checkpoint_dir")
    except ValueError as err:
        raise ConfigError(str(err)) from None


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
    checkpoint is found and loaded, and a config that differs from the stored one in anything
    but the step budget and logging knobs is refused with the differing keys.
    """
    choices, overrides, job = _hydra_context()
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:
        raise ConfigError(f"config: {err}") from None
    trainer = trainer_settings(config["trainer"])
    probe = probe_settings(config["probe"])
    try:
        resolve_device(trainer.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _check_outputs(config)
    task = build_task(config["task"])
    make_optimizer = _make_optimizer(cfg)
    resume_state, changes = None, {}
    if config["trainer"].get("resume"):
        resume_state, config, changes = check_resume(config, trainer.max_steps)

    inputs = probe_batch(task, probe.examples, config["seed"])

    def candidate(i, cand, score, reports):
        log.info("init search: candidate %s -> %s %.4f", cand, config["init"]["score"], score)

    try:
        model, config, search = initial_model(config, task, probe, inputs, on_candidate=candidate)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"init: {err}") from None
    regularizer = None
    if cfg.penalty.get("_target_"):
        try:
            regularizer = instantiate(cfg.penalty)(model, task=task)
            regularizer.check(inputs[:2])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"penalty={choices.get('penalty', cfg.penalty._target_)}: {err}") from None
    return Plan(config, trainer, probe, task, model, make_optimizer, regularizer, choices, overrides, job,
                search, resume_state, changes)


def _console_logging() -> None:
    """Outside Hydra (notebooks, tests), progress still reaches the terminal."""
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


class _JobTag(logging.Filter):
    def __init__(self, job: int):
        super().__init__()
        self.prefix = f"[job {job}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


class _Signals:
    """SIGINT, SIGTERM and SIGHUP while a run trains (main thread only) ask it to stop: the
    training loop stops before its next step (:class:`TrainingInterrupted`), so no write to the
    store or a checkpoint is cut in half (a signal raised inside an SQLite commit left the store
    locked, and the run could not even be marked KILLED). A second signal stops at once."""

    def __enter__(self):
        self.saved, self.received = {}, None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if sig is not None:
                    self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None:
            raise TrainingInterrupted(f"received {self.received}, then {name}")
        self.received = name

    def reason(self) -> str | None:
        return f"received {self.received}" if self.received else None

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _log_start(tracker: tracking.Tracker, plan: Plan) -> None:
    model = plan.model
    if plan.resume_state is None:
        params = {k: v for k, v in tracking.flatten(plan.config).items()
                  if not k.endswith("._partial_")}  # Hydra plumbing, not a setting (config.yaml keeps it)
        tracker.log_params({**params, "num_parameters": sum(p.numel() for p in model.parameters())})
        tracker.set_tags(run_tags(plan.choices, plan.overrides))
        if plan.search is not None:
            tracker.log_json(plan.search.table(), "init_search.json")
            tracker.set_tags({"init.chosen": plan.config["init"]["chosen"],
                              "init.chosen_score": plan.search.scores[plan.search.index]})
    elif plan.resumed_changes:
        tracker.set_tags({f"resumed.{k}": f"{a} -> {b}" for k, (a, b) in plan.resumed_changes.items()})


def _log_end(tracker: tracking.Tracker, plan: Plan, result: dict, final_figure=None) -> None:
    reports: dict[str, LayerReport] = result["reports"]
    verdict, thresholds = result["verdict"], plan.probe.thresholds
    keys = layer_keys(reports)
    tracker.delete_tags("failure_reason")
    tracker.set_tags({"verdict": verdict.mode, "verdict.reason": verdict.reason,
                      "layers": ", ".join(f"{k}={name}" for name, k in keys.items()),
                      **{f"state.{keys[name]}": use for name, use in verdict.layers.items()},
                      "mlflow.note.content": f"**{verdict.mode}**: {verdict.reason}"})
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(OmegaConf.to_yaml(OmegaConf.create(plan.config)))
        tracker.log_artifact(config_path)
    tracker.log_json(ess_table(reports, verdict, thresholds), "ess_table.json")
    import matplotlib.pyplot as plt

    # The final evaluation's figure (already drawn for its step), retitled: not drawn twice.
    figure = final_figure if final_figure is not None else ess_figure(reports, thresholds)
    figure.suptitle(f"final: {verdict.mode}", fontsize=10)
    tracker.log_figure(figure, "ess_vs_index.png")
    plt.close(figure)
    tracker.log_artifact(result["checkpoint"], "checkpoint")


def run(cfg: DictConfig) -> dict:
    """Train as ``cfg`` says and log everything; returns :func:`ess_reg.harness.training.fit`'s result
    with the MLflow ``run_id`` added."""
    _console_logging()
    plan = prepare(cfg)
    config, trainer, probe = plan.config, plan.trainer, plan.probe
    t = config["tracking"]
    swept = os.environ.get(tracking.SWEEP_KEYS_ENV)
    name = t.get("run_name") or run_name(plan.choices, plan.overrides, swept.split(",") if swept else None)
    resume_id = plan.resume_state["run_id"] if plan.resume_state is not None else None
    tracker = tracking.Tracker(t["uri"], t["experiment"], t["artifact_location"], run_name=name, run_id=resume_id,
                               parent_run_id=None if resume_id else os.environ.get(tracking.PARENT_RUN_ENV))
    job_tag = _JobTag(plan.job) if plan.job is not None else None
    if job_tag is not None:
        log.addFilter(job_tag)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(trainer.threads))
    try:
        with _Signals() as signals:
            _log_start(tracker, plan)
            log.info("ess-train: %s -> MLflow run %s %r (%s, experiment %r)%s", config["model"]["mixer"],
                     tracker.run_id, name, t["uri"], t["experiment"],
                     f", resuming at step {plan.resume_state['step']}" if resume_id else "")

            figures = []  # the latest evaluation's figure, kept for the final artifact

            def on_evaluate(step, reports, metrics):
                import matplotlib.pyplot as plt

                while figures:
                    plt.close(figures.pop())
                figures.append(ess_figure(reports, probe.thresholds, f"step {step}"))
                tracker.log_image(figures[-1], "ess_vs_index", step)

            try:
                result = fit(plan.model, plan.task, plan.make_optimizer, trainer, probe, tracker,
                             checkpoint_path=checkpoint_path(config["trainer"]["checkpoint_dir"], tracker.run_id),
                             seed=config["seed"], config=config, resume_state=plan.resume_state,
                             regularizer=plan.regularizer, on_evaluate=on_evaluate, stop=signals.reason)
            except TrainingDiverged as err:
                tracker.set_tags({"failure_reason": str(err)})
                tracker.finish("FAILED")
                log.error("ess-train: run %s FAILED: %s", tracker.run_id, err)
                raise
            except KeyboardInterrupt as err:
                tracker.set_tags({"failure_reason": f"interrupted ({err or 'SIGINT'}); continue it with "
                                                    f"trainer.resume={tracker.run_id}"})
                tracker.finish("KILLED")
                raise
            except BaseException as err:
                tracker.set_tags({"failure_reason": f"{type(err).__name__}: {err}"[:2000]})
                tracker.finish("FAILED")
                raise
            _log_end(tracker, plan, result, figures.pop() if figures else None)
            tracker.finish("FINISHED")
    finally:
        torch.set_num_threads(threads_before)
        if job_tag is not None:
            log.removeFilter(job_tag)
    log.info("\n%s", format_report(result["reports"], result["verdict"], probe.thresholds))
    accuracy = result["metrics"].get("valid/accuracy")
    if accuracy is not None:
        log.info("\nvalid accuracy %.3f after %d steps", accuracy, result["steps"])
    log.info("look at it: mlflow ui --backend-store-uri %s   (run %s)", t["uri"], tracker.run_id)
    result["run_id"] = tracker.run_id
    result["config"] = config
    return result


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ConfigError as err:
        print(f"ess-train: error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
