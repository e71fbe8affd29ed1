"""A sweep (``ess-train -m ...``) as one MLflow parent run with a child run per job.

The parent records what was swept, ends FINISHED when every job did (else FAILED or KILLED:
never left RUNNING, even when a job raises and Hydra exits early), and carries a summary:
a table of its children (overrides, status, accuracy, ESS figures, verdict) and a plot of
accuracy against ESS/kv.
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from . import tracking

__all__ = ["SweepCallback", "swept_keys", "sweep_overrides", "summarize_sweep", "sweep_digest"]

log = logging.getLogger("ess_reg")
COLUMNS = ("valid/accuracy", "ess/util", "ess/per_kv", "ess/total")
DEFAULT_URI = tracking.DEFAULT_URI


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a multirun's overrides sweep: those given several values (``a=1,2``, ranges...)."""
    keys = []
    for override in overrides:
        key, _, value = override.partition("=")
        if "," in value or value.startswith(("range(", "choice(", "interval(", "glob(", "tag(")):
            keys.append(key.lstrip("+~"))
    return keys


def sweep_overrides(config: DictConfig) -> list[str]:
    """What a multirun sweeps: the config's ``hydra.sweeper.params`` (a study preset's sweep),
    then the command line's overrides, which win for the same key."""
    command_line = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    given = {o.partition("=")[0].lstrip("+~") for o in command_line}
    params = OmegaConf.select(config, "hydra.sweeper.params")
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    from_config = [f"{k}={v}" for k, v in params.items() if k not in given]
    return from_config + command_line


