"""The study scripts under docs/results/ on fabricated runs whose right answers are known by
construction: the pairing by seed, what is left out and named, the tests' p-values and the
rescue counts. The stores' reading is tested elsewhere (test_study); here the records are built."""

import importlib.util
import sys
from pathlib import Path

import pytest

from ess_reg.harness.runsets import RunRecord

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def arms():
    return load(RESULTS / "arms.py", "results_arms")


def run(seed: int, penalty: str, accuracy: float, *, history=(), util=0.5, rid=None, **params) -> RunRecord:
    return RunRecord(rid or f"{penalty}-{seed}", f"{penalty} seed={seed}",
                     {"seed": str(seed), "penalty": penalty, **params},
                     {"valid/accuracy": accuracy, "L0/util": util, "L1/util": util}, {},
                     history={"valid/accuracy": list(history) or [(0, 0.0), (1200, accuracy)]})


def study(arms_module, baseline: list[float], arm: list[float], seeds=None):
    seeds = seeds or range(len(baseline))
    return ([run(s, "none", b, util=0.1 if b < 0.25 else 0.5) for s, b in zip(seeds, baseline)]
            + [run(s, "ess_constraint", a) for s, a in zip(seeds, arm)])


def row(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_arms_counts_a_sign_flip_test_and_the_rescues(arms):
    # 8 pairs: 3 seeds go from chance to recall, 4 stay at chance a little higher, 1 learner
    # stays; every difference positive, so the exact two-sided sign-flip p is 2 / 2^8.
    baseline = [0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.11, 0.85]
    arm = [0.80, 0.50, 0.30, 0.09, 0.10, 0.11, 0.12, 0.86]
    text = arms.analyse(study(arms, baseline, arm), ["ess_constraint:none"], title="t", rescue_at=0.25)
    cells = row(text, "| ess_constraint vs none | 8 | +")
    assert cells[3] == "8 / 0 / 0" and float(cells[4]) == pytest.approx(2 / 2 ** 8, abs=1e-3)
    rescue = row(text, "| ess_constraint vs none | 8 | 7 |")
    # 3 of the 7 failing seeds rescued, none lost: exact McNemar p = 2 / 2^3
    assert rescue[3].startswith("3 of 7") and rescue[4] == "0" and float(rescue[5]) == pytest.approx(0.25)
    assert row(text, "| none | 8 |")[3].startswith("7 [")  # seven baselines collapsed at the end
    assert row(text, "| ess_constraint | 8 |")[3].startswith("0 [")


def test_arms_checks_a_measure_at_a_step_by_the_sign_test(arms):
    # the arm's utilization at step 100 lower on 7 of 8 seeds, tied on one: exact sign p = 2 / 2^7
    runs = study(arms, [0.05] * 8, [0.9] * 8)
    for r in runs:
        lowered = r.params["penalty"] != "none" and r.params["seed"] != "0"
        r.history["ess/util"] = [(100, 0.15 if lowered else 0.2), (200, 0.2)]
    text = arms.analyse(runs, ["ess_constraint:none"], title="t", checks=("ess/util@100", "ess/util@200"))
    cells = row(text, "| ess_constraint vs none | ess/util at step 100 |")
    assert cells[2:5] == ["8", "7 / 0 / 1", "-0.0500"] and float(cells[5]) == pytest.approx(2 / 2 ** 7, abs=1e-3)
    assert row(text, "| ess_constraint vs none | ess/util at step 200 |")[3:6] == ["0 / 0 / 8", "+0.0000", "1.000"]
    with pytest.raises(SystemExit, match="has no ess/util at step 300"):
        arms.analyse(runs, ["ess_constraint:none"], title="t", checks=("ess/util@300",))
    with pytest.raises(SystemExit, match="give KEY@STEP"):
        arms.analyse(runs, ["ess_constraint:none"], title="t", checks=("ess/util",))


def test_arms_paired_only_names_and_leaves_out_an_unfinished_pair(arms):
    runs = study(arms, [0.1, 0.2, 0.3], [0.2, 0.3, 0.4])
    runs.append(run(9, "none", 0.05))  # its arm was stopped by the clock
    text = arms.analyse(runs, ["ess_constraint:none"], title="t", paired_only=True)
    assert "seeds [9]" in text and "| 9 |" not in text
    assert row(text, "| ess_constraint vs none |")[1] == "3"


def test_arms_refuses_two_runs_of_one_arm_on_a_seed(arms):
    # pooling two studies that share a seed would otherwise keep one run silently
    runs = study(arms, [0.1], [0.2]) + [run(0, "none", 0.3, rid="second")]
    with pytest.raises(SystemExit, match="seed 0 has two finished runs of arm 'none'"):
        arms.analyse(runs, ["ess_constraint:none"], title="t")


def test_arms_names_the_arms_when_a_comparison_has_none(arms):
    with pytest.raises(SystemExit, match="the arms are"):
        arms.analyse(study(arms, [0.1], [0.2]), ["ess_max:none"], title="t")


def test_arms_tells_weights_apart_only_where_they_differ(arms):
    runs = [run(0, "ess_max", 0.5, **{"penalty.schedule.weight": "0.01"}),
            run(0, "ess_max", 0.6, rid="b", **{"penalty.schedule.weight": "0.1"}), run(0, "none", 0.4)]
    assert {arms.arm_of(r, {"ess_max"}) for r in runs} == {"ess_max w=0.01", "ess_max w=0.1", "none"}


def test_arms_first_step_at_threshold(arms):
    assert arms.first_step([(0, 0.0), (100, 0.3), (200, 0.6)], 0.5) == 200
    assert arms.first_step([(0, 0.0), (100, 0.3)], 0.5) is None


@pytest.fixture
def compression(monkeypatch):
    """The compression folder's scripts import each other by their bare names."""
    folder = RESULTS / "compression"
    monkeypatch.syspath_prepend(str(folder))
    for name in ("arms", "knee", "merge", "knee_penalty", "compare"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return lambda name: load(folder / f"{name}.py", name)


def cut_run(seed, source, size, accuracy, *, rule="None", before=None, rid_suffix="", **params):
    return run(seed, "none", accuracy, rid=f"{source}-{size}-{rule}{rid_suffix}",
               history=[(0, accuracy - 0.2 if before is None else before), (200, accuracy)],
               **{"init.source": f"runs/x/{source}/", "init.compressed.source": source,
                  "init.compressed.size": str(size), "init.compressed.rule": rule}, **params)


def test_knee_penalty_pairs_sources_and_leaves_out_weak_ones(compression, tmp_path, monkeypatch):
    # Sources of two arms on five seeds, each cut to 16/8/6/4 and to its entropy size. The ess_min
    # arm's cuts are 0.05 better at every size; seed 114's ess_min source is below 0.8 (left out).
    knee_penalty = compression("knee_penalty")
    runs = []
    for seed in (110, 111, 112, 113, 114):
        for arm in ("none", "ess_min"):
            source = f"{arm}{seed}"
            weight = {"penalty.schedule.weight": "0.1"} if arm == "ess_min" else {}
            runs.append(run(seed, arm, 0.5 if (seed, arm) == (114, "ess_min") else 0.95, rid=source,
                            **{"init.source": "None"}, **weight))
            for size in (16, 8, 6, 4, "entropy"):
                k = 11 if size == "entropy" else size
                accuracy = 0.99 - max(0, 10 - k) * 0.03 + (0.05 if arm == "ess_min" else 0.0)
                runs.append(cut_run(seed, source, k, min(accuracy, 1.0), before=accuracy - 0.2,
                                    rule="entropy" if size == "entropy" else "None"))
    monkeypatch.setattr(knee_penalty, "load_runs", lambda uri, experiment: runs)
    knee_penalty.main(["--experiment", "fake", "--out", str(tmp_path)])
    text = (tmp_path / "fake.md").read_text()
    assert "seed 114 (ess_min source below 0.8)" in text
    primary = row(text, "| cut to 6, after the fine-tune |")
    assert primary[1] == "4" and float(primary[2]) == pytest.approx(0.05, abs=1e-9)
    assert primary[4] == "4 / 0 / 0" and float(primary[5]) == pytest.approx(2 / 2 ** 4)
    assert float(primary[6]) == pytest.approx(2 * 2 / 2 ** 4)  # Holm over the two primary outcomes
    assert row(text, "| cut to 8, after the fine-tune |")[6] == "(secondary)"
    sources = row(text, "| the sources (uncut, every pair) |")
    assert sources[1] == "5" and float(sources[2]) == pytest.approx(-0.09)


def test_knee_penalty_measures_the_knee_step_in_coordinates(compression, tmp_path, monkeypatch):
    # On the fine grid the none sources' knees are 8, 8, 7 and 16 (no cut holds), ess_min's 6, 6, 5
    # and 8: steps 2, 2, 2 and 8, mean 3.5; with knees above the largest cut (8) counted as 8, 1.5.
    knee_penalty = compression("knee_penalty")
    grid = (16, 8, 7, 6, 5, 4)
    knees = {120: (8, 6), 121: (8, 6), 122: (7, 5), 123: (16, 8)}
    runs = []
    for seed, pair in knees.items():
        for arm, knee in zip(("none", "ess_min"), pair):
            source = f"{arm}{seed}"
            runs.append(run(seed, arm, 0.95, rid=source, **{"init.source": "None"}))
            for size in (*grid, "entropy"):
                k = 10 if size == "entropy" else size
                runs.append(cut_run(seed, source, k, 0.95 if k >= knee else 0.5,
                                    rule="entropy" if size == "entropy" else "None"))
    monkeypatch.setattr(knee_penalty, "load_runs", lambda uri, experiment: runs)
    knee_penalty.main(["--experiment", "fake", "--out", str(tmp_path), "--grid", ",".join(map(str, grid)),
                       "--primary", "4", "--family", "knee-step"])
    text = (tmp_path / "fake.md").read_text()
    assert "the step, knee(none) - knee(ess_min), +3.50 coordinates" in text
    assert "(4 smaller with ess_min, 0 larger, 0 equal); exact sign-flip p = 0.1250" in text
    assert "the median step +2; with knees above 8 counted as 8, +1.50" in text
    assert "Holm" not in text.split("paired by seed;")[1].split("\n")[0]  # no family: every table line secondary


def test_arms_reads_back_the_table_it_published(arms, tmp_path):
    # a study whose store is gone is pooled from its arms.md: the table read back gives the same report
    baseline = [0.05, 0.06, 0.07, 0.08, 0.85]
    arm = [0.80, 0.50, 0.30, 0.09, 0.86]
    runs = study(arms, baseline, arm)
    runs[5].history["valid/accuracy"] = [(0, 0.0), (300, 0.4), (700, 0.8)]
    text = arms.analyse(runs, ["ess_constraint:none"], title="t", rescue_at=0.25)
    (tmp_path / "arms.md").write_text(text)
    assert arms.analyse(arms.runs_from_table(tmp_path / "arms.md", [0.25, 0.5]), ["ess_constraint:none"],
                        title="t", rescue_at=0.25) == text
    with pytest.raises(SystemExit, match="printed with thresholds"):
        arms.runs_from_table(tmp_path / "arms.md", [0.5, 0.9])


def test_knee_finds_the_knee_and_the_entropy_size_moving_with_the_load(compression, tmp_path, monkeypatch):
    # Four pairs of loads hold down to the state they need (4 with 4 pairs, 8 with 8); the entropy
    # size is 5 and 9. So A holds on every source, half of k_E does not, and both move with the load.
    knee = compression("knee")
    grid = (16, 8, 6, 4, 3, 2)
    runs = []
    for seed in range(4):
        for load, k_e in ((4, 5), (8, 9)):
            source = f"s{load}-{seed}"
            pairs = {"task.num_kv_pairs": str(load)}
            runs.append(run(seed, "none", 0.95, rid=source, **{"init.source": "None"}, **pairs))
            runs += [cut_run(seed, source, k, 0.99 if k >= load else 0.5, **pairs) for k in grid]
            runs.append(cut_run(seed, source, k_e, 0.99, rule="entropy", **pairs))
    monkeypatch.setattr(knee, "load_runs", lambda uri, experiment: runs)
    knee.main(["--experiment", "knee_load", "--grid", ",".join(map(str, grid)), "--out", str(tmp_path)])
    text = (tmp_path / "knee_load.md").read_text()
    assert "holds on 8 of 8 sources (exact sign test p = 0.008)" in text          # A
    assert "B, half the entropy size is not" in text and "holds on 8 of 8" in text.split("B, ")[1]
    assert "larger with 8 pairs than with 4 on 4 of 4 seeds" in text                # C
    assert "knees with 4 pairs [4, 4, 4, 4], with 8 [8, 8, 8, 8]" in text
    assert "Spearman's rho +1.00 over 8 sources" in text                            # E
    assert row(text, "| 8 | 0 |")[-1] == "8"


def test_merge_compares_merge_with_keep_at_step_zero(compression, tmp_path, monkeypatch):
    # On three seeds the merge keeps 1.0 at step 0 where dropping coordinates falls to 0.1 + 0.1 k;
    # a fourth source is below 0.8 and is left out.
    merge = compression("merge")
    runs = []
    for seed in range(4):
        source = f"src{seed}"
        runs.append(run(seed, "none", 0.5 if seed == 3 else 1.0, rid=source, **{"init.source": "None"}))
        for k in (4, 2, 1, "entropy"):
            for method in ("keep", "merge"):
                size, rule = (3, "entropy") if k == "entropy" else (k, "None")
                before = 1.0 if method == "merge" else 0.1 + 0.1 * size
                runs.append(cut_run(seed, source, size, 1.0, rule=rule, before=before, rid_suffix=method,
                                    **{"init.method": method}))
    monkeypatch.setattr(merge, "load_runs", lambda uri, experiment: runs)
    merge.main(["--out", str(tmp_path)])
    text = (tmp_path / "merge_s4d.md").read_text()
    assert "seed 3 (accuracy 0.500" in text
    for k in (4, 2, 1):
        cells = row(text, f"| merge - keep at {k}, step 0 |")
        assert float(cells[2]) == pytest.approx(0.9 - 0.1 * k) and cells[4] == "3 / 0 / 0"
        assert cells[6] != "(secondary)"
    assert row(text, "| merge - keep at 4, after 100 steps |")[6] == "(secondary)"
    assert "within 0.05 of the source on 3 of 3 sources" in text


def test_compression_arms_pairs_cut_scratch_and_distilled_by_seed(compression, tmp_path, monkeypatch):
    # Sources and cuts in one experiment (knee_load, 16 pairs), scratch and distilled runs in the
    # study's: the cut is 0.1 above scratch on every seed, distillation 0.05; seed 4's source is weak.
    arms = compression("arms")
    pairs = {"task.num_kv_pairs": "16"}
    knee, study = [], []
    for seed in range(5):
        source = f"src{seed}"
        knee.append(run(seed, "none", 0.5 if seed == 4 else 0.95, rid=source, **{"init.source": "None"}, **pairs))
        knee.append(cut_run(seed, source, 8, 0.80 + 0.01 * seed, **pairs))
        knee.append(cut_run(seed, source, 5, 0.9, rule="entropy", **pairs))  # the entropy cut: not an arm
        study.append(run(seed, "none", 0.70 + 0.01 * seed, rid=f"scratch{seed}",
                         **{"model.state_size": "8", "distill.teacher": "None"}))
        study.append(run(seed, "none", 0.75 + 0.01 * seed, rid=f"distill{seed}",
                         **{"model.state_size": "8", "distill.teacher": f"runs/x/{source}/"}))
    monkeypatch.setattr(arms, "load_runs", lambda uri, experiment: knee if experiment == "knee_load" else study)
    arms.main(["--out", str(tmp_path)])
    text = (tmp_path / "arms.md").read_text()
    assert "Left out (source below 0.8): seeds [4]" in text
    cut = row(text, "| cut - scratch at 8 |")
    assert cut[1] == "4" and float(cut[2]) == pytest.approx(0.1) and cut[4] == "4 / 0 / 0"
    assert float(cut[6]) == pytest.approx(2 * 2 / 2 ** 4)  # Holm over cut and distill against scratch
    assert float(row(text, "| distill - scratch at 8 |")[2]) == pytest.approx(0.05)
    assert row(text, "| cut - distill at 8 |")[6] == "(not tested)"


def test_arms_pools_a_published_table_with_a_store(arms, tmp_path):
    # the store's runs log their weight, the table's do not: both must land in the same two arms
    first = study(arms, [0.05, 0.06], [0.50, 0.07], seeds=[1, 2])
    (tmp_path / "arms.md").write_text(arms.analyse(first, ["ess_constraint:none"], title="first"))
    second = study(arms, [0.05, 0.80], [0.60, 0.70], seeds=[3, 4])
    for r in second:
        r.params["penalty.schedule.weight"] = "0.01"
    text = arms.analyse(second + arms.runs_from_table(tmp_path / "arms.md", [0.25, 0.5]), ["ess_constraint:none"],
                        title="pooled", paired_only=True, rescue_at=0.25)
    assert row(text, "| seed |")[1:] == ["ess_constraint", "none"]
    assert row(text, "| ess_constraint vs none | 4 | +")[3] == "3 / 1 / 0"
    assert row(text, "| ess_constraint vs none | 4 | 3 |")[3].startswith("2 of 3")


def test_arms_says_when_its_p_is_sampled(arms, monkeypatch):
    from ess_reg.harness import stats

    monkeypatch.setattr(stats, "SPLIT_SIGN_FLIPS", 20)  # exact up to 20 pairs here (50 by default: 1 GiB)
    few = arms.analyse(study(arms, [0.1] * 20, [0.2] * 20), ["ess_constraint:none"], title="t")
    many = arms.analyse(study(arms, [0.1] * 21, [0.2] * 21), ["ess_constraint:none"], title="t")
    assert "random sign patterns" not in few
    assert "more than 20 pairs: from 20000 random sign patterns" in many


def test_compare_pairs_cuts_with_small_states_from_scratch(compression, tmp_path, monkeypatch):
    # Three sources cut to 8 and 4 (and to the tolerance-ESS size, 6), against 8 and 4 trained from
    # scratch: the cut is 0.1 above scratch at 8 on every seed and 0.1 below at 4.
    compare = compression("compare")
    runs = []
    for seed in range(3):
        source = f"src{seed}"
        runs.append(run(seed, "none", 0.95, rid=source, **{"init.source": "None", "task.num_kv_pairs": "8"}))
        runs[-1].metrics["ess/per_kv"] = 0.75  # entropy-ESS 6 per head
        for size, accuracy in ((8, 0.9), (4, 0.5 + 0.01 * seed)):
            runs.append(cut_run(seed, source, size, accuracy, before=accuracy - 0.3,
                                **{"init.compressed.energy_kept_min": str(0.9 + 0.01 * size + 0.001 * seed)}))
            runs.append(run(seed, "none", accuracy + (-0.1 if size == 8 else 0.1), rid=f"scratch{seed}-{size}",
                            **{"init.source": "None", "model.state_size": str(size)}))
        ess = cut_run(seed, source, 6, 0.93, before=0.7, **{"init.compressed.energy_kept_min": "0.99"})
        ess.tags["overrides"] = "init.size=ess"
        runs.append(ess)
    monkeypatch.setattr(compare, "load_runs", lambda uri, experiment: runs)
    compare.main(["--out", str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    assert "seed 0: 6 (0.700 / 0.930)" in text and "seed 0: 6.00" in text
    at8 = row(text, "| 8 | 3 |")
    assert at8[2:6] == ["0.980", "0.600", "0.900", "0.800"]  # energy kept (min), before, after, scratch
    assert float(at8[6]) == pytest.approx(0.1) and at8[8] == "3 / 0" and float(at8[9]) == pytest.approx(0.25)
    at4 = row(text, "| 4 | 3 |")
    assert float(at4[6]) == pytest.approx(-0.1) and at4[8] == "0 / 3"
    assert not any(line.startswith("| 6 |") for line in text.splitlines())  # the ESS cut is not a grid size
    assert (tmp_path / "compression.png").stat().st_size > 0


def test_arms_registered_family_corrects_accuracy_and_steps_together(arms):
    # 6 pairs, every arm higher at the end (sign-flip p = 2/64) and every arm first at 0.25
    # (sign test p = 2/64): Holm over the two doubles the smaller and keeps the larger.
    curve = lambda start, end: [(0, 0.0), (start, 0.3), (2400, end)]  # noqa: E731
    runs = ([run(s, "none", 0.5 + s / 100, history=curve(900, 0.5 + s / 100)) for s in range(6)]
            + [run(s, "ess_constraint", 0.6 + s / 100, history=curve(600, 0.6 + s / 100)) for s in range(6)])
    text = arms.analyse(runs, ["ess_constraint:none"], title="t", steps_test=0.25, family=True, at=600)
    p = 2 / 2 ** 6
    accuracy = row(text, "| ess_constraint vs none: accuracy at the end")
    steps = row(text, "| ess_constraint vs none: first step at 0.25")
    assert float(accuracy[1]) == pytest.approx(p, abs=1e-3) and float(steps[1]) == pytest.approx(p, abs=1e-3)
    assert float(accuracy[2]) == pytest.approx(2 * p, abs=1e-3) and float(steps[2]) == pytest.approx(2 * p, abs=1e-3)
    # the accuracy at step 600: the constraint arm is there already, the baseline has no evaluation at 600
    at_600 = text.split("Accuracy at step 600")[1]
    assert row(at_600, "| 0 |")[1:] == ["0.300", "-"]
    with pytest.raises(SystemExit, match="needs --steps-test"):
        arms.analyse(runs, ["ess_constraint:none"], title="t", family=True)


def test_knee_penalty_family_of_the_cut_and_the_knee(compression, tmp_path, monkeypatch):
    # Six seeds; the ess_min source's cuts hold down to 4 (knee 4), the plain source's only to 8
    # (knee 8): the cut to 4 is higher with ess_min on every seed (sign-flip p = 2/64) and the knee
    # smaller on every seed (sign test p = 2/64); Holm over the two doubles the smaller.
    knee_penalty = compression("knee_penalty")
    runs = []
    for seed in range(140, 146):
        for arm in ("none", "ess_min"):
            source = f"{arm}{seed}"
            runs.append(run(seed, arm, 0.95, rid=source, **{"init.source": "None"}))
            for size in (16, 8, 6, 4, "entropy"):
                k = 10 if size == "entropy" else size
                holds = k >= (4 if arm == "ess_min" else 8)
                accuracy = 0.95 if holds else 0.70 + seed / 1000
                runs.append(cut_run(seed, source, k, accuracy, rule="entropy" if size == "entropy" else "None"))
    monkeypatch.setattr(knee_penalty, "load_runs", lambda uri, experiment: runs)
    knee_penalty.main(["--experiment", "fake", "--out", str(tmp_path), "--primary", "4", "--family", "after+knee"])
    text = (tmp_path / "fake.md").read_text()
    p = 2 / 2 ** 6
    assert row(text, "| cut to 4, after the fine-tune |")[6] == "(the family below)"
    assert row(text, "| cut to 4, step 0 |")[6] == "(secondary)"
    assert "Registered: the knee smaller with ess_min on 6 of 6" in text
    cut = row(text, "| cut to 4, after the fine-tune (sign-flip) |")
    knee = row(text, "| the knee smaller (sign test) |")
    assert float(cut[1]) == pytest.approx(p, abs=1e-4) and float(knee[1]) == pytest.approx(p, abs=1e-4)
    assert float(cut[2]) == pytest.approx(2 * p, abs=1e-4) and float(knee[2]) == pytest.approx(2 * p, abs=1e-4)


def test_arms_analyses_a_study_split_between_a_store_and_a_records_file(arms, tmp_path, monkeypatch):
    # Seeds 0-1 ran on an earlier machine (kept only in the records file), seeds 2-3 are in the
    # store, and seed 1 of the store's arm is also in the file: it counts once.
    earlier = study(arms, [0.05, 0.06], [0.50, 0.07], seeds=[0, 1])
    now = study(arms, [0.05, 0.80], [0.60, 0.90], seeds=[2, 3]) + [earlier[1]]
    from ess_reg.harness.records import read_records, save_records
    records = tmp_path / "runs.jsonl"
    save_records(earlier, records)
    back = read_records(records)
    assert [(r.run_id, r.params, r.metrics, r.history) for r in back] == \
        [(r.run_id, r.params, r.metrics, r.history) for r in sorted(earlier, key=lambda r: r.run_id)]
    packed = tmp_path / "runs.jsonl.gz"  # gzipped, and the same records give the same bytes
    save_records(earlier, packed)
    first = packed.read_bytes()
    save_records(list(reversed(earlier)), packed)
    assert packed.read_bytes() == first and packed.read_bytes()[:2] == b"\x1f\x8b"
    assert [r.history for r in read_records(packed)] == [r.history for r in back]
    monkeypatch.setattr(arms, "load_runs", lambda uri, experiment: now)
    exported = tmp_path / "all.jsonl"
    arms.main(["--experiment", "study", "--records", str(records), "--export", str(exported),
               "--compare", "ess_constraint:none", "--out", str(tmp_path)])
    text = (tmp_path / "arms.md").read_text()
    assert text.startswith("# study:")  # the study's own runs, not a pooling of two studies
    assert row(text, "| ess_constraint vs none | 4 | +")[3] == "4 / 0 / 0"
    assert sorted(r.run_id for r in read_records(exported)) == sorted({r.run_id for r in earlier + now})
    (tmp_path / "bad.jsonl").write_text('{"run_id": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not a run record"):
        read_records(tmp_path / "bad.jsonl")


def test_power_reads_its_pilot_from_a_published_table(arms, tmp_path, monkeypatch):
    # 6 pairs, every one higher by 0.2: resampled, 6 pairs of one sign always reach p < 0.05
    (tmp_path / "arms.md").write_text(arms.analyse(study(arms, [0.1] * 6, [0.3] * 6), ["ess_constraint:none"],
                                                   title="pilot"))
    monkeypatch.syspath_prepend(str(RESULTS))
    monkeypatch.delitem(sys.modules, "arms", raising=False)
    power = load(RESULTS / "power.py", "results_power")
    text = power.main(["--table", str(tmp_path / "arms.md"), "--compare", "ess_constraint:none",
                       "--pairs", "5,6", "--simulations", "200"])
    assert "on 6 pairs, mean difference +0.200" in text
    assert row(text, "| 5 |")[1:] == ["0.00", "0.00"] and row(text, "| 6 |")[1:] == ["1.00", "1.00"]
    assert "sign-flip 6, sign test 6" in text
    with pytest.raises(SystemExit, match="the arms are"):
        power.main(["--table", str(tmp_path / "arms.md"), "--compare", "ess_max:none"])


def test_records_are_kept_once_across_machines(arms, tmp_path, monkeypatch):
    # two machines' finished runs added to one file, the second adding one run the first had too
    from ess_reg.harness import records
    first, second = study(arms, [0.05], [0.5], seeds=[0]), study(arms, [0.06], [0.6], seeds=[1])
    path = tmp_path / "runs.jsonl"
    assert records.keep_records(path, first) == (2, 2)
    assert records.keep_records(path, second + first[:1]) == (2, 4)
    assert sorted(r.run_id for r in records.read_records(path)) == sorted(r.run_id for r in first + second)
    monkeypatch.setattr(records, "load_runs", lambda uri, experiment: second)
    assert records.main(["--experiment", "s", "--into", str(path)]) == 0  # nothing new: nothing added
    assert len(records.read_records(path)) == 4


def test_records_list_names_the_runs_without_their_results(arms, tmp_path, capsys):
    # a study analysed only when complete: the next machine learns which runs are in, not how they did
    from ess_reg.harness import records
    path = tmp_path / "runs.jsonl.gz"
    records.keep_records(path, study(arms, [0.0625, 0.0731], [0.5123, 0.6789], seeds=[3, 4]))
    assert records.main(["--list", str(path)]) == 0
    out = capsys.readouterr().out
    assert "none seed=3  (step 1200" in out and "ess_constraint seed=4  (step 1200" in out and "4 run(s)" in out
    assert not any(value in out for value in ("0.0625", "0.0731", "0.5123", "0.6789", "0.51", "0.68"))
    with pytest.raises(SystemExit):
        records.main(["--list", str(path), "--experiment", "s"])
    with pytest.raises(SystemExit):
        records.main(["--experiment", "s"])  # no file to add to


def test_knee_penalty_dose_arm_from_a_records_file_beside_the_store(compression, tmp_path, monkeypatch):
    # The confirmation's none and ess_min w=0.03 sources are in a records file; the dose study's
    # ess_min w=0.01 sources in the store. Comparing w=0.01 with none names w=0.03 as not compared;
    # w=0.01's knee is 6 against 8 on every seed (sign p 2/64) and its sources lower on every seed
    # (sign p 2/64): Holm over the two doubles both.
    knee_penalty = compression("knee_penalty")
    from ess_reg.harness.records import save_records
    earlier, dose = [], []
    for seed in range(140, 146):
        for arm, weight, knee, accuracy in (("none", None, 8, 0.95), ("ess_min", "0.03", 6, 0.94),
                                            ("ess_min", "0.01", 6, 0.94 + seed / 1e5)):
            source = f"{arm}{weight}-{seed}"
            runs = dose if weight == "0.01" else earlier
            params = {"penalty.schedule.weight": weight} if weight else {}
            runs.append(run(seed, arm, accuracy if arm != "none" else 0.95 + seed / 1e4, rid=source,
                            **{"init.source": "None"}, **params))
            for size in (16, 8, 6, 4, "entropy"):
                k = 10 if size == "entropy" else size
                runs.append(cut_run(seed, source, k, 0.95 if k >= knee else 0.7,
                                    rule="entropy" if size == "entropy" else "None"))
    records = tmp_path / "confirm.jsonl.gz"
    save_records(earlier, records)
    monkeypatch.setattr(knee_penalty, "load_runs", lambda uri, experiment: dose)
    knee_penalty.main(["--experiment", "dose", "--records", str(records), "--arm", "ess_min w=0.01",
                       "--family", "knee+source", "--out", str(tmp_path)])
    text = (tmp_path / "dose.md").read_text()
    assert "not compared here: ess_min w=0.03" in text
    assert "Registered: the knee smaller with ess_min w=0.01 on 6 of 6" in text
    p = 2 / 2 ** 6
    knee, cost = row(text, "| the knee smaller (sign test) |"), row(text, "| the sources' accuracy (sign test) |")
    assert float(knee[2]) == pytest.approx(2 * p, abs=1e-4) and float(cost[2]) == pytest.approx(2 * p, abs=1e-4)
    assert row(text, "| the sources (uncut, every pair) |")[6] == "(the family below)"
    assert row(text, "| cut to 6, after the fine-tune |")[6] == "(secondary)"
    # The same runs, two weights against each other with nothing registered: no line is called
    # registered and no Holm family is printed.
    knee_penalty.main(["--experiment", "dose", "--records", str(records), "--arm", "ess_min w=0.01",
                       "--baseline", "ess_min w=0.03", "--family", "none", "--out", str(tmp_path)])
    text = (tmp_path / "dose.md").read_text()
    assert "Registered" not in text and "Holm over" not in text and "nothing registered" in text
    assert "Secondary: the knee smaller with ess_min w=0.01 on 0 of 6" in text
    assert row(text, "| the sources (uncut, every pair) |")[6] == "(secondary)"


def warning_run(mixer: str, seed: int, final: float, util: float, loss: float) -> RunRecord:
    steps = (0, 100, 200, 300, 400)
    return RunRecord(f"{mixer}-{seed}", f"{mixer} seed={seed}",
                     {"seed": str(seed), "penalty": "none", "model.mixer": mixer, "trainer.max_steps": "1200"},
                     {"valid/accuracy": final}, {},
                     history={"ess/util": [(s, util) for s in steps], "valid/loss": [(s, loss) for s in steps],
                              "L0/util": [(s, util) for s in steps], "L1/util": [(s, util + 0.01) for s in steps]})


def test_early_warning_auc_per_mixer_with_holm_and_the_collapse_rule():
    early = load(RESULTS / "early_warning.py", "results_early_warning")
    # la: the three learners have the three highest utilizations at step 200 (AUC 1, 2 of the
    # C(6, 3) = 20 splits as extreme: p 0.1) and the loss says nothing (all equal: AUC 0.5).
    # wla: utilization points the wrong way on one pair of nine (AUC 8/9, p 0.2); the loss
    # separates them fully. Holm over the two mixers: 0.2 and 0.2.
    runs = ([warning_run("la", s, f, u, 2.0) for s, (f, u) in enumerate(
                [(0.9, 0.5), (0.8, 0.6), (0.95, 0.7), (0.07, 0.1), (0.06, 0.2), (0.08, 0.3)])]
            + [warning_run("wla", s, f, u, ls) for s, (f, u, ls) in enumerate(
                [(0.9, 0.5, 1.0), (0.8, 0.25, 1.1), (0.95, 0.7, 1.2), (0.07, 0.3, 3.0), (0.06, 0.1, 3.1),
                 (0.08, 0.15, 3.2)])])
    runs.append(RunRecord("x", "x", {"seed": "9", "penalty": "ess_max", "model.mixer": "la"},  # not a baseline run
                          {"valid/accuracy": 0.9}, {}))
    text = early.analyse(runs, step=200)
    la, wla = row(text, "| la | 6 | 3 |"), row(text, "| wla | 6 | 3 |")
    assert la[3].startswith("1.000") and float(la[4]) == pytest.approx(0.1) and float(la[5]) == pytest.approx(0.2)
    assert la[6].startswith("0.500") and la[8].startswith("+0.500")
    assert wla[3].startswith(f"{8 / 9:.3f}") and float(wla[4]) == pytest.approx(0.2)
    assert float(wla[5]) == pytest.approx(0.2) and wla[6].startswith("1.000")
    # The collapse rule at 200 (both layers <= 0.25): la flags failures at 0.1 and 0.2, no learner;
    # wla flags failures at 0.1 and 0.15 and the learner at 0.25 (its second layer 0.26: not).
    flags = row(text, "| la | 2 of 3")
    assert flags[2].startswith("0 of 3") and flags[3] == f"{2 * 1000 / (6 * 1200):.0%}"
    assert row(text, "| wla | 2 of 3")[2].startswith("0 of 3")
    with pytest.raises(SystemExit, match="has no ess/util at step 500"):
        early.analyse(runs, step=500)
    # The restart rule. la: the learners have the highest utilization, so the lowest of k is a
    # learner only when all k are: C(3, k) / C(6, k), 3/15 for two and 1/20 for three.
    keep = row(text, "| la | 0.50 |")
    assert keep[2].startswith("0.20 [") and keep[3].startswith("0.05 [") and keep[2].endswith("+17% steps")
    assert "; gain -0.30 [" in keep[2] and "; gain -0.45 [" in keep[3]
