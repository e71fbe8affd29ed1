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


def full_run(seed: int, util: float, accuracy: float) -> RunRecord:
    return RunRecord(f"r{seed}", f"seed={seed}", {"seed": str(seed)}, {"valid/accuracy": accuracy}, {},
                     history={"ess/util": [(0, 0.7), (100, util), (1200, 0.5)]})


def test_the_direction_is_read_from_runs_trained_to_the_end(capsys):
    # learners lower at step 100 on every pair: AUC 0 for "higher in learners"; 4 vs 4 runs, the
    # exact two-sided permutation p is 2 / C(8, 4) = 1/35
    runs = ([full_run(s, 0.10 + 0.01 * s, 0.9) for s in range(4)]
            + [full_run(s, 0.30 + 0.01 * s, 0.07) for s in range(4, 8)])
    test = restart.direction(runs, 100)
    assert (test.n_positive, test.n_negative, test.auc) == (4, 4, 0.0) and test.p == pytest.approx(2 / 70)
    assert "pick the lowest (the default)" in restart._say_direction(test, "ess/util", 100)
    flipped = restart.direction([full_run(s, 1 - dict(r.history["ess/util"])[100], r.metrics["valid/accuracy"])
                                 for s, r in enumerate(runs)], 100)
    assert flipped.auc == 1.0 and "pick with --highest" in restart._say_direction(flipped, "ess/util", 100)
    mixed = restart.direction([full_run(s, 0.1 * (s % 2), 0.9 if s < 4 else 0.07) for s in range(8)], 100)
    assert "no direction" in restart._say_direction(mixed, "ess/util", 100)
    # a run stopped at the step is a candidate, not evidence; one group empty is named
    stopped = RunRecord("c", "c", {"seed": "9"}, {"valid/accuracy": 0.0}, {}, history={"ess/util": [(100, 0.2)]})
    assert restart.direction(runs + [stopped], 100).n_negative == 4
    with pytest.raises(ValueError, match="4 reached accuracy 0.25 and 0 did not"):
        restart.direction(runs[:4], 100)


def test_check_on_a_store_says_what_it_lacks(seeds, capsys):
    # the tiny runs reached step 3 or 6 and none learned: nothing to read a direction from
    assert restart.main(["--experiment", "restart", "--step", "3", "--check", "--tracking-uri", seeds["uri"]]) == 2
    assert "a direction needs runs of both kinds" in capsys.readouterr().err


def test_the_rules_rate_counts_every_subset():
    # four runs, only the lowest learned: it is a pair's lowest in 3 of the 6 pairs, picked alone 1 in 4
    assert restart.keep_rate([0.1, 0.2, 0.3, 0.4], [True, False, False, False], 2) == pytest.approx(3 / 6)
    assert restart.keep_rate([0.1, 0.2, 0.3, 0.4], [True, False, False, False], 1) == pytest.approx(1 / 4)
    # the two learners score highest: the lowest of a pair learned only in the pair of both
    assert restart.keep_rate([0.4, 0.3, 0.2, 0.1], [True, True, False, False], 2) == pytest.approx(1 / 6)
    # picking the highest instead: every pair but the one of the two failures
    assert restart.keep_rate([0.4, 0.3, 0.2, 0.1], [True, True, False, False], 2, highest=True) == pytest.approx(5 / 6)
    # k = n picks the single extreme run
    assert restart.keep_rate([0.4, 0.3, 0.2, 0.1], [True, True, False, False], 4) == 0.0
    with pytest.raises(ValueError, match="k must lie in 1..4"):
        restart.keep_rate([0.1, 0.2, 0.3, 0.4], [True] * 4, 5)
    with pytest.raises(ValueError, match="4 scores but 3 outcomes"):
        restart.keep_rate([0.1, 0.2, 0.3, 0.4], [True] * 3, 2)


def test_check_says_what_the_rule_would_have_given(monkeypatch, capsys):
    # learners lower at step 100 (AUC 0, p 1/35): the rule's gain is printed for the lowest end,
    # with the extra steps against the pilot's own budget (1200)
    runs = ([full_run(s, 0.10 + 0.01 * s, 0.9) for s in range(4)]
            + [full_run(s, 0.30 + 0.01 * s, 0.07) for s in range(4, 8)])
    monkeypatch.setattr(restart, "load_runs", lambda uri, experiment: runs)
    assert restart.main(["--experiment", "pilot", "--step", "100", "--check"]) == 0
    out = capsys.readouterr().out
    # one seed: 4 of 8; the lowest of 2 learned unless both were failures: 1 - C(4,2)/C(8,2) = 22/28
    assert "one seed 0.50; lowest of 2 0.79 (+8% steps); lowest of 3 0.93 (+17% steps)" in out
    # the learners highest instead: the same rates at the other end, and --max-steps sets the cost
    flipped = [full_run(s, 1 - dict(r.history["ess/util"])[100], r.metrics["valid/accuracy"])
               for s, r in enumerate(runs)]
    monkeypatch.setattr(restart, "load_runs", lambda uri, experiment: flipped)
    assert restart.main(["--experiment", "pilot", "--step", "100", "--check", "--max-steps", "2000"]) == 0
    assert "one seed 0.50; highest of 2 0.79 (+5% steps); highest of 3 0.93 (+10% steps)" in capsys.readouterr().out
    # no direction: no gain printed
    mixed = [full_run(s, 0.1 * (s % 2), 0.9 if s < 4 else 0.07) for s in range(8)]
    monkeypatch.setattr(restart, "load_runs", lambda uri, experiment: mixed)
    assert restart.main(["--experiment", "pilot", "--step", "100", "--check"]) == 0
    out = capsys.readouterr().out
    assert "no direction" in out and "would have given" not in out
