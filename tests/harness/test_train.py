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
from omegaconf import OmegaConf
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from ess_reg.environment import cpu_name
from ess_reg.harness import tracking
from ess_reg.harness.ess_analyze import analyze_run
from ess_reg.harness.ess_analyze import main as analyze_main
from ess_reg.harness.build import build_model
from ess_reg.harness.ess_train import ConfigError, compose_config, run
from ess_reg.models import MIXERS

TASKS = ["mqar", "selective_copy", "compression"]
ESS_TRAIN = [sys.executable, "-m", "ess_reg.harness.ess_train"]  # the ess-train command, installed as a script or not


def ess_train(env, *args, timeout=600):
    """``ess-train ARGS`` in a child process with the environment ``env``; its output captured."""
    return subprocess.run([*ESS_TRAIN, *args], capture_output=True, text=True, env=env, timeout=timeout)


def all_runs(store):
    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name("ess-reg")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def store_contents(store):
    """Runs with their status, tags, params and every metric's history: what must not change."""
    client = MlflowClient(store["uri"])
    return {r.info.run_id: (r.info.status, r.data.tags, r.data.params,
                            {k: metric_steps(client, r.info.run_id, k) for k in r.data.metrics})
            for r in all_runs(store)}


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


@pytest.mark.parametrize("override, message", [
    ("trainer.max_steps=0", "trainer.max_steps must be a positive int"),
    ("trainer.precision=fp8", "precision"),
    ("trainer.grad_clip=-1", "trainer.grad_clip must be a positive number or null"),
    ("trainer.threads=0", "trainer.threads must be a positive int or auto"),
    ("probe.kind=bogus", "probe.kind must be one of"),
    ("probe.examples=0", "probe.examples must be a positive int"),
    ("probe.solved=2", "threshold solved must be a number in"),
    ("optimizer.lr=-1", "optimizer: Invalid learning rate"),
    ("task.num_kv_pairs=40", "task: num_kv_pairs=40 needs seq_len"),
    ("tracking.uri=sqlite:///", "keeps nothing"),
    ("trainer.resume=no-such-run", "neither a checkpoint file nor a run id"),
    ("penalty=ess_max penalty.schedule.weight=-1",
     "penalty=ess_max: penalty.schedule: weight must be a finite number >= 0"),
    ("penalty=ess_target penalty.objective.hinge=sideways", "penalty=ess_target: penalty.objective: unknown hinge"),
    ("penalty=ess_max penalty.measure=per_item", "penalty=ess_max: measure='per_item' reads ESS at the end"),
    ("penalty=ess_max penalty.kind=bogus", "penalty=ess_max: kind must be"),
    ("tracking.uri=garbage://x", "unknown store scheme"),
    ("tracking.uri=http://127.0.0.1:9", "no tracking server answers"),
    ("trainer.checkpoint_dir=BLOCKER/ckpt", "trainer.checkpoint_dir=.*is a file, not a folder"),
    ("tracking.artifact_location=BLOCKER/art", "tracking.artifact_location=.*is a file, not a folder"),
] + ([] if torch.cuda.is_available() else [("trainer.device=cuda", "CUDA is not available")]))
def test_bad_settings_fail_before_any_run_exists(store, tiny, override, message):
    blocker = store["dir"] / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=message):
        run(compose_config(tiny(*override.replace("BLOCKER", str(blocker)).split())))
    assert not (store["dir"] / "mlflow.db").exists()  # no run, not even an empty store
    assert not (store["dir"] / "ckpt").exists()


