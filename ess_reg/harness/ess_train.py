"""``ess-train``: the Hydra application, a thin entry point that composes the pieces below.

    ess-train                                   # the default: a small MQAR run, minutes on a CPU
    ess-train model=s6 task.num_kv_pairs=8      # any key of conf/ can be overridden
    ess-train -m model=la,gla hydra/launcher=joblib hydra.launcher.n_jobs=2   # a sweep
    ess-train trainer.resume=<run id>           # continue a stopped run where its checkpoint left it

Everything a run needs is checked before the MLflow run exists (:func:`ess_reg.harness.plan.prepare`):
a bad key or value ends with one line naming it, exit code 2, and nothing written. The pieces
live in their own modules: the plan (``plan``), the loop (``training``), the probe
(``run_probe``), checkpoints, what is recorded in MLflow (``record``), reports and plots
(``reporting``), signals and logging (``process``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import tracking
from .build import ConfigError, config_dir
from .checkpoints import checkpoint_path
from .distributed import Distributed, NullTracker
from .ownership import RunLock
from .plan import Plan, prepare
from .process import JobTag, StopOnSignal, console_logging
from .lifecycle import record_end, record_start, run_status
from .findings import ess_figure, format_report
from .naming import run_name
from .settings import resolve_device, resolve_threads
from .training import FitResult, fit

__all__ = ["compose_config", "prepare", "run", "main", "ConfigError", "Plan"]


CONFIG_DIR = config_dir()
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


def run(cfg: DictConfig) -> FitResult:
    """Train as ``cfg`` says and log everything; returns the :class:`FitResult` with the MLflow
    ``run_id`` and the config that trained. Under ``torchrun``, every process trains its slice of
    each batch and process 0 writes (:mod:`ess_reg.harness.distributed`)."""
    distributed = Distributed.from_env()
    console_logging()
    if not distributed.is_main:
        log.setLevel(logging.WARNING)  # one process speaks
    plan = prepare(cfg)
    try:
        distributed.check_batch(plan.trainer.batch_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    distributed.start(resolve_device(plan.trainer.device))
    try:
        return _run(plan, distributed)
    finally:
        distributed.stop()


def _run(plan: Plan, distributed: Distributed) -> FitResult:
    config = plan.config
    t = config["tracking"]
    swept = os.environ.get(tracking.SWEEP_KEYS_ENV)
    name = t.get("run_name") or run_name(plan.choices, plan.overrides, swept.split(",") if swept else None)
    resume_id = plan.resume_state["run_id"] if plan.resume_state is not None else None
    with contextlib.ExitStack() as owned:
        if distributed.is_main:
            if resume_id:  # before the run is reopened: a run another process is training is refused
                owned.enter_context(RunLock(_run_folder(config, resume_id), resume_id))
            tracker = tracking.Tracker(t["uri"], t["experiment"], t["artifact_location"], run_name=name,
                                       run_id=resume_id,
                                       parent_run_id=None if resume_id else os.environ.get(tracking.PARENT_RUN_ENV),
                                       retry_seconds=t.get("retry_seconds", tracking.RETRY_SECONDS))
            if not resume_id:
                owned.enter_context(RunLock(_run_folder(config, tracker.run_id), tracker.run_id))
            name = tracker.run_name or name  # a resumed run is named as it was, not after this command line
            tracker.spool = _run_folder(config, tracker.run_id) / SPOOL_NAME
            tracker.replay_spool()  # what an earlier process of this run could not log
            distributed.broadcast(tracker.run_id)
        else:
            tracker = NullTracker(distributed.broadcast(None))
        return _train(plan, distributed, tracker, name, resume_id)


SPOOL_NAME = "unlogged.jsonl"  # beside the checkpoint: what the store did not take yet


def _run_folder(config, run_id: str):
    return checkpoint_path(config["trainer"]["checkpoint_dir"], run_id).parent


def _train(plan: Plan, distributed: Distributed, tracker, name: str, resume_id: str | None) -> FitResult:
    config, trainer, probe = plan.config, plan.trainer, plan.probe
    t = config["tracking"]
    job_tag = JobTag(plan.job) if plan.job is not None else None
    if job_tag is not None:
        log.addFilter(job_tag)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(trainer.threads))
    try:
        checkpoint = checkpoint_path(config["trainer"]["checkpoint_dir"], tracker.run_id)
        with StopOnSignal() as signals, (run_status(tracker, checkpoint) if distributed.is_main
                                         else contextlib.nullcontext()):
            if distributed.is_main:
                record_start(tracker, plan)
                if distributed.enabled:  # the logged trainer.batch_size is the global batch: say how it was split
                    tracker.set_tags({"distributed.world_size": distributed.world_size,
                                      "distributed.batch_per_process": trainer.batch_size // distributed.world_size})
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

            result = fit(plan.model, plan.task, plan.make_optimizer, trainer, probe, tracker,
                         checkpoint_path=checkpoint,
                         seed=config["seed"], config=config, resume_state=plan.resume_state,
                         regularizer=plan.regularizer, teacher=plan.teacher, distributed=distributed,
                         on_evaluate=on_evaluate, stop=signals.reason)
            if distributed.is_main:
                record_end(tracker, plan, result, figures.pop() if figures else None)
    finally:
        torch.set_num_threads(threads_before)
        if job_tag is not None:
            log.removeFilter(job_tag)
    result.run_id, result.config = tracker.run_id, config
    if not distributed.is_main:
        return result
    log.info("\n%s", format_report(result.reports, result.verdict, probe.thresholds))
    if result.accuracy is not None:
        log.info("\nvalid accuracy %.3f after %d steps%s", result.accuracy, result.steps,
                 f" (trainer.stop: {result.stopped})" if result.stopped else "")
    log.info("%s", tracking.where_to_look(t["uri"], tracker.experiment_id, run_id=tracker.run_id))
    return result


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Runs ``cfg``; returns the validation accuracy at the end, the objective a tuning sweeper
    (``hydra/sweeper=optuna``, conf/experiment/tune_penalty.yaml) maximizes; None without one."""
    try:
        return run(cfg).accuracy
    except ConfigError as err:
        print(f"ess-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    except tracking.StoreUnavailable as err:
        hint = getattr(err, "hint", "the run did not start; start it again once the store answers")
        print(f"ess-train: error: {err}; {hint}", file=sys.stderr)
        sys.exit(3)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
