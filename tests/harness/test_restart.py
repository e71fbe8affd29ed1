"""The restart rule end to end on a real store: seeds trained a few steps, the one with the lowest
utilization there named, and the command it prints resumes that run."""

import pytest
from mlflow.tracking import MlflowClient

from ess_reg.harness import restart
from ess_reg.harness.ess_train import compose_config, run
from ess_reg.harness.runsets import RunRecord, load_runs


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("restart")
    uri = f"sqlite:///{tmp}/mlflow.db"
    common = ["experiment=tiny", "model=la", f"tracking.uri={uri}", f"tracking.artifact_location={tmp}/artifacts",
              f"trainer.checkpoint_dir={tmp}/ckpt", "trainer.progress=false", "tracking.experiment=restart",
              "trainer.max_steps=3"]
    results = [run(compose_config([*common, f"seed={s}"])) for s in (0, 1, 2)]
    return {"uri": uri, "common": common, "ids": [r.run_id for r in results]}


def util_at(uri, run_id, step):
    return next(m.value for m in MlflowClient(uri).get_metric_history(run_id, "ess/util") if m.step == step)


def test_the_lowest_utilization_is_named_and_its_command_resumes_it(seeds, capsys):
    uri, ids = seeds["uri"], seeds["ids"]
    values = {i: util_at(uri, i, 3) for i in ids}
    assert len(set(values.values())) == 3, "the seeds should differ at step 3"
    lowest = min(ids, key=values.get)
    assert restart.main(["--experiment", "restart", "--step", "3", "--max-steps", "6", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    chosen_line = next(line for line in out.splitlines() if "go on with this one" in line)
    assert lowest in chosen_line and f"{values[lowest]:.4f}" in chosen_line
    assert f"ess-train trainer.resume={lowest} trainer.max_steps=6" in out
    assert restart.pick(load_runs(uri, experiment="restart"), 3, highest=True).run_id == max(ids, key=values.get)
    # the printed command, run: the chosen seed goes on to step 6 and is no longer a candidate
    resumed = run(compose_config([*seeds["common"], "trainer.resume=" + lowest, "trainer.max_steps=6"]))
    assert resumed.run_id == lowest and resumed.steps == 6
    runs = load_runs(uri, experiment="restart")
    assert sorted(r.run_id for r, _ in restart.candidates(runs, 3, "ess/util")) == sorted(set(ids) - {lowest})
    assert [r.run_id for r, _ in restart.candidates(runs, 6, "ess/util")] == [lowest]


def test_what_cannot_be_ranked_is_named(seeds, capsys):
    uri = seeds["uri"]
    assert restart.main(["--experiment", "restart", "--step", "5", "--tracking-uri", uri]) == 2
    assert "no finished run stopped at step 5" in capsys.readouterr().err
    assert restart.main(["--experiment", "restart", "--step", "3", "--metric", "nope", "--tracking-uri", uri]) == 2
    assert "logged no nope there" in capsys.readouterr().err
    bad = RunRecord("x", "x", {"seed": "0"}, {}, {}, history={"ess/util": [(0, 0.5), (3, float("nan"))]})
    with pytest.raises(ValueError, match="has ess/util = nan at step 3"):
        restart.candidates([bad], 3, "ess/util")
    with pytest.raises(SystemExit):
        restart.main(["--experiment", "restart", "--step", "3", "--max-steps", "2", "--tracking-uri", uri])
