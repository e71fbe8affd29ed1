"""Load and fault bench: does anything get lost, logged twice or mislabelled when runs crowd one
store, the tracking server restarts, processes are killed, or two processes resume one run?

    python bench/faults.py                   # every case at its full size (about 10 min on 2 cores)
    python bench/faults.py --quick           # small sizes, a minute or two
    python bench/faults.py --cases outage    # one case: concurrent, outage, kill, race

Each case runs real `ess-train` processes (experiment=tiny) in a scratch folder and reads the
store back. Figures per case: runs finished, runs whose every step was logged exactly once,
runs lost (no FINISHED status and no checkpoint to resume from; goal 0), statuses true. Prints a
markdown table; nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

TRAIN = [sys.executable, "-m", "ess_reg.harness.ess_train"]


@dataclass
class Outcome:
    case: str
    runs: int
    finished: int
    logged_once: int
    lost: int
    statuses_true: bool
    seconds: float
    note: str = ""


def env() -> dict:
    out = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out["OMP_NUM_THREADS"] = "1"
    return out


def overrides(uri: str, root: Path, *extra: str) -> list[str]:
    return ["experiment=tiny", f"tracking.uri={uri}", f"trainer.checkpoint_dir={root}/ckpt",
            f"tracking.artifact_location={root}/artifacts" if uri.startswith("sqlite")
            else "tracking.artifact_location=null",
            "trainer.progress=false", "trainer.threads=1", f"hydra.run.dir={root}/hydra", *extra]


def steps_once(client: MlflowClient, run_id: str, key: str, expected: list[int]) -> bool:
    return sorted(m.step for m in client.get_metric_history(run_id, key)) == expected


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ess-reg")
    return client.search_runs([experiment.experiment_id], max_results=5000) if experiment else []


def summarize(case: str, uri: str, root: Path, steps: int, started: float, note: str = "") -> Outcome:
    client = MlflowClient(uri)
    runs = all_runs(uri)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    once = [r for r in finished if steps_once(client, r.info.run_id, "train/loss", list(range(1, steps + 1)))]
    lost = [r for r in runs
            if r.info.status != "FINISHED" and not (root / "ckpt" / r.info.run_id / "last.pt").is_file()]
    return Outcome(case, len(runs), len(finished), len(once), len(lost),
                   statuses_true=len(finished) == len(runs), seconds=time.perf_counter() - started, note=note)


def concurrent(root: Path, n: int) -> Outcome:
    """n first runs at once on one fresh SQLite store."""
    uri, started = f"sqlite:///{root}/mlflow.db", time.perf_counter()
    procs = [subprocess.Popen([*TRAIN, *overrides(uri, root / str(i), "trainer.log_every=1", "trainer.max_steps=20",
                                                  f"seed={i}")], env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    codes = [p.wait(timeout=1800) for p in procs]
    out = summarize(f"{n} concurrent first runs, one fresh SQLite store", uri, root, 20, started)
    # each run's checkpoint is in its own sub-root: count lost runs against them
    out.lost = sum(1 for c in codes if c != 0)
    out.note = f"exit codes {sorted(set(codes))}"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{root}/server.db", "--artifacts-destination", str(root / "server-artifacts"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("mlflow server did not come up")
            time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
    server.wait(timeout=60)


def outage(root: Path, n: int, down: float, steps: int) -> Outcome:
    """n runs against a local mlflow server that is stopped for `down` seconds mid-run."""
    port = free_port()
    uri, started = f"http://127.0.0.1:{port}", time.perf_counter()
    server = start_server(root, port)
    root.mkdir(parents=True, exist_ok=True)
    logs = [root / f"run{i}.log" for i in range(n)]  # the runs' terminal output: did they see the outage?
    procs = [subprocess.Popen([*TRAIN, *overrides(uri, root, "trainer.log_every=1", f"trainer.max_steps={steps}",
                                                  "trainer.eval_every=50", f"seed={i}",
                                                  f"tracking.retry_seconds={down * 3}")],
                              env=env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)
              for i, log in enumerate(logs)]
    deadline = time.time() + 300
    while len([r for r in all_runs(uri) if r.data.metrics.get("train/loss") is not None]) < n:
        if time.time() > deadline:
            break
        time.sleep(1)
    before = sorted(int(r.data.metrics.get("train/loss") is not None) and
                    max(m.step for m in MlflowClient(uri).get_metric_history(r.info.run_id, "train/loss"))
                    for r in all_runs(uri))
    stop_server(server)
    time.sleep(down)
    server = start_server(root, port)
    try:
        codes = [p.wait(timeout=3600) for p in procs]
        kept = sum("metrics are kept aside" in log.read_text() for log in logs)
        out = summarize(f"{n} runs, mlflow server stopped {down:.0f} s mid-run", uri, root, steps, started)
        out.note = (f"exit codes {sorted(set(codes))}; last step logged when the server stopped {before} of "
                    f"{steps}; {kept} of {n} kept metrics aside while training")
    finally:
        stop_server(server)
    return out


def kill_cycles(root: Path, cycles: int, steps: int) -> Outcome:
    """One run killed with SIGKILL at a random moment, then resumed, `cycles` times; then finished."""
    import random

    uri, started = f"sqlite:///{root}/mlflow.db", time.perf_counter()
    rng = random.Random(0)
    base = overrides(uri, root, "trainer.log_every=1", "trainer.checkpoint_every=7", f"trainer.max_steps={steps}",
                     "trainer.eval_every=25")
    # the first process runs until its first checkpoint exists (the run has an id to resume by)
    p = subprocess.Popen([*TRAIN, *base], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list((root / "ckpt").glob("*/last.pt")) and p.poll() is None:
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    run_id, kills = all_runs(uri)[0].info.run_id, 1
    for _ in range(cycles - 1):
        p = subprocess.Popen([*TRAIN, *base, f"trainer.resume={run_id}"], env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 9.0))  # startup takes a few seconds: most kills land while training
        if p.poll() is not None:  # it finished before the kill
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
    done = subprocess.run([*TRAIN, *base, f"trainer.resume={run_id}"], env=env(), capture_output=True, text=True)
    out = summarize(f"one run, {kills} kill -9 + resume cycles", uri, root, steps, started)
    out.note = f"final resume exit {done.returncode}"
    return out


def race(root: Path, steps: int) -> Outcome:
    """A killed run resumed by two processes at the same moment: one must train it, one be refused."""
    uri, started = f"sqlite:///{root}/mlflow.db", time.perf_counter()
    base = overrides(uri, root, "trainer.log_every=1", f"trainer.max_steps={steps}", "trainer.eval_every=50")
    first = subprocess.run([*TRAIN, *base, "trainer.max_steps=10"], env=env(), capture_output=True)
    run_id = all_runs(uri)[0].info.run_id
    procs = [subprocess.Popen([*TRAIN, *base, f"trainer.resume={run_id}"], env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=1800), p.stderr.read()) for p in procs]
    refused = sum(1 for code, err in results if code == 2 and "is being trained by" in err)
    out = summarize("two processes resume one run at once", uri, root, steps, started)
    out.note = f"first run exit {first.returncode}; refused {refused} of 2, exit codes {[c for c, _ in results]}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--cases", default="concurrent,outage,kill,race")
    args = parser.parse_args()
    quick = args.quick
    cases = args.cases.split(",")
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "concurrent" in cases:
            outcomes.append(concurrent(tmp / "concurrent", 4 if quick else 16))
        if "outage" in cases:
            outcomes.append(outage(tmp / "outage", 2 if quick else 4, 10.0 if quick else 60.0, 300 if quick else 1500))
        if "kill" in cases:
            outcomes.append(kill_cycles(tmp / "kill", 4 if quick else 20, 300 if quick else 1500))
        if "race" in cases:
            outcomes.append(race(tmp / "race", 300))
    print(f"\nfaults bench, {platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}\n")
    print("| case | runs | finished | every step logged once | lost | statuses true | time | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for o in outcomes:
        print(f"| {o.case} | {o.runs} | {o.finished} | {o.logged_once} | {o.lost} "
              f"| {'yes' if o.statuses_true else 'no'} "
              f"| {o.seconds:.0f} s | {o.note} |")


if __name__ == "__main__":
    main()