def metric_steps(client, run_id, key):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def metric_values(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_end_to_end_run_is_read_back_from_mlflow(store, tiny, caplog):
    caplog.set_level("INFO", logger="ess_reg")
    result = run(compose_config(tiny()))
    client = MlflowClient(store["uri"])
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "gla-mqar experiment=tiny"
    assert r.data.params["model.mixer"] == "gla" and r.data.params["task.num_kv_pairs"] == "4"
    assert int(r.data.params["num_parameters"]) == sum(p.numel() for p in result.model.parameters())
    tags = r.data.tags
    assert tags["model"] == "gla" and tags["task"] == "mqar" and tags["penalty"] == "none"
    assert tags["overrides"].startswith("experiment=tiny tracking.uri=")
    assert len(tags["mlflow.source.git.commit"]) == 40  # the tests run in a git checkout
    assert tags["machine.cpu"] == cpu_name() and tags["machine.torch"] == torch.__version__
    assert tags["machine.gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    assert "machine.last_resume" not in tags
    experiment = client.get_experiment_by_name("ess-reg")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert metric_steps(client, r.info.run_id, "train/loss") == [2, 4, 6]
    assert metric_steps(client, r.info.run_id, "valid/accuracy") == [0, 3, 6]  # step 0: at initialization
    for key in ("ess/util", "ess/per_kv", "ess/ess", "ess/total", "L0/ess", "L0/util", "L0/total", "L0/tss",
                "L0/per_kv", "L0/tss_kv"):
        assert metric_steps(client, r.info.run_id, key) == [0, 3, 6], key
        assert len(key) <= 15  # survives the MLflow UI's column width
    assert r.data.metrics["L0/tss"] == 16.0  # gla feature_dim 16
    assert 0 < r.data.metrics["L0/util"] <= 1 and r.data.metrics["ess/util"] == r.data.metrics["L0/util"]
    assert tags["layers"] == "L0=blocks.0.mixer" and tags["state.L0"] in ("full", "partial", "unused")
    assert tags["verdict"] == result.verdict.mode and tags["verdict.reason"] == result.verdict.reason
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "ess_table.json", "ess_vs_index.png", "checkpoint", "images"} <= artifacts
    images = [a.path for a in client.list_artifacts(r.info.run_id, "images")]
    assert len([p for p in images if p.endswith(".png")]) == 3  # one ESS-vs-index figure per evaluation
    table = json.loads(Path(client.download_artifacts(r.info.run_id, "ess_table.json", str(store["dir"]))).read_text())
    assert table["verdict"]["mode"] == tags["verdict"] and table["thresholds"]["solved"] == 0.9
    assert table["layers"]["blocks.0.mixer"]["state"] == tags["state.L0"]
    checkpoint = store["dir"] / "ckpt" / r.info.run_id / "last.pt"  # under the run's own id
    assert result.checkpoint == checkpoint and checkpoint.is_file()
    assert "mlflow ui --backend-store-uri" in caplog.text and "verdict:" in caplog.text
    # the printed link opens the run in the UI's model-training view, not the GenAI one
    assert f"#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}?workflowType=machine_learning" in caplog.text
    # what a user compares is a param too, so that the compare view can use it as an axis
    assert r.data.params["verdict"] == tags["verdict"] and r.data.params["penalty"] == "none"
    assert r.data.params["model"] == "gla"
    # the run list opens through the view ess-train saved on the experiment: its columns exist
    view = json.loads(client.get_experiment(r.info.experiment_id).tags["mlflow.sharedViewState.ess-reg"])
    columns = json.loads(view["state"])["selectedColumns"]
    assert "metrics.`valid/accuracy`" in columns and "params.`verdict`" in columns
    for column in columns:
        kind, name = column.split(".", 1)
        assert name.strip("`") in (r.data.params if kind == "params" else r.data.metrics), column
    assert "viewStateShareKey=ess-reg" in caplog.text

    # ess-analyze reads the checkpoint back, by path and by run id, and reproduces the final ESS.
    for target in (str(checkpoint), r.info.run_id):
        analysis = analyze_run(target, uri=store["uri"], checkpoint_root=str(store["dir"] / "ckpt"))
        report = analysis.reports["blocks.0.mixer"]
        assert report.ess_avg == pytest.approx(r.data.metrics["L0/ess"], abs=1e-6)
        assert report.utilization == pytest.approx(r.data.metrics["L0/util"], abs=1e-6)
        assert analysis.accuracy == pytest.approx(r.data.metrics["valid/accuracy"], abs=1e-9)
        assert analysis.verdict.mode == tags["verdict"]
    # by run id from the store alone (no local checkpoint): the logged artifact
    elsewhere = analyze_run(r.info.run_id, uri=store["uri"], checkpoint_root=str(store["dir"] / "nothing-here"))
    assert elsewhere.reports["blocks.0.mixer"].ess_avg == pytest.approx(r.data.metrics["L0/ess"], abs=1e-6)
    # as the UI shows it
    short = analyze_run(r.info.run_id[:8], uri=store["uri"], checkpoint_root=str(store["dir"] / "ckpt"))
    assert short.checkpoint == checkpoint
    assert analyze_main([str(store["dir"] / "missing.pt"), "--tracking-uri", store["uri"]]) == 2


def test_runs_that_differ_only_in_penalty_never_share_a_name_or_checkpoint(store, tiny):
    first = run(compose_config(tiny()))
    second = run(compose_config(tiny("penalty=ess_max")))
    client = MlflowClient(store["uri"])
    names = {client.get_run(r.run_id).info.run_name for r in (first, second)}
    assert names == {"gla-mqar experiment=tiny", "gla-mqar experiment=tiny penalty=ess_max"}
    assert first.checkpoint.parent != second.checkpoint.parent
    assert first.checkpoint.is_file() and second.checkpoint.is_file()


def test_same_seed_same_run(tiny):
    first = run(compose_config(tiny("tracking.experiment=a")))
    second = run(compose_config(tiny("tracking.experiment=b")))
    assert first.metrics["train/loss"] == second.metrics["train/loss"]
    assert first.metrics["valid/loss"] == second.metrics["valid/loss"]


def test_resume_after_a_kill_continues_the_same_run_without_duplicate_steps(store, tiny, monkeypatch):
    overrides = tiny("trainer.log_every=1", "trainer.eval_every=2", "trainer.checkpoint_every=3")
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
    (killed,) = all_runs(store)
    assert killed.info.status == "KILLED" and metric_steps(client, killed.info.run_id, "train/loss") == [1, 2, 3, 4, 5]
    assert f"trainer.resume={killed.info.run_id}" in killed.data.tags["failure_reason"]

    result = run(compose_config([*overrides, f"trainer.resume={killed.info.run_id}"]))
    assert result.resumed_from == 3 and result.run_id == killed.info.run_id
    (finished,) = all_runs(store)
    assert finished.info.status == "FINISHED" and "failure_reason" not in finished.data.tags
    assert metric_steps(client, killed.info.run_id, "train/loss") == [1, 2, 3, 4, 5, 6]
    assert metric_steps(client, killed.info.run_id, "valid/accuracy") == [0, 2, 4, 6]

    # A longer budget may follow; it is recorded, and the run goes on where it stopped.
    longer = run(compose_config([*overrides, "trainer.max_steps=8", f"trainer.resume={killed.info.run_id}"]))
    assert longer.resumed_from == 6 and metric_steps(client, killed.info.run_id, "train/loss")[-2:] == [7, 8]
    assert client.get_run(killed.info.run_id).data.tags["resumed.trainer.max_steps"] == "6 -> 8"


@pytest.mark.parametrize("penalty", [["penalty=none"], ["penalty=ess_max", "penalty.schedule.ramp_steps=0"],
                                     ["penalty=ess_constraint", "penalty.objective.value=1.0"]])
def test_a_run_continued_to_a_longer_budget_is_the_run_trained_straight_through(store, tiny, penalty):
    # Studies extend finished runs (collapse_penalty_gdn_long): sound only if stopping at step 4 and
    # continuing to 8 gives what 8 steps in one go give: the penalty's random indices and channels
    # and a constraint's multiplier go on where they were.
    overrides = tiny(*penalty, "trainer.eval_every=2", "trainer.log_every=1", "seed=5")
    straight = run(compose_config([*overrides, "trainer.max_steps=8"]))
    short = run(compose_config([*overrides, "trainer.max_steps=4"]))
    continued = run(compose_config([*overrides, "trainer.max_steps=8", f"trainer.resume={short.run_id}"]))
    assert continued.run_id == short.run_id and continued.resumed_from == 4
    client = MlflowClient(store["uri"])
    keys = ["train/loss", "train/total_loss", "valid/accuracy", "L0/util"]
    keys += ["penalty/multiplier"] if "constraint" in penalty[0] else []
    for key in keys:
        assert metric_values(client, continued.run_id, key) == metric_values(client, straight.run_id, key), key
    for name, weight in straight.model.state_dict().items():
        assert torch.equal(weight, continued.model.state_dict()[name]), name


def test_a_checkpoint_without_the_penalty_s_random_stream_resumes_and_says_so(store, tiny, caplog):
    overrides = tiny("penalty=ess_max", "trainer.eval_every=2")
    short = run(compose_config([*overrides, "trainer.max_steps=4"]))
    state = torch.load(short.checkpoint, weights_only=True)
    del state["penalty"]["random"]  # as checkpoints written before the stream was kept
    torch.save(state, short.checkpoint)
    with caplog.at_level("WARNING", logger="ess_reg"):
        continued = run(compose_config([*overrides, "trainer.max_steps=6", f"trainer.resume={short.run_id}"]))
    assert continued.resumed_from == 4 and continued.steps == 6
    assert any("predates keeping the penalty's random stream" in r.getMessage() for r in caplog.records)


def test_resume_by_run_id_alone_goes_on_under_the_run_s_config(store, tiny, caplog):
    first = run(compose_config(tiny("task.num_kv_pairs=2", "optimizer.lr=0.01", "seed=3")))
    # The README's command: the run id and a new budget; where the store is, and nothing else.
    where = [f"tracking.uri={store['uri']}", f"tracking.artifact_location={store['artifacts']}",
             f"trainer.checkpoint_dir={store['dir']}/ckpt", "trainer.progress=false"]
    with caplog.at_level("INFO", logger="ess_reg"):
        longer = run(compose_config([*where, f"trainer.resume={first.run_id}", "trainer.max_steps=8"]))
    assert longer.run_id == first.run_id and longer.resumed_from == 6 and longer.steps == 8
    # Announced under the name it was given, not one made from this command line's choices.
    stored_name = MlflowClient(store["uri"]).get_run(first.run_id).info.run_name
    announced = [r.getMessage() for r in caplog.records if "-> MLflow run" in r.getMessage()]
    assert announced and repr(stored_name) in announced[-1] and "trainer.max_steps=8" not in announced[-1]
    config = longer.config
    assert (config["task"]["num_kv_pairs"], config["optimizer"]["lr"], config["seed"]) == (2, 0.01, 3)
    assert config["model"]["d_model"] == 16  # experiment=tiny's, not the default's 64
    tags = MlflowClient(store["uri"]).get_run(first.run_id).data.tags
    assert tags["resumed.trainer.max_steps"] == "6 -> 8" and len([t for t in tags if t.startswith("resumed.")]) == 1
    assert f"torch {torch.__version__}" in tags["machine.last_resume"] and tags["machine.cpu"] == cpu_name()


def test_the_constraint_penalty_keeps_its_multiplier_across_a_resume(store, tiny):
    # A floor of 1.0 on utilization is never met: the multiplier rises at every step.
    first = run(compose_config(tiny("penalty=ess_constraint", "penalty.objective.value=1.0")))
    client = MlflowClient(store["uri"])
    before = [v for _, v in sorted((m.step, m.value) for m in client.get_metric_history(first.run_id,
                                                                                        "penalty/multiplier"))]
    assert len(before) == 3 and 0 < before[0] < before[1] < before[2]  # steps 2, 4, 6
    saved = torch.load(first.checkpoint, weights_only=True)["penalty"]["objective"]["multiplier"]
    assert saved > before[-1]  # the ascent after step 6 is in the checkpoint
    where = [f"tracking.uri={store['uri']}", f"tracking.artifact_location={store['artifacts']}",
             f"trainer.checkpoint_dir={store['dir']}/ckpt", "trainer.progress=false"]
    run(compose_config([*where, f"trainer.resume={first.run_id}", "trainer.max_steps=8"]))
    after = {m.step: m.value for m in client.get_metric_history(first.run_id, "penalty/multiplier")}
    assert after[8] > saved  # it went on from the saved multiplier, not from 0


def test_a_stopping_rule_ends_the_run_where_it_converged_and_a_resume_keeps_its_curve(store, tiny):
    # min_delta 1 is a gain no accuracy can make: the patience of 3 steps runs out at the
    # evaluation of step 3 (counted from step 0), with the budget of 30 steps far away.
    stopped = run(compose_config(tiny("trainer.max_steps=30", "trainer.stop.patience=3", "trainer.stop.min_delta=1.0")))
    assert stopped.steps == 3 and "no gain of 1 in accuracy for 3 steps" in stopped.stopped
    client = MlflowClient(store["uri"])
    assert metric_steps(client, stopped.run_id, "valid/accuracy") == [0, 3]
    assert metric_steps(client, stopped.run_id, "train/loss") == [2, 3]  # the loss where it ended
    tags = client.get_run(stopped.run_id).data.tags
    assert tags["stopped"].startswith("step 3: no gain of 1")
    saved = torch.load(stopped.checkpoint, weights_only=True)
    assert saved["step"] == 3 and [s for s, _ in saved["accuracy_curve"]] == [0, 3]
    # Resumed, the rule reads the whole curve (steps 0, 3 and 6), not only what follows the resume.
    where = [f"tracking.uri={store['uri']}", f"tracking.artifact_location={store['artifacts']}",
             f"trainer.checkpoint_dir={store['dir']}/ckpt", "trainer.progress=false"]
    resumed = run(compose_config([*where, f"trainer.resume={stopped.run_id}"]))
    assert resumed.resumed_from == 3 and resumed.steps == 6 and "for 6 steps" in resumed.stopped
    # Without a rule the same run goes to its budget, and says so.
    full = run(compose_config(tiny("trainer.max_steps=6", "seed=1")))
    assert full.steps == 6 and full.stopped is None
    assert client.get_run(full.run_id).data.tags["stopped"] == "step 6: the budget (trainer.max_steps)"


def test_a_run_can_start_from_a_trained_run_s_model_with_its_state_cut(store, tiny, caplog):
    caplog.set_level("WARNING", logger="ess_reg")
    source = run(compose_config(tiny("task.num_kv_pairs=2")))
    assert source.model.blocks[0].mixer.state_size() == 16
    small = run(compose_config(tiny("task.num_kv_pairs=2", "init=compressed", f"init.source={source.run_id}",
                                    "init.size=4", "trainer.max_steps=3")))
    mixer = small.model.blocks[0].mixer
    assert mixer.state_size() == 4 and small.config["model"]["state_size"] == 4
    assert small.config["model"]["mixer_kwargs"]["feature_dim"] == 4
    compressed = small.config["init"]["compressed"]
    assert compressed["source"] == source.run_id and compressed["state_before"] == 16
    assert compressed["rule"] == "given"  # the size came from the command line, not a measurement
    assert 0 < compressed["energy_kept_min"] <= 1
    client = MlflowClient(store["uri"])
    params = client.get_run(small.run_id).data.params
    assert params["init.compressed.size"] == "4" and params["model.state_size"] == "4"
    assert params["init.compressed.rule"] == "given"
    assert metric_steps(client, small.run_id, "valid/accuracy") == [0, 3]  # step 0: compressed, not yet tuned
    assert "trained on another task" not in caplog.text  # the same task: nothing to say
    # The logged config rebuilds the compressed model: a resume by run id goes on from its weights.
    where = [f"tracking.uri={store['uri']}", f"tracking.artifact_location={store['artifacts']}",
             f"trainer.checkpoint_dir={store['dir']}/ckpt", "trainer.progress=false"]
    longer = run(compose_config([*where, f"trainer.resume={small.run_id}", "trainer.max_steps=6"]))
    assert longer.steps == 6 and longer.model.blocks[0].mixer.state_size() == 4
    with pytest.raises(ConfigError, match="init.source=.* is a gla model; this run's model is s6: add model=gla"):
        run(compose_config(tiny("model=s6", "init=compressed", f"init.source={source.run_id}", "init.size=4")))
    with pytest.raises(ConfigError, match=r"size for layer .* must be an int in 1\.\.16"):
        run(compose_config(tiny("task.num_kv_pairs=2", "init=compressed", f"init.source={source.run_id}",
                                "init.size=17")))
    by_entropy = run(compose_config(tiny("task.num_kv_pairs=2", "init=compressed", f"init.source={source.run_id}",
                                         "trainer.max_steps=1")))  # no size given: the entropy size
    assert 1 <= by_entropy.config["init"]["compressed"]["size"] <= 16
    assert by_entropy.config["init"]["compressed"]["rule"] == "entropy"
    assert by_entropy.model.blocks[0].mixer.state_size() == by_entropy.config["init"]["compressed"]["size"]
    # Another task than the source's: refused (step 0 would measure the move as well as the cut),
    # unless asked for, and then said.
    moved = tiny("task.num_kv_pairs=3", "init=compressed", f"init.source={source.run_id}", "init.size=4",
                 "trainer.max_steps=1")
    with pytest.raises(ConfigError, match=r"init.source=.* was trained on another task \(differs in "
                                          r"task.num_kv_pairs: 2 vs 3\); add init.other_task=true"):
        run(compose_config(moved))
    with pytest.raises(ConfigError, match="init.other_task must be true or false, got 'maybe'"):
        run(compose_config([*moved, "init.other_task=maybe"]))
    run(compose_config([*moved, "init.other_task=true"]))
    assert "using it anyway (init.other_task=true)" in caplog.text
    with pytest.raises(ConfigError, match="init.size must be a positive int .*, ess or entropy, got 'half'"):
        run(compose_config(tiny("init=compressed", f"init.source={source.run_id}", "init.size=half")))
    with pytest.raises(ConfigError, match="init.method must be one of keep, merge, got 'fold'"):
        run(compose_config(tiny("init=compressed", f"init.source={source.run_id}", "init.method=fold")))
    with pytest.raises(ConfigError, match=r"has no merge_state\(size, length\): only a time-invariant layer can merge"):
        run(compose_config(tiny("task.num_kv_pairs=2", "init=compressed", f"init.source={source.run_id}",
                                "init.method=merge", "init.size=4")))
    # A time-invariant model merges: its step-0 evaluation is the merged model, logged as such.
    lti = run(compose_config(tiny("model=s4d", "task.num_kv_pairs=2")))
    merged = run(compose_config(tiny("model=s4d", "task.num_kv_pairs=2", "init=compressed",
                                     f"init.source={lti.run_id}", "init.method=merge", "init.size=4",
                                     "trainer.max_steps=1")))
    assert merged.model.blocks[0].mixer.state_size() == 4
    assert merged.config["init"]["compressed"]["method"] == "merge"
    assert 0.5 < merged.config["init"]["compressed"]["energy_kept_min"] <= 1 + 1e-9


def test_a_run_that_another_process_is_training_is_not_resumed(store, tiny):
    from ess_reg.harness.ownership import RunLock

    first = run(compose_config(tiny()))
    client = MlflowClient(store["uri"])
    steps_before = metric_steps(client, first.run_id, "train/loss")
    with RunLock(first.checkpoint.parent, first.run_id):  # what the live trainer of the run holds
        with pytest.raises(ConfigError, match=f"run {first.run_id} is being trained by pid {os.getpid()} on "):
            run(compose_config(tiny(f"trainer.resume={first.run_id}", "trainer.max_steps=8")))
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert metric_steps(client, first.run_id, "train/loss") == steps_before  # nothing logged twice
    # once the holder is gone (it ended, or was killed: the OS drops its lock), the resume goes on
    resumed = run(compose_config(tiny(f"trainer.resume={first.run_id}", "trainer.max_steps=8")))
    assert resumed.steps == 8


def test_resume_with_a_changed_key_is_refused_and_writes_nothing(store, tiny):
    first = run(compose_config(tiny()))
    before = store_contents(store)
    for changed in ("penalty=ess_max", "optimizer.lr=0.01", "task.num_kv_pairs=2", "init=ess_search",
                    "tracking.experiment=other"):
        with pytest.raises(ConfigError, match="the config differs from the run's") as err:
            run(compose_config(tiny(changed, f"trainer.resume={first.run_id}")))
        assert "Only the step budget and logging knobs may change" in str(err.value)
    with pytest.raises(ConfigError, match=r"optimizer.lr: 0.003 -> 0.01"):
        run(compose_config(tiny("optimizer.lr=0.01", f"trainer.resume={first.checkpoint}")))
    assert store_contents(store) == before
    assert MlflowClient(store["uri"]).get_experiment_by_name("other") is None


def test_divergence_marks_the_run_failed(store, tiny):
    from ess_reg.harness.training import TrainingDiverged

    for extra in ([], ["penalty=ess_max"]):
        with pytest.raises(TrainingDiverged, match="non-finite"):
            run(compose_config(tiny("optimizer=sgd", "optimizer.lr=1e30", "trainer.grad_clip=null",
                                    "trainer.max_steps=50", *extra)))
    runs = all_runs(store)
    assert len(runs) == 2
    for r in runs:
        assert r.info.status == "FAILED" and "non-finite training loss" in r.data.tags["failure_reason"]


def test_a_penalty_with_nothing_to_act_on_is_refused_before_the_run(store, tiny):
    with pytest.raises(ConfigError, match="decay_identity has nothing to act on.*la's decays are fixed at 1"):
        run(compose_config(tiny("model=la", "penalty=decay_identity")))
    assert all_runs(store) == []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_run_tracked_by_a_local_mlflow_server_is_read_back(store, tiny, tmp_path):
    """The shared-server path: `mlflow server` (127.0.0.1 only) on a database, artifacts proxied by
    the server; ess-train logs to it over HTTP and everything is read back through it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
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
        overrides = [o for o in tiny() if not o.startswith(("tracking.uri=", "tracking.artifact_location="))]
        result = run(compose_config([*overrides, f"tracking.uri={url}", "tracking.artifact_location=null"]))
        client = MlflowClient(url)
        r = client.get_run(result.run_id)
        assert r.info.status == "FINISHED" and r.data.tags["verdict"] == result.verdict.mode
        assert metric_steps(client, r.info.run_id, "valid/accuracy") == [0, 3, 6]
        assert {"valid/accuracy", "ess/util", "L0/util"} <= set(r.data.metrics)
        assert {"config.yaml", "ess_table.json", "checkpoint"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
        assert (tmp_path / "server-artifacts").is_dir()  # the server stored them, not the client
        assert not (store["dir"] / "artifacts").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    # the cluster launcher's path, run here: submitit starts each job as its own process
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_multirun_with_two_parallel_jobs_groups_children_under_one_parent(store, tiny, child_env, launcher):
    done = ess_train(child_env, "-m", *tiny(), "seed=0,1", *LAUNCHERS[launcher],
                     f"hydra.sweep.dir={store['dir']}/sweep")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store["uri"])
    runs = all_runs(store)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    (parent,) = parents
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["seed"] for r in children} == {"0", "1"}
    assert {r.info.run_name for r in children} == {"gla-mqar seed=0", "gla-mqar seed=1"}  # named by what was swept
    assert parent.data.tags["sweep.keys"] == "seed" and "seed=0,1" in parent.data.tags["sweep.overrides"]
    checkpoints = {store["dir"] / "ckpt" / r.info.run_id / "last.pt" for r in children}
    assert len(checkpoints) == 2 and all(c.is_file() for c in checkpoints)  # never one file for two jobs
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.md", "sweep_summary.json", "accuracy_vs_ess_per_kv.png"} <= artifacts
    rows = json.loads(Path(client.download_artifacts(parent.info.run_id, "sweep_summary.json",
                                                     str(store["dir"]))).read_text())
    assert {row["run_id"] for row in rows} == {r.info.run_id for r in children}
    assert all(row["valid/accuracy"] is not None and row["ess/per_kv"] is not None for row in rows)
    # The terminal says how it went, where to look and what to run next.
    out = done.stdout + done.stderr
    assert f"next: ess-report --parent {parent.info.run_id} --tracking-uri {store['uri']}" in out
    assert "#/compare-runs?runs=%5B" in out and all(r.info.run_id in out for r in children)
    if launcher == "joblib":  # submitit writes each job's output to its own log under the sweep folder
        assert "[job " in done.stdout  # parallel jobs' lines say which job


def test_a_sweep_whose_job_fails_still_closes_its_parent(store, tiny, child_env):
    done = ess_train(child_env, "-m", *tiny(), "optimizer=sgd", "trainer.grad_clip=null", "optimizer.lr=0.01,1e30",
                     f"hydra.sweep.dir={store['dir']}/sweep")
    assert done.returncode != 0
    runs = all_runs(store)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    statuses = sorted(r.info.status for r in runs if r is not parent)
    assert statuses == ["FAILED", "FINISHED"] and parent.info.status == "FAILED"


def test_a_tuning_sweep_maximizes_the_validation_accuracy_its_runs_log(store, tiny, child_env):
    """conf/experiment/tune_penalty.yaml with Optuna's sweeper: every trial is a child run whose
    weight Optuna proposed, and the answer on the parent is the trial that logged the best accuracy."""
    small = [o for o in tiny() if o != "experiment=tiny"]
    done = ess_train(child_env, "-m", *small, "experiment=tune_penalty", "model.d_model=16", "trainer.max_steps=6",
                     "trainer.batch_size=8", "trainer.eval_every=3", "trainer.eval_examples=16", "probe.num_indices=4",
                     "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={store['dir']}/sweep", "tracking.experiment=ess-reg")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store["uri"])
    runs = all_runs(store)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r is not parent]
    weights = {float(r.data.params["penalty.schedule.weight"]): r.data.metrics["valid/accuracy"] for r in children}
    assert len(weights) == 3 and all(1e-4 <= w <= 1.0 for w in weights)  # three proposals, in the interval
    assert {r.data.params["seed"] for r in children} == {"900"}  # the preset's own seed, never a study's
    assert float(parent.data.tags["sweep.best_value"]) == pytest.approx(max(weights.values()))
    key, _, best = parent.data.tags["sweep.best_params"].partition("=")
    assert key == "penalty.schedule.weight" and weights[float(best)] == pytest.approx(max(weights.values()))
    assert "optimization_results.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert parent.data.tags["sweep.keys"] == "penalty.schedule.weight" and parent.info.status == "FINISHED"


@pytest.mark.gpu
def test_tiny_run_on_cuda(tiny):
    result = run(compose_config(tiny("trainer.device=cuda")))
    assert result.metrics["valid/accuracy"] >= 0


@pytest.mark.parametrize("penalty", ["none", "ess_max", "ess_min", "ess_target", "decay_identity"])
def test_penalty_configs_train_and_log(store, tiny, penalty):
    result = run(compose_config(tiny(f"penalty={penalty}")))
    client = MlflowClient(store["uri"])
    r = client.get_run(result.run_id)
    if penalty == "none":
        assert "penalty/value" not in r.data.metrics and r.data.tags["penalty"] == "none"
        return
    assert metric_steps(client, r.info.run_id, "penalty/value") == [2, 4, 6]
    weights = [m.value for m in sorted(client.get_metric_history(r.info.run_id, "penalty/weight"),
                                       key=lambda m: m.step)]
    full = {"ess_target": 1.0, "decay_identity": 0.1}.get(penalty, 0.01)
    ramp = [1.0] * 3 if penalty == "decay_identity" else [s / 100 for s in (2, 4, 6)]  # linear ramp over 100 steps
    assert weights == pytest.approx([full * r for r in ramp])
    assert r.data.tags["penalty"] == penalty


def test_init_search_logs_every_candidate_and_the_config_rebuilds_the_chosen_model(store, tiny):
    overrides = tiny("init=ess_search", "init.seeds=[0,1,2]",
                     "init.schemes=[{gate_normalizer: 1},{gate_normalizer: 64}]")
    result = run(compose_config(overrides))
    client = MlflowClient(store["uri"])
    r = client.get_run(result.run_id)
    table = json.loads(Path(client.download_artifacts(r.info.run_id, "init_search.json",
                                                      str(store["dir"]))).read_text())
    assert len(table) == 6 and sum(row["chosen"] for row in table) == 1
    chosen = next(row for row in table if row["chosen"])
    assert chosen["score"] == max(row["score"] for row in table)
    # What is logged is what trained: the choice is in the config, params and checkpoint alike.
    logged = OmegaConf.to_container(OmegaConf.load(client.download_artifacts(r.info.run_id, "config.yaml",
                                                                             str(store["dir"]))))
    assert logged["init"]["chosen"] == chosen["candidate"]
    gate = chosen["candidate"]["scheme"]["gate_normalizer"]
    assert logged["model"]["mixer_kwargs"]["gate_normalizer"] == gate
    assert r.data.params["model.mixer_kwargs.gate_normalizer"] == str(gate)
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["config"] == logged
    # The model rebuilt from the logged config and the checkpoint is the model that trained.
    rebuilt = build_model(logged["model"])
    rebuilt.load_state_dict(state["model"])
    x = torch.randint(0, 128, (2, 64))
    assert torch.equal(rebuilt.eval()(x), result.model.eval()(x))
    analysis = analyze_run(str(result.checkpoint), uri=store["uri"])
    for name, key in (("blocks.0.mixer", "L0"),):
        assert analysis.reports[name].ess_avg == pytest.approx(r.data.metrics[f"{key}/ess"], abs=1e-6)


def verdict_of(store, tiny, *overrides):
    result = run(compose_config(tiny(*overrides)))
    tags = MlflowClient(store["uri"]).get_run(result.run_id).data.tags
    assert tags["verdict"] == result.verdict.mode  # the tag says what the run found
    return result


def test_a_starved_model_that_fails_is_saturated(store, tiny):
    # One key direction per head (TSS 1) for 8 pairs: the state is full and cannot hold the task.
    result = verdict_of(store, tiny, "model=la", "model.mixer_kwargs.feature_dim=1", "task.num_kv_pairs=8")
    assert result.metrics["valid/accuracy"] < 0.9
    assert result.verdict.mode == "saturation" and ">= saturation 0.9" in result.verdict.reason
    assert all(r.utilization > 0.99 for r in result.reports.values())


def test_a_model_whose_state_sits_unused_while_it_fails_is_collapsed(store, tiny):
    # Decays of 0.7-0.95 per step: 16 directions per head, ESS/reach about 0.13 (below 0.2 - margin).
    wla = ["model=wla", "+model.mixer_kwargs.decay_min=0.7", "+model.mixer_kwargs.decay_max=0.95",
           "task.num_kv_pairs=8"]
    result = verdict_of(store, tiny, *wla)
    assert result.metrics["valid/accuracy"] < 0.9
    assert result.verdict.mode == "collapse" and "<= collapse 0.2 - margin 0.05" in result.verdict.reason
    # The same run under thresholds that call nothing collapsed: every output follows them.
    relaxed = verdict_of(store, tiny, *wla, "probe.collapse=0.01", "probe.saturation=0.5")
    assert relaxed.verdict.mode == "inconclusive"


@pytest.mark.slow
def test_the_default_quickstart_run_solves_its_task_and_is_not_called_collapsed(store):
    result = run(compose_config([f"tracking.uri={store['uri']}", f"tracking.artifact_location={store['artifacts']}",
                                 f"trainer.checkpoint_dir={store['dir']}/ckpt", "trainer.progress=false"]))
    assert result.metrics["valid/accuracy"] >= 0.9
    assert result.verdict.mode == "healthy" and "solves the task" in result.verdict.reason
    tags = MlflowClient(store["uri"]).get_run(result.run_id).data.tags
    assert tags["verdict"] == "healthy" and tags["mlflow.runName"] == "gla-mqar"


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_run_killed_and_resuming_finishes_it_with_contiguous_steps(store, tiny, child_env,
                                                                                     signal_name):
    import signal

    overrides = tiny("trainer.log_every=1", "trainer.eval_every=100000", "trainer.checkpoint_every=5")
    process = subprocess.Popen([*ESS_TRAIN, *overrides, "trainer.max_steps=100000",
                                f"hydra.run.dir={store['dir']}/hydra"], env=child_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120

    def trained_steps() -> int:  # the first checkpoint (step 0) is written before any training
        found = list((store["dir"] / "ckpt").glob("*/last.pt"))
        return torch.load(found[0], weights_only=True)["step"] if found else -1

    while trained_steps() < 5:
        assert process.poll() is None and time.time() < deadline, "no checkpoint after training appeared"
        time.sleep(0.2)
    process.send_signal(getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    (killed,) = all_runs(store)
    assert killed.info.status == "KILLED", stderr[-2000:]
    assert f"received {signal_name} before step" in killed.data.tags["failure_reason"]
    client = MlflowClient(store["uri"])
    logged = metric_steps(client, killed.info.run_id, "train/loss")
    assert logged == list(range(1, len(logged) + 1))

    state = torch.load(next((store["dir"] / "ckpt").glob("*/last.pt")), weights_only=True)
    end = max(logged[-1], state["step"]) + 5
    with pytest.raises(ConfigError, match="is below the step"):
        run(compose_config([*overrides, "trainer.max_steps=1", f"trainer.resume={killed.info.run_id}"]))
    result = run(compose_config([*overrides, f"trainer.max_steps={end}", f"trainer.resume={killed.info.run_id}"]))
    assert result.run_id == killed.info.run_id and result.resumed_from == state["step"]
    (finished,) = all_runs(store)
    assert finished.info.status == "FINISHED" and "failure_reason" not in finished.data.tags
    assert metric_steps(client, killed.info.run_id, "train/loss") == list(range(1, end + 1))


def test_the_command_line_names_a_bad_setting_in_one_line_with_exit_code_2(store, tiny, child_env):
    done = ess_train(child_env, *tiny("probe.kind=bogus"), f"hydra.run.dir={store['dir']}/hydra", timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ess-train: error: probe.kind must be one of ('entropy', 'tolerance', 'soft_tolerance'), got 'bogus'"]
    assert not (store["dir"] / "mlflow.db").exists()
