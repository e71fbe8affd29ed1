"""The MLflow store under faults: concurrent first use, interrupted creation, bad URIs."""

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from ess_reg.harness import tracking

OPEN_AND_RUN = """
import sys
from ess_reg.harness import tracking
t = tracking.Tracker(sys.argv[1], "race", None, run_name=sys.argv[2])
t.log_metrics({"x": 1.0}, 0)
t.finish("FINISHED")
"""


def start(uri, name):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, "-c", OPEN_AND_RUN, uri, name], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished_runs(uri):
    client = MlflowClient(uri)
    return sorted(r.info.run_name for r in client.search_runs([client.get_experiment_by_name("race").experiment_id])
                  if r.info.status == "FINISHED")


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_two_processes_starting_on_one_fresh_store_both_succeed(tmp_path, attempt):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    processes = [start(uri, name) for name in ("a", "b")]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    assert finished_runs(uri) == ["a", "b"]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.05, 0.3])  # here, 0.2-0.4 s into creation left a half-made store
def test_a_store_whose_creation_was_killed_is_made_anew_and_keeps_working(tmp_path, delay):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    process = start(uri, "killed")
    deadline = time.time() + 120
    while not db.exists() or db.stat().st_size == 0:  # creation has begun
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    survivor = start(uri, "next")
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-2000:]
    assert "next" in finished_runs(uri)


def test_a_store_that_holds_runs_is_never_moved_aside(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = tracking.Tracker(uri, "race", None, run_name="kept")
    tracker.finish()
    assert tracking._run_count(tmp_path / "mlflow.db") == 1
    tracking.open_store(uri)  # a usable store: opened as it is
    assert [p.name for p in tmp_path.iterdir() if "broken" in p.name] == []


@pytest.mark.parametrize("uri, message", [
    ("sqlite:///", "keeps nothing"),
    ("sqlite:///:memory:", "keeps nothing"),
    ("garbage://x", "unknown store scheme"),
    ("garbage", "not a store URI \\(no scheme\\)"),
    ("http://127.0.0.1:9", "no tracking server answers"),
])
def test_bad_store_uris_fail_fast_with_the_reason(uri, message):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        tracking.check_store(uri, timeout=2)
    assert time.perf_counter() - start < 5


def test_an_unwritable_store_path_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        tracking.check_store(f"sqlite:///{blocker}/sub/mlflow.db")
    with pytest.raises(ValueError, match="trainer.checkpoint_dir=.*is a file, not a folder"):
        tracking.check_writable_dir(blocker / "ckpt", "trainer.checkpoint_dir")
