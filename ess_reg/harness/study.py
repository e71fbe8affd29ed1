"""``ess-report``: what a set of runs says, as one self-contained report.

    ess-report --experiment ess-vs-tss              # every finished run of an experiment
    ess-report --parent <sweep parent run id>       # a sweep's children; the report is logged to the parent

Runs are grouped by their configuration without the seed; each group gets the mean and spread
of accuracy and of the ESS measures over its seeds. Across runs, the rank (Spearman) and linear
(Pearson) correlations of accuracy with each measure — ESS/kv, TSS/kv, ESS/TSS, utilization,
ESS/kv at initialization — pooled and per mixer, with bootstrap intervals, answer the study's
question: does ESS track accuracy where TSS does not? The report is Markdown with PNG plots.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import tracking
from .comparison import collapse_summary, compare_to_baseline
from .stats import bootstrap_interval, mean_spread, pearson, spearman

__all__ = ["RunRecord", "load_runs", "group_runs", "MEASURES", "correlations", "write_report", "main"]

log = logging.getLogger("ess_reg")
DEFAULT_URI = "sqlite:///runs/mlflow.db"
# Params that differ between runs without making them a different configuration.
NOT_CONFIG = ("seed", "tracking.", "trainer.checkpoint_dir", "trainer.resume", "trainer.threads", "trainer.progress",
              "init.chosen", "num_parameters")


@dataclass
class RunRecord:
    """One finished run: its params, final metrics, tags and (when asked) metrics at step 0."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    at_init: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # (step, value) per metric

    @property
    def mixer(self) -> str:
        return self.params.get("model.mixer", "?")

    @property
    def config_key(self) -> tuple:
        return tuple(sorted((k, v) for k, v in self.params.items() if not k.startswith(NOT_CONFIG)))

    def layer_mean(self, suffix: str) -> float | None:
        values = [v for k, v in self.metrics.items() if k.startswith("L") and k.endswith("/" + suffix)]
        return sum(values) / len(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# Measure name -> value of a run (None when the run lacks it). ESS figures are per operator (a
# head, an SSM channel) and at the end of the context for the per-item ones, as the runs log them.
MEASURES: dict[str, Callable[[RunRecord], float | None]] = {
    "ESS/kv": lambda r: r.metrics.get("ess/per_kv"),
    "TSS/kv": lambda r: r.layer_mean("tss_kv"),
    "ESS/TSS": lambda r: _ratio(r.layer_mean("ess"), r.layer_mean("tss")),
    "utilization": lambda r: r.metrics.get("ess/util"),
    "ESS/kv at init": lambda r: r.at_init.get("ess/per_kv"),
    # a distillation run's teacher, measured on the student's probe batch
    "teacher ESS/kv": lambda r: r.metrics.get("teacher/ess/per_kv"),
    "teacher utilization": lambda r: r.metrics.get("teacher/ess/util"),
}
ACCURACY = "valid/accuracy"
HISTORIES = ("ess/util", "ess/per_kv")  # read in full: collapse during training, ESS at initialization


def load_runs(uri: str, *, experiment: str | None = None, parent: str | None = None,
              with_history: bool = True) -> list[RunRecord]:
    """The FINISHED runs of an experiment or of a sweep parent, as records; ``with_history``:
    with the evaluations' :data:`HISTORIES` (one query per run and metric)."""
    if (experiment is None) == (parent is None):
        raise ValueError("give exactly one of experiment or parent")
    runs = tracking.experiment_runs(uri, experiment) if experiment else tracking.child_runs(uri, parent)
    records = []
    for run in runs:
        if run.info.status != "FINISHED" or "model.mixer" not in run.data.params:
            continue  # unfinished runs and sweep parents (no model of their own) are not data points
        record = RunRecord(run.info.run_id, run.info.run_name or run.info.run_id, dict(run.data.params),
                           dict(run.data.metrics), dict(run.data.tags))
        if with_history:
            for key in HISTORIES:
                record.history[key] = tracking.metric_history(uri, run.info.run_id, key)
            if record.history["ess/per_kv"]:
                record.at_init["ess/per_kv"] = record.history["ess/per_kv"][0][1]
        records.append(record)
    return records


@dataclass
class Group:
    label: str
    runs: list[RunRecord]

    def values(self, measure: Callable[[RunRecord], float | None]) -> list[float]:
        return [v for v in (measure(r) for r in self.runs) if v is not None]


def _overrides(record: RunRecord) -> set[str]:
    tag = record.tags.get("overrides", "(none)")
    return {o for o in tag.split() if o != "(none)" and not o.startswith("seed=")}


def _natural(label: str) -> list:
    """Sort key that orders ``state_size=2`` before ``state_size=16``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", label)]


def group_runs(records: Sequence[RunRecord]) -> list[Group]:
    """Runs with the same configuration but the seed, grouped by their params and labelled by
    the command-line overrides that tell the groups apart (``model=gla task.num_kv_pairs=8``);
    by the differing params where the overrides do not tell them apart."""
    by_key: dict[tuple, list[RunRecord]] = {}
    for r in records:
        by_key.setdefault(r.config_key, []).append(r)
    keys = list(by_key)
    overrides = [_overrides(by_key[k][0]) for k in keys]
    common = set.intersection(*overrides) if overrides else set()
    labels = [" ".join(sorted(o - common)) for o in overrides]
    if len(set(labels)) < len(labels) or not all(labels):
        varying = sorted({k for key in keys for k, _ in key if len({dict(other).get(k) for other in keys}) > 1})
        labels = [" ".join(f"{k}={dict(key).get(k, '-')}" for k in varying) or "all runs" for key in keys]
    return sorted((Group(label, by_key[key]) for label, key in zip(labels, keys)), key=lambda g: _natural(g.label))


@dataclass
class Correlation:
    scope: str
    measure: str
    n: int
    spearman: float
    interval: tuple[float, float]
    pearson: float


def _rows(records: Sequence[RunRecord], target: str, *measures: str) -> list[tuple[float, ...]]:
    """``(target, measure...)`` of every run that has them all."""
    rows = []
    for r in records:
        values = [MEASURES[m](r) for m in measures]
        if target in r.metrics and all(v is not None for v in values):
            rows.append((r.metrics[target], *values))
    return rows


def correlations(records: Sequence[RunRecord], measures: Sequence[str], *, target: str = ACCURACY,
                 resamples: int = 2000, seed: int = 0) -> list[Correlation]:
    """Correlation of the target (accuracy) with each measure, pooled over all runs and per mixer."""
    scopes = {"all runs": list(records)}
    for mixer in sorted({r.mixer for r in records}):
        scopes[mixer] = [r for r in records if r.mixer == mixer]
    out = []
    for scope, runs in scopes.items():
        for name in measures:
            rows = _rows(runs, target, name)
            if len(rows) < 3:
                continue
            y, value = [p[0] for p in rows], [p[1] for p in rows]
            rho = spearman(y, value)
            interval = bootstrap_interval(
                lambda idx: spearman([y[i] for i in idx], [value[i] for i in idx]), len(rows),
                resamples=resamples, seed=seed)
            out.append(Correlation(scope, name, len(rows), rho, interval, pearson(y, value)))
    return out


def difference(records: Sequence[RunRecord], a: str, b: str, *, target: str = ACCURACY, resamples: int = 2000,
               seed: int = 0) -> tuple[float, tuple[float, float], int]:
    """Spearman(target, a) - Spearman(target, b) over the runs that have both, with a bootstrap
    interval (the same resampled runs for both sides)."""
    rows = _rows(records, target, a, b)
    if len(rows) < 3:
        return math.nan, (math.nan, math.nan), len(rows)

    def stat(idx):
        picked = [rows[i] for i in idx]
        y = [p[0] for p in picked]
        return spearman(y, [p[1] for p in picked]) - spearman(y, [p[2] for p in picked])

    return stat(list(range(len(rows)))), bootstrap_interval(stat, len(rows), resamples=resamples, seed=seed), len(rows)


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean, spread = mean_spread(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {spread:.3f}"


def _num(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.2f}"


def _scatter(records: Sequence[RunRecord], measure: str, target: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(MEASURES[measure](r), r.metrics.get(target), r.mixer) for r in records]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for mixer in sorted({p[2] for p in points}):
        xs = [p[0] for p in points if p[2] == mixer]
        ys = [p[1] for p in points if p[2] == mixer]
        ax.scatter(xs, ys, label=mixer, s=18)
    ax.set_xlabel(measure)
    ax.set_ylabel(target)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _baseline_rule(spec: str):
    """``KEY=VALUE`` -> (is_baseline(group), stratum(group)): a group is the baseline when its runs
    chose VALUE for the config group KEY (their tag) or have param KEY = VALUE; its stratum is
    its overrides without the ones that set KEY or its keys."""
    key, sep, value = spec.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"--baseline must be KEY=VALUE (e.g. penalty=none), got {spec!r}")

    def chosen(run: RunRecord) -> str | None:
        return run.tags.get(key, run.params.get(key))

    def is_baseline(group: Group) -> bool:
        return all(chosen(r) == value for r in group.runs)

    def stratum(group: Group) -> tuple:
        return tuple(sorted(o for o in _overrides(group.runs[0]) if not o.startswith((f"{key}=", f"{key}."))))

    return is_baseline, stratum


def _comparison_lines(groups: list[Group], baseline: str, target: str, resamples: int) -> list[str]:
    is_baseline, stratum = _baseline_rule(baseline)
    found = compare_to_baseline(groups, is_baseline, stratum, lambda r: r.metrics.get(target),
                                pair=lambda r: r.params.get("seed"), resamples=resamples)
    lines = [f"## Against the baseline ({baseline})", "",
             f"Each configuration against the {baseline} runs under the same other settings: the difference of "
             f"mean {target} with a 95% bootstrap interval. Where both sides ran the same seeds (same "
             "initialization and batches), the interval is of the mean per-seed difference (paired); otherwise each "
             "side's seeds are resampled on their own.", "",
             "| configuration | seeds | mean | baseline | seeds | difference | 95% interval | paired | reading |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in found:
        lines.append(f"| {c.label} | {c.n} | {c.mean:.3f} | {c.baseline_mean:.3f} | {c.n_baseline} | "
                     f"{_num(c.difference)} | [{_num(c.interval[0])}, {_num(c.interval[1])}] | "
                     f"{f'yes, {c.higher_pairs}/{c.n} seeds higher' if c.paired else 'no'} | {c.verdict} |")
    if not found:
        lines.append(f"| (no configuration has a {baseline} group under the same other settings) ||||||||| ")
    return lines + [""]


def _collapse_lines(groups: list[Group]) -> list[str]:
    lines = ["## Collapse during training", "",
             "Runs whose ESS/reach fell to the collapse threshold (`probe.collapse`) at some evaluation after "
             "initialization; the steps are medians over those runs.", "",
             "| configuration | runs | collapsed | first collapsed at | still at the end | recovered by |",
             "|---|---|---|---|---|---|"]
    for g in groups:
        histories = [r.history.get("ess/util") or [] for r in g.runs]
        thresholds = {r.params.get("probe.collapse") for r in g.runs}
        if not any(histories) or len(thresholds) != 1 or None in thresholds:
            continue
        c = collapse_summary(histories, float(thresholds.pop()))
        median = lambda xs: "-" if not xs else str(sorted(xs)[len(xs) // 2])  # noqa: E731
        lines.append(f"| {g.label} | {c.runs} | {c.collapsed} | {median(c.first_steps)} | {c.at_end} | "
                     f"{median(c.recovered_steps)} |")
    return lines + [""]


def write_report(records: Sequence[RunRecord], out_dir: str | os.PathLike, title: str, *,
                 target: str = ACCURACY, baseline: str | None = None, resamples: int = 2000) -> tuple[Path, str]:
    """Write ``report.md`` (and its plots) into ``out_dir``; returns its path and the key table.

    ``target`` is the metric the measures are set against (``valid/accuracy``; a distillation
    study: ``valid/distill_kl``); ``baseline`` (``KEY=VALUE``, e.g. ``penalty=none``) adds each
    configuration's difference from its baseline."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(records)
    present = [m for m in MEASURES if any(MEASURES[m](r) is not None for r in records)]
    lines = [f"# {title}", "",
             f"{len(records)} finished runs in {len(groups)} configurations "
             f"(seeds per configuration: {sorted(Counter(len(g.runs) for g in groups).items())}).", ""]

    header = ["configuration", "runs", target, *present, "verdicts"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        verdicts = Counter(r.tags.get("verdict", "?") for r in g.runs)
        table.append("| " + " | ".join([g.label, str(len(g.runs)), _cell(g.values(lambda r: r.metrics.get(target))),
                                        *(_cell(g.values(MEASURES[m])) for m in present),
                                        ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))]) + " |")
    lines += ["## Configurations (mean ± sample standard deviation over seeds)", "", *table, ""]
    if baseline:
        lines += _comparison_lines(groups, baseline, target, resamples)

    corr = correlations(records, present, target=target, resamples=resamples)
    lines += [f"## {target} against each measure", "",
              "Spearman rank correlation with a 95% bootstrap interval (runs resampled), and Pearson.", "",
              "| runs | measure | n | Spearman | 95% interval | Pearson |", "|---|---|---|---|---|---|"]
    for c in corr:
        lines.append(f"| {c.scope} | {c.measure} | {c.n} | {_num(c.spearman)} | "
                     f"[{_num(c.interval[0])}, {_num(c.interval[1])}] | {_num(c.pearson)} |")
    if "ESS/kv" in present and "TSS/kv" in present:
        d, (lo, hi), n = difference(records, "ESS/kv", "TSS/kv", target=target, resamples=resamples)
        if not math.isnan(d):  # TSS/kv the same in every run: no rank to compare
            lines += ["", f"Spearman({target}, ESS/kv) − Spearman({target}, TSS/kv) over {n} runs: **{_num(d)}** "
                          f"(95% interval [{_num(lo)}, {_num(hi)}])."]
    lines.append("")
    lines += _collapse_lines(groups)
    stem = "accuracy" if target == ACCURACY else target.replace("/", "_")
    for measure in ("ESS/kv", "TSS/kv", "utilization", "teacher ESS/kv"):
        name = f"{stem}_vs_" + measure.replace("/", "_per_").replace(" ", "_").lower() + ".png"
        if measure in present and _scatter(records, measure, target, out / name):
            lines += [f"![{target} against {measure}]({name})", ""]
    lines += ["ESS figures are per operator (a head, an SSM channel); ESS/kv and TSS/kv are read at the "
              "end of the context and divided by the number of key-value pairs; utilization is ESS over "
              "the reachable state min(i, L - i, TSS), summed over the probed indices.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    key_table = "\n".join(table)
    return path, key_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ess-report",
        description="Group runs by configuration (without the seed), aggregate over seeds, correlate accuracy "
                    "with ESS/kv, TSS/kv and the other measures, and write a Markdown report with plots.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="every finished run of this MLflow experiment")
    source.add_argument("--parent", help="the children of this sweep parent run; the report is logged to it")
    parser.add_argument("--tracking-uri", default=None,
                        help=f"the store (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})")
    parser.add_argument("--out", default=None, help="folder for report.md and its plots (default runs/reports/<name>)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--target", default=ACCURACY,
                        help=f"the metric the measures are set against (default {ACCURACY}; a distillation "
                             "study: valid/distill_kl)")
    parser.add_argument("--baseline", default=None, metavar="KEY=VALUE",
                        help="compare each configuration with the baseline runs under the same other settings, "
                             "e.g. penalty=none")
    args = parser.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if args.resamples < 100:
        print("ess-report: error: --resamples must be at least 100", file=sys.stderr)
        return 2
    try:
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            raise ValueError(f"no store at {uri}")
        if args.baseline:
            _baseline_rule(args.baseline)  # a malformed spec fails before the store is read
        records = load_runs(uri, experiment=args.experiment, parent=args.parent)
        if not records:
            raise ValueError("no finished runs to report on")
        if not any(args.target in r.metrics for r in records):
            logged = sorted({k for r in records for k in r.metrics if not k.startswith(("L", "teacher/"))})
            raise ValueError(f"--target {args.target}: no run logged it; they logged {logged}")
    except ValueError as err:
        print(f"ess-report: error: {err}", file=sys.stderr)
        return 2
    name = args.experiment or f"sweep-{args.parent[:8]}"
    out = Path(args.out or Path("runs") / "reports" / name)
    path, table = write_report(records, out, f"ess-report: {name}", target=args.target, baseline=args.baseline,
                               resamples=args.resamples)
    if args.parent:
        tracker = tracking.Tracker.attach(uri, args.parent)
        for file in sorted(out.iterdir()):
            tracker.log_artifact(file, "report")
    print(table)
    print(f"\nreport: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
