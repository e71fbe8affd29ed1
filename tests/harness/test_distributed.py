"""Data-parallel training under torchrun (gloo, CPU): one MLflow run, and the parameters of a
single-process run of the same global batch."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(env, overrides, processes=None):
    # Hydra's job folder beside the test's store, not in the user's runs/hydra
    checkpoints = next(o.split("=", 1)[1] for o in overrides if o.startswith("trainer.checkpoint_dir="))
    overrides = [*overrides, f"hydra.run.dir={Path(checkpoints).parent / 'hydra'}"]
    entry = ["-m", "ess_reg.harness.ess_train", *overrides]
    cmd = [*TORCHRUN, f"--nproc_per_node={processes}", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           *entry] if processes else [sys.executable, *entry]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_two_processes_train_like_one_with_the_same_global_batch(store, tiny, child_env):
    overrides = tiny("trainer.max_steps=12", "trainer.batch_size=8")
    ddp = launch(child_env, [*overrides, "tracking.run_name=ddp"], processes=2)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = launch(child_env, [*overrides, "tracking.run_name=single"])
    assert single.returncode == 0, single.stderr[-3000:]
    assert ddp.stdout.count("valid accuracy") == 1  # one process speaks

    client = MlflowClient(store["uri"])
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("ess-reg").experiment_id])}
    assert sorted(runs) == ["ddp", "single"]  # one run for the two processes
    assert (runs["ddp"].data.tags["distributed.world_size"] == "2"
            and "distributed.world_size" not in runs["single"].data.tags)
    assert runs["ddp"].data.tags["distributed.batch_per_process"] == "4"
    for name in runs:
        steps = [m.step for m in client.get_metric_history(runs[name].info.run_id, "train/loss")]
        assert steps == [2, 4, 6, 8, 10, 12]  # logged once per step, by process 0 alone
    losses = {name: [m.value for m in sorted(client.get_metric_history(r.info.run_id, "train/loss"),
                                              key=lambda m: m.step)] for name, r in runs.items()}
    assert losses["ddp"] == pytest.approx(losses["single"], rel=1e-5)
    ckpt = {name: torch.load(Path(store["dir"]) / "ckpt" / r.info.run_id / "last.pt", weights_only=True)["model"]
            for name, r in runs.items()}
    # float32, 12 AdamW steps: the sums over the batch run in another order, nothing else differs
    for key, value in ckpt["single"].items():
        assert torch.allclose(ckpt["ddp"][key], value, atol=1e-5), key


def test_a_batch_that_does_not_split_over_the_processes_is_refused(store, tiny, child_env):
    out = launch(child_env, tiny("trainer.batch_size=7"), processes=2)
    assert out.returncode != 0
    assert "trainer.batch_size=7 must split evenly over the 2 processes" in out.stderr


def test_a_two_process_run_resumes_on_two_processes_as_one_run(store, tiny, child_env):
    overrides = tiny("trainer.batch_size=8")
    first = launch(child_env, [*overrides, "trainer.max_steps=6"], processes=2)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(store["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("ess-reg").experiment_id])
    resumed = launch(child_env, [*overrides, "trainer.max_steps=12", f"trainer.resume={run.info.run_id}"], processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (after,) = client.search_runs([client.get_experiment_by_name("ess-reg").experiment_id])
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [2, 4, 6, 8, 10, 12]
