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


# ---- outages: the store goes away while a run trains -------------------------------------

import http.client  # noqa: E402

import torch  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from ess_reg.harness.ess_train import compose_config, run  # noqa: E402
from ess_reg.harness.outages import StoreUnavailable, retrying, transient  # noqa: E402

CUT = http.client.IncompleteRead(b"{}", 120)  # an answer cut short: MLflow does not retry it
REFUSED = MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception "
                          "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded (Connection refused)")


def test_passing_troubles_are_told_from_real_errors():
    assert transient(CUT) and transient(REFUSED) and transient(ConnectionResetError())
    assert transient(MlflowException("API request to endpoint /x failed with error code 503 != 200"))
    wrapped = RuntimeError("upload failed")
    wrapped.__cause__ = CUT
    assert transient(wrapped)
    assert not transient(MlflowException("Run 'abc' not found", error_code="RESOURCE_DOES_NOT_EXIST"))
    assert not transient(MlflowException("API request to endpoint /x failed with error code 400 != 200"))
    assert not transient(ValueError("bad value"))


def test_retrying_waits_out_a_passing_trouble_and_gives_up_after_the_window():
    clock = [0.0]
    sleep = lambda s: clock.__setitem__(0, clock[0] + s)  # noqa: E731
    calls = []

    def flaky():
        calls.append(clock[0])
        if len(calls) < 4:
            raise CUT
        return "ok"

    assert retrying(flaky, uri="u", window=60, what="x", sleep=sleep, clock=lambda: clock[0]) == "ok"
    assert calls == [0.0, 0.5, 1.5, 3.5]  # a doubling backoff
    with pytest.raises(StoreUnavailable,
                       match=r"the tracking store at u has not answered for 10 s \(MlflowException: API request"):
        retrying(lambda: (_ for _ in ()).throw(REFUSED), uri="u", window=10, what="x", sleep=sleep,
                 clock=lambda: clock[0])
    with pytest.raises(ValueError, match="bad"):  # not a trouble that passes: at once
        retrying(lambda: (_ for _ in ()).throw(ValueError("bad")), uri="u", window=10, what="x", sleep=sleep,
                 clock=lambda: clock[0])


class Outage:
    """Every write to the store fails as a cut connection while ``down`` is set; ``down_at`` sets
    it once a metric of that step is written, ``up_after`` (calls) clears it again."""

    WRITES = ("log_batch", "log_image", "set_tag", "set_terminated", "log_artifact", "update_run", "delete_tag")

    def __init__(self, monkeypatch, down_at: int, up_after: int | None = None):
        self.down, self.down_at, self.up_after, self.failed = False, down_at, up_after, 0
        for name in self.WRITES:
            original = getattr(MlflowClient, name)
            monkeypatch.setattr(MlflowClient, name, self._wrap(original, name))

    def _wrap(self, original, name):
        def write(client, *args, **kwargs):
            metrics = kwargs.get("metrics") or []
            if name == "log_batch" and any(m.step >= self.down_at for m in metrics) and self.up_after != 0:
                self.down = self.down or self.failed == 0
            if self.down:
                self.failed += 1
                if self.up_after is not None and self.failed > self.up_after:
                    self.down, self.up_after = False, 0
                else:
                    raise CUT
            return original(client, *args, **kwargs)
        return write


def _steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_store_away_for_a_while_costs_nothing(store, tiny, monkeypatch, caplog):
    caplog.set_level("WARNING", logger="ess_reg")
    outage = Outage(monkeypatch, down_at=3, up_after=6)  # away for 6 writes, then back
    result = run(compose_config(tiny("trainer.log_every=1", "trainer.max_steps=12", "trainer.eval_every=4")))
    assert outage.failed > 6 and not outage.down
    client = MlflowClient(store["uri"])
    logged = client.get_run(result.run_id)
    assert logged.info.status == "FINISHED"
    assert _steps(client, result.run_id, "train/loss") == list(range(1, 13))  # each step once, none lost
    assert _steps(client, result.run_id, "valid/accuracy") == [0, 4, 8, 12]
    assert "training goes on, metrics are kept aside" in caplog.text and "answers again" in caplog.text
    assert not list((store["dir"] / "ckpt").glob("*/unlogged*"))  # the spool is gone once logged


