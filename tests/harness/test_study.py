"""ess-report: statistics against hand-computed values, and a report read back from a real store."""

import math

import pytest
from mlflow.tracking import MlflowClient

from ess_reg.harness.ess_train import compose_config, run
from ess_reg.harness.stats import bootstrap_interval, mean_spread, pearson, ranks, spearman
from ess_reg.harness.ess_report import RUN_MEASURES, correlations, group_runs, load_runs
from ess_reg.harness.ess_report import main as report_main


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
        assert sorted(g.values(RUN_MEASURES["ESS/kv"])) == pytest.approx(expected)
    first = records[0]  # TSS/kv: the layers' TSS at the end of the context over the pairs
    assert RUN_MEASURES["TSS/kv"](first) == pytest.approx(16 / 4)  # feature_dim 16, 4 pairs (tiny)
    assert RUN_MEASURES["ESS/kv at init"](first) is not None
    # the histories read in full: each evaluation's loss and every layer's utilization beside the
    # model's, at the same steps (an early warning reads them at one step)
    steps = [s for s, _ in first.history["ess/util"]]
    assert len(steps) > 1 and [s for s, _ in first.history["valid/loss"]] == steps
    layers = sorted(k for k in first.history if k.startswith("L") and k.endswith("/util"))
    assert layers == sorted(k for k in first.metrics if k.startswith("L") and k.endswith("/util")) != []
    assert all([s for s, _ in first.history[k]] == steps for k in layers)
    assert first.history["valid/loss"][-1][1] == pytest.approx(first.metrics["valid/loss"])


def test_correlations_pool_and_split_by_mixer(study):
    records = load_runs(study["uri"], experiment="study")
    found = {(c.scope, c.unit, c.measure): c for c in correlations(records, ["ESS/kv"], resamples=200)}
    pooled = found[("all runs", "runs", "ESS/kv")]
    assert pooled.n == 4 and pooled.test.refused == "4 points, fewer than 5"  # four runs carry no correlation
    assert found[("all runs", "configurations", "ESS/kv")].n == 2  # the seed means: two configurations
    assert found[("la", "runs", "ESS/kv")].n == 2


def _record(run_id, seed, steps, params, tags=None, name=None):
    from ess_reg.harness.ess_report import RunRecord

    base = {"model.mixer": "gla", "model._target_": "ess_reg.models.lm.LanguageModel", "task.num_kv_pairs": "4",
            "trainer.max_steps": "200", "trainer.eval_examples": "512", "seed": str(seed),
            "tracking.run_name": name or f"run {run_id}", "penalty._target_": "None"}
    return RunRecord(run_id, name or run_id, {**base, **params}, {"valid/accuracy": 0.5 + 0.01 * seed},
                     {"model": "gla", "penalty": "none", **(tags or {})},
                     history={"ess/util": [(0, 0.3), (steps, 0.4)]})


def test_configurations_are_the_full_config_and_labels_name_only_what_differs():
    from ess_reg.harness.ess_report import differing, group_runs, labels, warnings_for

    ess_max = {"penalty._target_": "ess_reg.penalty.ESSPenalty", "penalty.objective": "maximize"}
    records = [
        *(_record(f"n{s}", s, 200, {}, name=f"my name {s}") for s in range(3)),       # named runs: still one group
        *(_record(f"a{s}", s, 200, {**ess_max, "penalty.schedule.weight": "0.01"}, {"penalty": "ess_max"})
          for s in range(3)),
        *(_record(f"b{s}", s, 200, {**ess_max, "penalty.schedule.weight": "0.1"}, {"penalty": "ess_max"})
          for s in range(3)),
        _record("q", 0, 1000, {"trainer.max_steps": "1000"}),                          # the Quickstart: 1000 steps
        _record("r", 1, 1000, {"trainer.max_steps": "200"}),                           # resumed from 200 to 1000
    ]
    groups = group_runs(records)
    assert sorted(g.label for g in groups) == sorted([
        "penalty=none steps=200", "penalty=ess_max penalty.schedule.weight=0.01 steps=200",
        "penalty=ess_max penalty.schedule.weight=0.1 steps=200", "penalty=none steps=1000"])
    by_label = {g.label: g for g in groups}
    assert {r.run_id for r in by_label["penalty=none steps=1000"].runs} == {"q", "r"}  # reached step, not budget
    assert len(by_label["penalty=none steps=200"].runs) == 3  # whatever the run names
    assert differing(groups) == {"steps": ["200", "1000"]}
    notes = warnings_for(groups)
    assert len(notes) == 1 and "200 (9 runs), 1000 (2 runs)" in notes[0] and "never pooled" in notes[0]
    assert labels([{"model": "gla", "seedless": "x"}]) == ["all runs"]


