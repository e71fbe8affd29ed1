import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from ess_reg import tracking
from ess_reg.train import analyze_main, compose_config, run
from ess_reg.training import resolve_device
from models import MIXERS

TASKS = ["mqar", "selective_copy", "compression"]


@pytest.fixture
def store(tmp_path):
    return {"uri": f"sqlite:///{tmp_path}/mlflow.db", "artifacts": str(tmp_path / "artifacts"), "dir": tmp_path}


def tiny(store, *extra):
    return ["experiment=tiny", f"tracking.uri={store['uri']}", f"tracking.artifact_location={store['artifacts']}",
            f"trainer.checkpoint_dir={store['dir']}/ckpt", "trainer.progress=false", *extra]


@pytest.mark.parametrize("model", sorted(MIXERS))
@pytest.mark.parametrize("task", TASKS)
def test_every_model_and_task_config_instantiates(model, task):
    cfg = compose_config([f"model={model}", f"task={task}", "experiment=tiny"])
    task_obj = instantiate(cfg.task)
    net = instantiate(cfg.model)
    assert net.mixer_name == model and net.embedding.num_embeddings == task_obj.vocab_size
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("name", ["adamw", "sgd", "lamb", "adabelief", "madgrad", "lion"])
def test_optimizer_configs(name):
    cfg = compose_config([f"optimizer={name}"])
    assert isinstance(instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))]), torch.optim.Optimizer)


def test_unknown_config_key_is_an_error():
    with pytest.raises(Exception, match="bogus"):
        compose_config(["trainer.bogus=1"])


def test_bad_trainer_settings():
    with pytest.raises(ValueError, match="trainer.max_steps must be a positive int"):
        run(compose_config(["experiment=tiny", "trainer.max_steps=0"]))
    with pytest.raises(ValueError, match="precision"):
        run(compose_config(["experiment=tiny", "trainer.precision=fp8"]))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def metric_steps(client, run_id, key):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_end_to_end_run_is_read_back_from_mlflow(store, capsys):
    result = run(compose_config(tiny(store)))
    client = MlflowClient(store["uri"])
    r = client.get_run(result["run_id"])
    assert r.info.status == "FINISHED"
    assert r.data.params["model.mixer"] == "gla" and r.data.params["task.num_kv_pairs"] == "4"
    assert metric_steps(client, r.info.run_id, "train/loss") == [2, 4, 6]
    assert metric_steps(client, r.info.run_id, "valid/accuracy") == [3, 6]
    layer = "blocks.0.mixer"
    for key in ("ess_avg", "ess_total", "tss_total", "ess_over_tss", "ess_per_kv"):
        assert metric_steps(client, r.info.run_id, f"ess/{layer}/{key}") == [3, 6]
    assert r.data.metrics[f"ess/{layer}/tss_avg"] == 16.0  # gla feature_dim 16
    assert 0 < r.data.metrics[f"ess/{layer}/ess_over_tss"] <= 1
    assert r.data.tags[f"failure_mode.{layer}"] in ("saturation", "collapse", "healthy")
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "ess_table.json", f"ess_vs_index_{layer}.png", "checkpoint"} <= artifacts
    table = json.loads(Path(client.download_artifacts(r.info.run_id, "ess_table.json", str(store["dir"]))).read_text())
    assert table[layer]["failure_mode"] == r.data.tags[f"failure_mode.{layer}"]
    assert "mlflow ui --backend-store-uri" in capsys.readouterr().out

    # ess-analyze reads the checkpoint back and reports the same layer.
    assert analyze_main([str(result["checkpoint"])]) == 0
    out = capsys.readouterr().out
    assert layer in out and "ESS/TSS" in out
    assert analyze_main([str(store["dir"] / "missing.pt")]) == 2


def test_same_seed_same_run(store):
    first = run(compose_config(tiny(store, "tracking.experiment=a")))
    second = run(compose_config(tiny(store, "tracking.experiment=b", f"trainer.checkpoint_dir={store['dir']}/other")))
    assert first["metrics"]["train/loss"] == second["metrics"]["train/loss"]
    assert first["metrics"]["valid/loss"] == second["metrics"]["valid/loss"]