def test_a_store_away_too_long_stops_the_run_with_its_work_kept_and_the_resume_logs_the_rest(store, tiny, monkeypatch):
    overrides = tiny("trainer.log_every=1", "trainer.max_steps=400", "trainer.eval_every=200",
                     "tracking.retry_seconds=0.5")
    with monkeypatch.context() as away:  # the outage ends before the resume
        outage = Outage(away, down_at=3)
        with pytest.raises(StoreUnavailable) as raised:
            run(compose_config(overrides))
    err = raised.value
    assert outage.down and err.step >= 3
    assert "trainer.resume=" in err.hint and "wait in" in err.hint and f"stopped at step {err.step}" in err.hint
    (folder,) = (store["dir"] / "ckpt").iterdir()
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == err.step  # the work up to the stop is kept
    assert (folder / "unlogged.jsonl").is_file()
    client = MlflowClient(store["uri"])
    assert max(_steps(client, folder.name, "train/loss")) < 3  # the store saw nothing after the outage began
    assert client.get_run(folder.name).info.status == "RUNNING"  # it could not be told otherwise

    result = run(compose_config([*overrides, f"trainer.resume={folder.name}"]))
    assert result.run_id == folder.name and result.resumed_from == err.step
    assert _steps(client, folder.name, "train/loss") == list(range(1, 401))  # kept-aside steps replayed, once
    assert client.get_run(folder.name).info.status == "FINISHED"
    assert not (folder / "unlogged.jsonl").exists()


def test_a_run_that_fails_after_a_checkpoint_says_how_to_continue_it(store, tmp_path):
    from ess_reg.harness.lifecycle import run_status

    client = MlflowClient(store["uri"])
    checkpoint = tmp_path / "last.pt"
    for saved in (False, True):
        if saved:
            checkpoint.write_bytes(b"a checkpoint")
        tracker = tracking.Tracker(store["uri"], "faults", store["artifacts"])
        with pytest.raises(RuntimeError):
            with run_status(tracker, checkpoint):  # as rank 0 sees a torchrun peer that died
                raise RuntimeError("[../third_party/gloo/transport/tcp/pair.cc:534] Connection closed by peer")
        run = client.get_run(tracker.run_id)
        assert run.info.status == "FAILED" and "Connection closed by peer" in run.data.tags["failure_reason"]
        assert (f"ess-train trainer.resume={tracker.run_id}" in run.data.tags["failure_reason"]) == saved


def test_a_replay_cut_short_by_the_store_keeps_every_record_and_the_next_write_flushes_them(store, tmp_path,
                                                                                             monkeypatch):
    import json

    tracker = tracking.Tracker(store["uri"], "faults", store["artifacts"])
    tracker.spool = tmp_path / "unlogged.jsonl"
    kept = [{"kind": "metrics", "step": s, "metrics": {"x": float(s)}, "timestamp": 1} for s in (1, 2, 3)]
    tracker.spool.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"kind": "metr')  # killed mid-line
    with monkeypatch.context() as away:
        Outage(away, down_at=0)  # the store fails every write during the replay
        assert tracker.replay_spool() == 3
    assert tracker.kept_aside == 3 and len(tracker.spool.read_text().splitlines()) == 3  # kept anew, on disk
    assert not (tmp_path / "unlogged.replay.jsonl").exists()
    tracker.finish()  # the store is back: what waits goes first
    assert _steps(MlflowClient(store["uri"]), tracker.run_id, "x") == [1, 2, 3] and not tracker.spool.exists()
