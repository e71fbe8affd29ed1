"""The MLflow store under faults: concurrent first use, interrupted creation, bad URIs."""

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


def start(uri, name, env):
    return subprocess.Popen([sys.executable, "-c", OPEN_AND_RUN, uri, name], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished_runs(uri):
    client = MlflowClient(uri)
    return sorted(r.info.run_name for r in client.search_runs([client.get_experiment_by_name("race").experiment_id])
                  if r.info.status == "FINISHED")


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_two_processes_starting_on_one_fresh_store_both_succeed(store, child_env, attempt):
    processes = [start(store["uri"], name, child_env) for name in ("a", "b")]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    assert finished_runs(store["uri"]) == ["a", "b"]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.05, 0.3])  # here, 0.2-0.4 s into creation left a half-made store
def test_a_store_whose_creation_was_killed_is_made_anew_and_keeps_working(store, child_env, delay):
    db = store["dir"] / "mlflow.db"
    process = start(store["uri"], "killed", child_env)
    deadline = time.time() + 120
    while not db.exists() or db.stat().st_size == 0:  # creation has begun
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    survivor = start(store["uri"], "next", child_env)
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-2000:]
    assert "next" in finished_runs(store["uri"])


def test_a_store_that_holds_runs_is_never_moved_aside(store):
    tracker = tracking.Tracker(store["uri"], "race", None, run_name="kept")
    tracker.finish()
    # Pins tracking._run_count, the count open_store consults before it moves a store aside (no public route).
    assert tracking._run_count(store["dir"] / "mlflow.db") == 1
    tracking.open_store(store["uri"])  # a usable store: opened as it is
    assert [p.name for p in store["dir"].iterdir() if "broken" in p.name] == []
    assert finished_runs(store["uri"]) == ["kept"]


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
