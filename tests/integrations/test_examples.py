"""The scripts under examples/ run, each for a few steps, and log ESS into a real MLflow store."""

import importlib.util
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, steps, needs", [("plain_loop", 20, None), ("hf_trainer", 10, "transformers"),
                                               ("lightning_module", 10, "lightning")])
def test_each_example_runs_and_logs_ess(name, steps, needs, tmp_path, monkeypatch):
    if needs:
        pytest.importorskip(needs)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # whatever a framework writes beside it lands here
    mlflow.set_tracking_uri(uri)  # as in a fresh process: an earlier example's store is not this one's
    load(name).main(["--steps", str(steps), "--tracking-uri", uri])
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("examples").experiment_id])
    history = client.get_metric_history(run.info.run_id, "ess/util")
    assert len(history) >= 2 and all(0 < m.value <= 1 for m in history)
