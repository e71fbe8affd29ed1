"""ESSMonitor logging into a real MLflow store, read back."""

import mlflow
from mlflow.tracking import MlflowClient

from ess_reg import ESSMonitor
from ess_reg.tasks import MQAR

from factories import lm


def test_the_monitor_logs_through_mlflow_and_the_store_holds_every_measurement(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    task = MQAR(vocab_size=32, seq_len=24, num_kv_pairs=2)
    model = lm("gla")
    monitor = ESSMonitor(model, task.test_set(4, seed=1).inputs, every=2, log=mlflow.log_metrics, task=task)
    with mlflow.start_run() as run:
        for step in range(5):
            monitor(step)
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "ess/util")
    assert [m.step for m in history] == [0, 2, 4]
    assert history[-1].value == monitor.last["ess/util"]