def test_resume_after_a_kill_continues_the_same_run_without_duplicate_steps(store, monkeypatch):
    overrides = tiny(store, "trainer.log_every=1", "trainer.eval_every=2", "trainer.checkpoint_every=3")
    original = tracking.Tracker.log_metrics

    def killed_at_step_5(self, metrics, step):
        original(self, metrics, step)
        if step == 5:
            raise KeyboardInterrupt("killed")  # after the step-3 checkpoint, with steps 4-5 logged

    monkeypatch.setattr(tracking.Tracker, "log_metrics", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config(overrides))
    monkeypatch.setattr(tracking.Tracker, "log_metrics", original)
    client = MlflowClient(store["uri"])
    (killed,) = client.search_runs([client.get_experiment_by_name("ess-reg").experiment_id])
    assert killed.info.status == "KILLED" and metric_steps(client, killed.info.run_id, "train/loss") == [1, 2, 3, 4, 5]

    result = run(compose_config([*overrides, "trainer.resume=true"]))
    assert result["resumed_from"] == 3 and result["run_id"] == killed.info.run_id
    runs = client.search_runs([client.get_experiment_by_name("ess-reg").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert metric_steps(client, killed.info.run_id, "train/loss") == [1, 2, 3, 4, 5, 6]
    assert metric_steps(client, killed.info.run_id, "valid/accuracy") == [2, 4, 6]


def test_divergence_marks_the_run_failed(store):
    from ess_reg.training import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="non-finite"):
        run(compose_config(tiny(store, "optimizer=sgd", "optimizer.lr=1e30", "trainer.grad_clip=null",
                             "trainer.max_steps=50")))
    client = MlflowClient(store["uri"])
    (r,) = client.search_runs([client.get_experiment_by_name("ess-reg").experiment_id])
    assert r.info.status == "FAILED" and "non-finite training loss" in r.data.tags["failure_reason"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_server_serves_the_run(store):
    result = run(compose_config(tiny(store)))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store["uri"], "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("mlflow server did not come up")
                time.sleep(0.5)
        experiment_id = MlflowClient(store["uri"]).get_experiment_by_name("ess-reg").experiment_id
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/runs/search", data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        runs = json.loads(urllib.request.urlopen(request, timeout=10).read())["runs"]
        assert [r["info"]["run_id"] for r in runs] == [result["run_id"]]
        metrics = {m["key"] for m in runs[0]["data"]["metrics"]}
        assert "valid/accuracy" in metrics and "ess/blocks.0.mixer/ess_over_tss" in metrics
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_multirun_with_two_parallel_jobs_groups_children_under_one_parent(store):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "ess_reg.train", "-m", *tiny(store), "seed=0,1", "hydra/launcher=joblib",
           "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={store['dir']}/sweep"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store["uri"])
    runs = client.search_runs([client.get_experiment_by_name("ess-reg").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["seed"] for r in children} == {"0", "1"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_run_on_cuda(store):
    result = run(compose_config(tiny(store, "trainer.device=cuda")))
    assert result["metrics"]["valid/accuracy"] >= 0


@pytest.mark.parametrize("penalty", ["none", "ess_max", "ess_min", "ess_target", "decay_identity"])
def test_penalty_configs_train_and_log(store, penalty):
    result = run(compose_config(tiny(store, f"penalty={penalty}")))
    client = MlflowClient(store["uri"])
    r = client.get_run(result["run_id"])
    if penalty == "none":
        assert "penalty/value" not in r.data.metrics and "penalty" not in r.data.tags
        return
    assert metric_steps(client, r.info.run_id, "penalty/value") == [2, 4, 6]
    weights = [m.value for m in sorted(client.get_metric_history(r.info.run_id, "penalty/weight"), key=lambda m: m.step)]
    full = {"ess_target": 1.0, "decay_identity": 0.1}.get(penalty, 0.01)
    ramp = [1.0] * 3 if penalty == "decay_identity" else [s / 100 for s in (2, 4, 6)]  # linear ramp over 100 steps
    assert weights == pytest.approx([full * r for r in ramp])
    assert r.data.tags["penalty"] in ("ESSPenalty", "DecayIdentityPenalty")


def test_init_search_logs_every_candidate_and_tags_the_choice(store):
    result = run(compose_config(tiny(store, "init=ess_search", "init.seeds=[0,1,2]")))
    client = MlflowClient(store["uri"])
    r = client.get_run(result["run_id"])
    table = json.loads(Path(client.download_artifacts(r.info.run_id, "init_search.json", str(store["dir"]))).read_text())
    assert len(table) == 3 and sum(row["chosen"] for row in table) == 1
    chosen = next(row for row in table if row["chosen"])
    assert chosen["score"] == max(row["score"] for row in table)
    assert r.data.tags["init.chosen"] == str(chosen["candidate"])