def test_runs_under_a_stopping_rule_are_one_configuration_whatever_step_each_stopped_at(tmp_path):
    from ess_reg.harness.ess_report import budgets, group_runs, write_report

    rule = {"trainer.max_steps": "2000", "trainer.stop.patience": "500", "trainer.stop.target": "None"}
    records = [_record(f"s{s}", s, steps, rule) for s, steps in enumerate((600, 900, 1500))]
    records.append(_record("f", 0, 600, {}))  # a fixed-budget run that ended at 600 is another configuration
    groups = group_runs(records)
    assert len(groups) == 2 and sorted(len(g.runs) for g in groups) == [1, 3]
    ruled = next(g for g in groups if len(g.runs) == 3)
    assert ruled.identity["steps"] == "<=2000 (trainer.stop)" and ruled.steps == 2000
    assert sorted(budgets(groups)) == [600, 2000]
    path, _ = write_report(records, tmp_path, "t", resamples=200)
    assert "| 900 (median; trainer.stop, cap 2000) |" in path.read_text()


def test_the_baseline_is_found_whatever_the_runs_are_named(tmp_path):
    from ess_reg.harness.ess_report import write_report

    records = []
    for s in range(8):
        none = _record(f"n{s}", s, 200, {}, name=f"baseline seed {s}")
        pen = _record(f"p{s}", s, 200, {"penalty._target_": "ess_reg.penalty.ESSPenalty"}, {"penalty": "ess_max"},
                      name=f"treated seed {s}")
        pen.metrics["valid/accuracy"] = none.metrics["valid/accuracy"] + 0.02 + 0.001 * s
        for r in (none, pen):  # the accuracy curve: at 0.5 and above by step 100 (0.5 + ... >= 0.5)
            r.history["valid/accuracy"] = [(0, 0.01), (100, r.metrics["valid/accuracy"]),
                                           (200, r.metrics["valid/accuracy"])]
        records += [none, pen]
    path, terminal = write_report(records, tmp_path, "t", baseline="penalty=none", resamples=200)
    text = path.read_text()
    section = text.split("## Against the baseline (penalty=none)")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| penalty=ess_max |"))
    # 8 pairs all higher: exact sign and permutation p = 2 / 256; one comparison, so Holm changes nothing
    assert "| 8 pairs |" in row and row.endswith("| 8 / 0 | 0.008 | 0.008 | 0.008 | higher |")
    assert "*[" not in row  # 8 pairs: the interval is not marked unreliable
    assert "**" not in text  # nothing in bold: the reading says what holds
    assert "2 configurations with 8 seeds" in text and "[(" not in text
    assert "| steps to 0.5 | steps to 0.9 |" in text and "| 100 (8 of 8) | - (0 of 8) |" in text  # faster vs better


def test_rescued_and_lost_seeds_and_steps_saved_are_counted_pair_by_pair(tmp_path):
    from ess_reg.harness.comparison import compare_reaching
    from ess_reg.harness.ess_report import group_runs, write_report

    # Ten seeds. Without the penalty seeds 0-5 never reach 0.25; with it seeds 0-3 do (rescued),
    # seed 9 does not (lost); seeds 6-8 reach it with both, 100 steps sooner with the penalty.
    def curve(at):  # chance until step `at`, then 0.6
        return [(0, 0.03)] + [(s, 0.6 if at is not None and s >= at else 0.03) for s in range(100, 1001, 100)]

    records = []
    for s in range(10):
        none = _record(f"n{s}", s, 1000, {})
        pen = _record(f"p{s}", s, 1000, {"penalty._target_": "ess_reg.penalty.ESSPenalty"}, {"penalty": "ess_max"})
        none.history["valid/accuracy"] = curve(None if s < 6 else 600)
        pen.history["valid/accuracy"] = curve(800 if s < 4 else None if s in (4, 5, 9) else 500)
        records += [none, pen]
    groups = group_runs(records)
    (c,) = compare_reaching(groups, lambda g: g.identity.get("penalty") == "none", lambda g: (),
                            lambda r: r.history["valid/accuracy"], 0.25, pair=lambda r: r.params["seed"])
    assert (c.pairs, c.reached, c.baseline_reached, c.failing) == (10, 7, 4, 6)
    assert (c.rescued, c.lost) == (4, 1) and c.p == pytest.approx(0.375)  # exact McNemar: 2 * P(X <= 1), X ~ B(5, 1/2)
    assert (c.faster, c.slower, c.median_saved) == (3, 0, 100) and c.speed_p == pytest.approx(0.25)
    lo, hi = c.rescue_interval
    assert lo == pytest.approx(0.2228, abs=1e-4) and hi == pytest.approx(0.9567, abs=1e-4)  # 4 of 6, Clopper-Pearson
    path, _ = write_report(records, tmp_path, "t", baseline="penalty=none", resamples=200, thresholds=(0.25,))
    row = next(line for line in path.read_text().split("### Accuracy 0.25")[1].splitlines()
               if line.startswith("| penalty=ess_max |"))
    assert row == ("| penalty=ess_max | 10 | 7 | 4 | 4 of 6 | 0.67 [0.22, 0.96] | 1 of 4 | 0.375 | 0.375 | 3 / 0 "
                   "| +100 | 0.250 |")


