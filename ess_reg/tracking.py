"""MLflow, behind a small interface: the one module that imports mlflow.

Default store: ``sqlite:///runs/mlflow.db`` with artifacts in ``runs/artifacts`` (both
overridable; ``MLFLOW_TRACKING_URI`` is honoured through the config's default).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

PARENT_RUN_ENV = "ESS_REG_PARENT_RUN_ID"  # set by a multirun's parent run for its jobs


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists become strings."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return out


def _ensure_sqlite_dir(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)


def experiment_id(uri: str, experiment: str, artifact_location: str | None = None) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment``, creating it if needed."""
    _ensure_sqlite_dir(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if artifact_location:
        path = Path(artifact_location)
        path.mkdir(parents=True, exist_ok=True)
        location = path.resolve().as_uri()
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(experiment).experiment_id


class Tracker:
    """One MLflow run: parameters, metrics by step, tags and artifacts."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None,
                 run_name: str | None = None, run_id: str | None = None, parent_run_id: str | None = None):
        self.uri = uri
        self.experiment_id = experiment_id(uri, experiment, artifact_location)
        self.client = MlflowClient(uri)
        if run_id is None:
            tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self._last_step = self._logged_steps()

    def _logged_steps(self) -> dict[str, int]:
        """The last step already logged for each metric: a resumed run never logs a step twice."""
        run = self.client.get_run(self.run_id)
        last = {}
        for key in run.data.metrics:
            history = self.client.get_metric_history(self.run_id, key)
            last[key] = max(m.step for m in history) if history else -1
        return last

    def log_params(self, params: Mapping[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        fresh = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
        for start in range(0, len(fresh), 100):
            batch = dict(list(fresh.items())[start : start + 100])
            self.client.log_batch(self.run_id, params=[mlflow.entities.Param(k, v) for k, v in batch.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        fresh = {k: float(v) for k, v in metrics.items() if step > self._last_step.get(k, -1)}
        if not fresh:
            return
        timestamp = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[mlflow.entities.Metric(k, v, timestamp, step) for k, v in fresh.items()]
        )
        self._last_step.update({k: step for k in fresh})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_json(self, data: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(data, indent=2))
            self.log_artifact(path)

    def log_figure(self, figure, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            figure.savefig(path, dpi=100, bbox_inches="tight")
            self.log_artifact(path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def start_parent_run(uri: str, experiment: str, artifact_location: str | None, run_name: str) -> str:
    """A parent run for a multirun sweep; returns its id."""
    tracker = Tracker(uri, experiment, artifact_location, run_name=run_name)
    return tracker.run_id


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    MlflowClient(uri).set_terminated(run_id, status=status)
