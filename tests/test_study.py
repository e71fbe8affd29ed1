"""ess-report: statistics against hand-computed values, and a report read back from a real store."""

import math

import pytest
from mlflow.tracking import MlflowClient

from ess_reg.harness.app import compose_config, run
from ess_reg.harness.stats import bootstrap_interval, mean_spread, pearson, ranks, spearman
from ess_reg.harness.study import MEASURES, correlations, group_runs, load_runs
from ess_reg.harness.study import main as report_main


def test_ranks_share_ties_and_spearman_matches_the_formula():
    assert ranks([10, 30, 20, 20]).tolist() == [1.0, 4.0, 2.5, 2.5]
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)); d = (0, 1, -1, 0) -> 1 - 12 / 60 = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # a constant side has no correlation
    assert mean_spread([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


def test_bootstrap_interval_is_reproducible_and_brackets_the_estimate():
    a = [0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.2, 0.5]
    b = [2, 1, 5, 7, 3, 8, 4, 6]
    stat = lambda idx: spearman([a[i] for i in idx], [b[i] for i in idx])  # noqa: E731
    lo, hi = bootstrap_interval(stat, len(a), resamples=500, seed=1)
    assert (lo, hi) == bootstrap_interval(stat, len(a), resamples=500, seed=1)
    assert lo <= spearman(a, b) <= hi and -1 <= lo < hi <= 1


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two mixers x two seeds of the tiny run, in one experiment, plus a failed run that must be left out."""
    tmp = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{tmp}/mlflow.db"
    common = ["experiment=tiny", f"tracking.uri={uri}", f"tracking.artifact_location={tmp}/artifacts",
              f"trainer.checkpoint_dir={tmp}/ckpt", "trainer.progress=false", "tracking.experiment=study"]
    results = [run(compose_config([*common, f"model={m}", f"seed={s}"])) for m in ("la", "gla") for s in (0, 1)]
    return {"uri": uri, "dir": tmp, "results": results}


def test_runs_are_grouped_by_config_without_the_seed(study):
    records = load_runs(study["uri"], experiment="study")
    assert sorted(r.run_id for r in records) == sorted(r.run_id for r in study["results"])
    groups = group_runs(records)
    assert [g.label for g in groups] == ["model=gla", "model=la"]
    assert all(len(g.runs) == 2 for g in groups)
    by_id = {r.run_id: r for r in study["results"]}
    for g in groups:  # the group's values are its runs' logged values
        expected = sorted(by_id[r.run_id].metrics["ess/per_kv"] for r in g.runs)
        assert sorted(g.values(MEASURES["ESS/kv"])) == pytest.approx(expected)
    first = records[0]  # TSS/kv: the layers' TSS at the end of the context over the pairs
    assert MEASURES["TSS/kv"](first) == pytest.approx(16 / 4)  # feature_dim 16, 4 pairs (tiny)
    assert MEASURES["ESS/kv at init"](first) is not None


def test_correlations_pool_and_split_by_mixer(study):
    records = load_runs(study["uri"], experiment="study")
    found = {(c.scope, c.measure): c for c in correlations(records, ["ESS/kv"], resamples=200)}
    pooled = found[("all runs", "ESS/kv")]
    acc = [r.metrics["valid/accuracy"] for r in records]
    assert pooled.n == 4 and pooled.spearman == pytest.approx(spearman(acc, [MEASURES["ESS/kv"](r) for r in records]),
                                                                nan_ok=True)
    assert ("la", "ESS/kv") not in found  # two runs per mixer: too few for a correlation


def test_ess_report_writes_the_report_and_names_a_bad_source(study, capsys):
    out = study["dir"] / "report"
    assert report_main(["--experiment", "study", "--tracking-uri", study["uri"], "--out", str(out),
                        "--resamples", "200"]) == 0
    text = (out / "report.md").read_text()
    assert "4 finished runs in 2 configurations" in text and "| model=gla | 2 |" in text
    assert (out / "accuracy_vs_ess_per_kv.png").stat().st_size > 0
    assert "| model=la | 2 |" in capsys.readouterr().out  # the key table on the terminal
    assert report_main(["--experiment", "nope", "--tracking-uri", study["uri"]]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err


def test_a_sweep_report_is_logged_to_its_parent(study):
    client = MlflowClient(study["uri"])
    experiment = client.get_experiment_by_name("study").experiment_id
    parent = client.create_run(experiment, run_name="parent").info.run_id
    for result in study["results"]:
        client.set_tag(result.run_id, "mlflow.parentRunId", parent)
    assert report_main(["--parent", parent, "--tracking-uri", study["uri"], "--out", str(study["dir"] / "p"),
                        "--resamples", "200"]) == 0
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent, "report")}