def test_steps_to_a_threshold_are_read_from_a_known_curve():
    from ess_reg.harness.comparison import steps_to

    curve = [(200, 0.55), (0, 0.01), (100, 0.2), (300, 0.5), (400, 0.93)]  # in any order
    assert steps_to(curve, 0.5) == 200 and steps_to(curve, 0.9) == 400
    assert steps_to(curve, 0.99) is None and steps_to([], 0.5) is None  # never reached: censored, not a step


def test_ess_report_writes_the_report_and_names_a_bad_source(study, capsys):
    out = study["dir"] / "report"
    assert report_main(["--experiment", "study", "--tracking-uri", study["uri"], "--out", str(out),
                        "--resamples", "200"]) == 0
    text = (out / "report.md").read_text()
    assert "4 finished runs in 2 configurations (2 configurations with 2 seeds)" in text
    assert "| model=gla | 2 | 6 |" in text  # label, seeds, steps reached
    assert (out / "accuracy_vs_ess_per_kv.png").stat().st_size > 0
    assert "| model=la | 2 |" in capsys.readouterr().out  # the key table on the terminal
    assert report_main(["--experiment", "nope", "--tracking-uri", study["uri"]]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err



def test_ess_report_from_a_records_file_is_the_report_from_the_store(study, capsys):
    # exported from the store, then reported from the file alone: the same tables
    store_out, file_out = study["dir"] / "from_store", study["dir"] / "from_file"
    records = study["dir"] / "kept" / "study.jsonl.gz"  # its folder does not exist yet
    assert report_main(["--experiment", "study", "--tracking-uri", study["uri"], "--out", str(store_out),
                        "--resamples", "200", "--export", str(records)]) == 0
    assert report_main(["--records", str(records), "--out", str(file_out), "--resamples", "200"]) == 0
    body = lambda out: (out / "report.md").read_text().split("\n", 1)[1]  # noqa: E731  (the title names the source)
    assert body(store_out) == body(file_out)
    capsys.readouterr()
    assert report_main(["--records", str(study["dir"] / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err

def test_a_sweep_report_is_logged_to_its_parent(study):
    client = MlflowClient(study["uri"])
    experiment = client.get_experiment_by_name("study").experiment_id
    parent = client.create_run(experiment, run_name="parent").info.run_id
    for result in study["results"]:
        client.set_tag(result.run_id, "mlflow.parentRunId", parent)
    assert report_main(["--parent", parent, "--tracking-uri", study["uri"], "--out", str(study["dir"] / "p"),
                        "--resamples", "200"]) == 0
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent, "report")}


def test_a_treatment_is_compared_with_the_baseline_of_its_own_stratum():
    from types import SimpleNamespace as NS

    from ess_reg.harness.comparison import compare_to_baseline

    def group(label, values):
        return NS(label=label, runs=[NS(value=v) for v in values])

    groups = [group("none a", [0.10, 0.12, 0.11]), group("pen a", [0.50, 0.52, 0.51]),
              group("none b", [0.80, 0.90]), group("pen b", [0.85, 0.75]), group("pen c", [0.3, 0.4])]
    found = compare_to_baseline(groups, lambda g: g.label.startswith("none"), lambda g: g.label.split()[1],
                                lambda r: r.value, resamples=500)
    by = {c.label: c for c in found}
    assert set(by) == {"pen a", "pen b"}  # "pen c" has no baseline under its settings
    assert by["pen a"].baseline == "none a" and by["pen a"].difference == pytest.approx(0.40)
    assert by["pen a"].interval[0] > 0.35 and not by["pen a"].paired  # Welch's interval, far from 0 ...
    assert by["pen a"].p == pytest.approx(2 / 20)  # ... but 3 runs against 3 can never give an exact p below 0.1
    assert by["pen a"].holm_p == pytest.approx(min(1, 2 * by["pen a"].p))  # the smaller of two p-values, times 2
    assert by["pen a"].reading() == "no clear difference: 3 + 3 runs cannot reach p < 0.05"
    assert by["pen b"].difference == pytest.approx(-0.05) and by["pen b"].reading().startswith("no clear difference")
    lo, hi = by["pen b"].interval
    assert lo < -0.05 < hi
    # Paired by seed: the same seeds on both sides, each seed's difference is what is tested.
    def seeded(label, values):
        return NS(label=label, runs=[NS(value=v, seed=i) for i, v in enumerate(values)])

    base, treated = seeded("none x", [0.2, 0.5, 0.8, 0.4]), seeded("pen x", [0.25, 0.56, 0.83, 0.47])
    paired = compare_to_baseline([base, treated], lambda g: g.label.startswith("none"), lambda g: "x",
                                 lambda r: r.value, pair=lambda r: r.seed, resamples=500)[0]
    unpaired = compare_to_baseline([base, treated], lambda g: g.label.startswith("none"), lambda g: "x",
                                   lambda r: r.value, resamples=500)[0]
    assert paired.paired and paired.test.higher == 4 and not unpaired.paired
    assert paired.difference == pytest.approx(0.0525) == unpaired.difference
    assert paired.interval[0] >= 0.02  # each seed: +0.03..+0.07, a t-interval clear of zero ...
    assert paired.p == pytest.approx(2 / 16) and "4 pairs cannot reach" in paired.reading()  # ... from 4 pairs
    assert unpaired.interval[0] < 0 < unpaired.interval[1]  # the seeds' spread hides it without pairing
    with pytest.raises(ValueError, match="two baseline groups"):
        compare_to_baseline([*groups, group("none a", [0.2])], lambda g: g.label.startswith("none"),
                            lambda g: g.label.split()[1], lambda r: r.value)


def test_collapse_during_training_is_counted_with_its_steps():
    from ess_reg.harness.comparison import collapse_steps, collapse_summary

    recovers = [(0, 0.7), (100, 0.15), (200, 0.1), (300, 0.5), (400, 0.6)]
    stays = [(0, 0.6), (100, 0.4), (200, 0.19), (300, 0.2)]
    never = [(0, 0.1), (100, 0.5)]  # at initialization only: not a collapse during training
    assert collapse_steps(recovers, 0.2) == [100, 200] and collapse_steps(never, 0.2) == []
    c = collapse_summary([recovers, stays, never], 0.2)
    assert (c.runs, c.collapsed, c.at_end) == (3, 2, 1)
    assert c.first_steps == [100, 200] and c.recovered_steps == [300]


def test_ess_report_compares_with_a_baseline_and_takes_another_target(study, capsys):
    out = study["dir"] / "report-baseline"
    assert report_main(["--experiment", "study", "--tracking-uri", study["uri"], "--out", str(out),
                        "--resamples", "200", "--baseline", "model=la", "--target", "valid/loss"]) == 0
    text = (out / "report.md").read_text()
    records = load_runs(study["uri"], experiment="study")
    mean = lambda m: sum(r.metrics["valid/loss"] for r in records if r.mixer == m) / 2  # noqa: E731
    section = text.split("## Against the baseline (model=la)")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| model=gla | 2 pairs | "))
    assert "| 2 pairs |" in row  # both sides ran seeds 0 and 1: compared seed by seed
    assert f"| {mean('gla') - mean('la'):+.3f} |" in row
    assert "*[" in row and "2 pairs cannot reach p < 0.05" in row  # two pairs: an unreliable interval, said so
    assert "## valid/loss against each measure" in text and "## Collapse during training" in text
    capsys.readouterr()
    assert report_main(["--experiment", "study", "--tracking-uri", study["uri"], "--target", "valid/nope"]) == 2
    assert "--target valid/nope: no run logged it" in capsys.readouterr().err
    assert report_main(["--experiment", "study", "--tracking-uri", study["uri"], "--baseline", "penalty"]) == 2
    assert "--baseline must be KEY=VALUE" in capsys.readouterr().err
    assert report_main(["--experiment", "study", "--tracking-uri", study["uri"], "--thresholds", "0.5,90"]) == 2
    assert "--thresholds: 90 is not an accuracy in (0, 1]" in capsys.readouterr().err
    garbage = study["dir"] / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 10)
    assert report_main(["--experiment", "study", "--tracking-uri", f"sqlite:///{garbage}"]) == 2
    assert "is not an SQLite database (not an MLflow store)" in capsys.readouterr().err
    assert report_main(["--experiment", "study", "--tracking-uri", "http://127.0.0.1:9"]) == 2  # nobody listens
    assert "no tracking server answers at 127.0.0.1:9" in capsys.readouterr().err
    assert report_main(["--parent", "deadbeef00", "--tracking-uri", study["uri"]]) == 2
    assert "no run 'deadbeef00' in the store" in capsys.readouterr().err
