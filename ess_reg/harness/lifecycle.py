"""What a run writes to its MLflow run besides the metrics: at the start and at the end."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from . import tracking
from ..environment import machine
from .plan import Plan
from .settings import resolve_device
from .findings import ess_figure, ess_table
from .naming import CHOSEN_GROUPS, run_tags
from ..layer_report import layer_keys
from .training import FitResult, TrainingDiverged

__all__ = ["record_start", "record_end", "run_status"]

log = logging.getLogger("ess_reg")


def _resume_hint(tracker: tracking.Tracker, checkpoint: Path | None) -> str:
    """How to go on from the run's last checkpoint, if it has one."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return ""
    return f"; its last checkpoint ({checkpoint}) continues it: ess-train trainer.resume={tracker.run_id}"


@contextmanager
def run_status(tracker: tracking.Tracker, checkpoint: Path | None = None) -> Iterator[None]:
    """Close the run with the status that says how it ended, and why when it did not finish:
    FINISHED; FAILED with the reason (a diverged loss, any error); KILLED on an interrupt, with
    the command that continues it, and when the store stayed away (if it answers that once)."""
    try:
        yield
    except tracking.StoreUnavailable as err:  # nothing can wait longer: one try at a true status
        where = getattr(err, "checkpoint", None)
        err.hint = (f"run {tracker.run_id} stopped at step {getattr(err, 'step', '?')}"
                    + (f", checkpoint {where}" if where else "")
                    + (f"; {tracker.kept_aside} writes the store did not take wait in {tracker.spool} and are logged "
                       "on resume" if tracker.kept_aside and tracker.spool else "")
                    + f". Once the store answers: ess-train trainer.resume={tracker.run_id}")
        marked = tracker.give_up(f"{err}; {err.hint}")
        log.error("ess-train: run %s %s: %s", tracker.run_id,
                  "KILLED" if marked else "stopped (its status in the store could not be changed)", err)
        raise
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
    except BaseException as err:  # a crash, or a torchrun process that died under this one
        hint = _resume_hint(tracker, checkpoint)
        tracker.set_tags({"failure_reason": f"{type(err).__name__}: {str(err)[:1500]}{hint}"})
        tracker.finish("FAILED")
        if hint:
            log.error("ess-train: run %s FAILED (%s)%s", tracker.run_id, type(err).__name__, hint)
        raise
    tracker.finish("FINISHED")


def record_start(tracker: tracking.Tracker, plan: Plan) -> None:
    """Params, tags and the init search's table of a new run; the changed keys of a resumed one."""
    model = plan.model
    if plan.resume_state is None:
        params = {k: v for k, v in tracking.flatten(plan.config).items()
                  if not k.endswith("._partial_")}  # Hydra plumbing, not a setting (config.yaml keeps it)
        # The chosen option of each config group as a param too (penalty=ess_max), so that the
        # UI's compare view can use it as an axis; tags cannot be axes.
        chosen = {g: str(c) for g, c in plan.choices.items() if g in CHOSEN_GROUPS and c is not None}
        tracker.log_params({**params, **chosen, "num_parameters": sum(p.numel() for p in model.parameters())})
        tracker.set_tags(run_tags(plan.choices, plan.overrides))
        # A seed and config fix the numbers only with the machine and stack: record where it ran.
        tracker.set_tags({f"machine.{k}": v for k, v in machine(resolve_device(plan.trainer.device)).items()})
        if plan.teacher is not None:
            teacher_model = plan.teacher.config.get("model", {})
            tracker.set_tags({"distill.teacher_checkpoint": plan.teacher.source,
                              "distill.teacher_run": plan.teacher.run_id or "",
                              "distill.teacher_mixer": teacher_model.get("mixer", "")})
        if plan.search is not None:
            tracker.log_json(plan.search.rows(), "init_search.json")
            tracker.set_tags({"init.chosen": plan.config["init"]["chosen"],
                              "init.chosen_score": plan.search.scores[plan.search.index]})
    else:
        # the machine of the last resume beside the one the run started on (machine.*)
        here = machine(resolve_device(plan.trainer.device))
        tracker.set_tags({"machine.last_resume": "; ".join(f"{k} {v}" for k, v in here.items())})
        if plan.resumed_changes:
            tracker.set_tags({f"resumed.{k}": f"{a} -> {b}" for k, (a, b) in plan.resumed_changes.items()})


def record_end(tracker: tracking.Tracker, plan: Plan, result: FitResult, final_figure=None) -> None:
    """The verdict as tags and the run's description, the config, the ESS table and figure, the
    checkpoint."""
    reports, verdict, thresholds = result.reports, result.verdict, plan.probe.thresholds
    keys = layer_keys(reports)
    tracker.delete_tags("failure_reason")
    # The first verdict is also a param (an axis in the compare view); MLflow params cannot
    # change, so a resumed run's current verdict is its tag.
    tracker.log_params({"verdict": verdict.mode})
    tracker.set_tags({"verdict": verdict.mode, "verdict.reason": verdict.reason,
                      "layers": ", ".join(f"{k}={name}" for name, k in keys.items()),
                      **{f"state.{keys[name]}": use for name, use in verdict.layers.items()},
                      "mlflow.note.content": f"**{verdict.mode}**: {verdict.reason}",
                      # where the run ended: trainer.stop's reason, or its budget
                      "stopped": (f"step {result.steps}: {result.stopped}" if result.stopped
                                  else f"step {result.steps}: the budget (trainer.max_steps)")})
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
    tracker.log_artifact(result.checkpoint, "checkpoint")