def summarize_sweep(uri: str, parent_run_id: str) -> dict:
    """Table of the parent's children and a plot of accuracy against ESS/kv, logged to the
    parent as ``sweep_summary.md``, ``sweep_summary.json`` and ``accuracy_vs_ess_per_kv.png``.
    Returns the rows."""
    children = tracking.child_runs(uri, parent_run_id)
    rows = []
    for child in children:
        tags, metrics = child.data.tags, child.data.metrics
        rows.append({"run_id": child.info.run_id, "name": child.info.run_name, "status": child.info.status,
                     "overrides": tags.get("overrides", ""), "verdict": tags.get("verdict", "-"),
                     **{k: metrics.get(k) for k in COLUMNS}})
    client_tracker = tracking.Tracker.attach(uri, parent_run_id)
    client_tracker.log_json(rows, "sweep_summary.json")

    def cell(value):
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    header = ["run", "status", *COLUMNS, "verdict", "overrides"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([r["name"], r["status"], *(cell(r[k]) for k in COLUMNS), r["verdict"],
                                        f"`{r['overrides']}`"]) + " |")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep_summary.md"
        path.write_text(f"# Sweep {parent_run_id}: {len(rows)} runs\n\n" + "\n".join(lines) + "\n")
        client_tracker.log_artifact(path)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r["valid/accuracy"] is not None and r["ess/per_kv"] is not None]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in points:  # translucent: runs on top of each other stay visible
        ax.scatter(r["ess/per_kv"], r["valid/accuracy"], alpha=0.6, edgecolors="black", linewidths=0.4)
        ax.annotate(r["name"], (r["ess/per_kv"], r["valid/accuracy"]), fontsize=6, alpha=0.8)
    ax.set_ylim(-0.02, 1.02)  # the full range: noise among runs at chance is not stretched into a trend
    ax.set_xlabel("ESS/kv (per head or channel, at the end of the context)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"sweep: {len(points)} of {len(rows)} runs (one seed each unless swept)", fontsize=9)
    client_tracker.log_figure(fig, "accuracy_vs_ess_per_kv.png")
    plt.close(fig)
    return rows


def sweep_digest(uri: str, parent_run_id: str, rows: list[dict]) -> str:
    """What a person reads when a sweep ends: each job's accuracy and verdict, where to look,
    and the report to run next."""
    width = max(len(r["name"] or "") for r in rows)
    lines = [f"{'run':<{width}}  status    accuracy  verdict"]
    for r in sorted(rows, key=lambda r: -(r["valid/accuracy"] or -1)):
        accuracy = "-" if r["valid/accuracy"] is None else f"{r['valid/accuracy']:.3f}"
        lines.append(f"{r['name'] or r['run_id']:<{width}}  {r['status']:<8}  {accuracy:>8}  {r['verdict']}")
    experiment = tracking.get_run(uri, parent_run_id).info.experiment_id
    lines += ["", tracking.where_to_look(uri, experiment, run_id=parent_run_id,
                                         compare=[r["run_id"] for r in rows if r["status"] == "FINISHED"]),
              f"next: ess-report --parent {parent_run_id}" + ("" if uri == DEFAULT_URI else f" --tracking-uri {uri}")
              + "   (groups the runs by configuration, compares them with the statistics they can carry)"]
    return "\n".join(lines)


SEARCH_RESULT = "optimization_results.yaml"  # what a tuning sweeper (Optuna's) writes in the sweep folder


def _log_search_result(uri: str, parent_run_id: str, sweep_dir: Path | None) -> None:
    """A tuning sweep's answer on its parent run: the sweeper's result file as an artifact, and
    the best value and parameters as tags (read in the MLflow UI's run list)."""
    path = None if sweep_dir is None else sweep_dir / SEARCH_RESULT
    if path is None or not path.is_file():
        return  # a grid sweep: its summary table is the answer
    result = OmegaConf.to_container(OmegaConf.load(path))
    tracker = tracking.Tracker.attach(uri, parent_run_id)
    tracker.log_artifact(path)
    if "best_value" in result:
        tracker.set_tags({"sweep.best_value": result["best_value"],
                          "sweep.best_params": " ".join(f"{k}={v}" for k, v in result["best_params"].items())})
    log.info("ess-train: search result %s", {k: result[k] for k in ("best_params", "best_value") if k in result})


class SweepCallback(Callback):
    """Hydra callback: the parent run of a multirun (its id reaches the jobs via the environment)."""

    def __init__(self):
        self.run_id: str | None = None
        self.uri: str | None = None
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        t = config.tracking
        overrides = sweep_overrides(config)
        keys = swept_keys(overrides)
        name = f"sweep {' '.join(keys) or '-'} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        tracker = tracking.Tracker(t.uri, t.experiment, t.artifact_location, run_name=name)
        tracker.set_tags({"sweep.overrides": " ".join(overrides), "sweep.keys": ",".join(keys),
                          "mlflow.note.content": f"Sweep over {', '.join(keys) or 'nothing'}: "
                                                 f"`ess-train -m {' '.join(overrides)}`"})
        self.run_id, self.uri = tracker.run_id, t.uri
        self.sweep_dir = Path(config.hydra.sweep.dir)
        os.environ[tracking.PARENT_RUN_ENV] = self.run_id
        os.environ[tracking.SWEEP_KEYS_ENV] = ",".join(keys)
        atexit.register(self._close, None)  # a failed job makes Hydra exit without on_multirun_end
        log.info("ess-train: sweep parent run %s over %s", self.run_id, keys)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._close("FINISHED")

    def _close(self, status: str | None) -> None:
        if self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None
        os.environ.pop(tracking.PARENT_RUN_ENV, None)
        os.environ.pop(tracking.SWEEP_KEYS_ENV, None)
        try:
            rows = summarize_sweep(self.uri, run_id)
        except Exception as err:  # the summary must never keep the parent open
            log.error("ess-train: sweep summary failed: %s", err)
            rows = []
        try:
            _log_search_result(self.uri, run_id, self.sweep_dir)
        except Exception as err:
            log.error("ess-train: the search's result was not logged: %s", err)
        statuses = {r["status"] for r in rows}
        if status is None:  # ended early (a job raised, Ctrl-C): say why, from the children
            status = "KILLED" if "KILLED" in statuses else "FAILED"
        elif statuses - {"FINISHED"}:
            status = "FAILED"
        tracking.finish_run(self.uri, run_id, status)
        log.info("ess-train: sweep parent run %s %s (%d jobs)", run_id, status, len(rows))
        if rows:
            log.info("\n%s", sweep_digest(self.uri, run_id, rows))
