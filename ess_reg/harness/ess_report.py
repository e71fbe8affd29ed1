"""``ess-report``: what a set of runs says, as one self-contained report.

    ess-report --experiment ess-vs-tss              # every finished run of an experiment
    ess-report --parent <sweep parent run id>       # a sweep's children; the report is logged to the parent

Runs are grouped into configurations (:mod:`ess_reg.harness.runsets`: the full config with
the reached step, never pooled across budgets); each gets the mean and spread of accuracy and of
the ESS measures over its seeds. Against a baseline, each configuration is compared pair by
pair where the seeds allow (:mod:`ess_reg.harness.comparison`); against each measure, rank
correlations over runs and over configurations, with permutation p-values, BCa intervals and
Holm's correction, or a refusal with its reason (:mod:`ess_reg.harness.stats`). The tool says
no more than the runs show. The report is Markdown with PNG plots.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import tracking
from .runsets import (ACCURACY, RUN_MEASURES, STEPS, Group, RunRecord, describe_differences, budgets, differing,
                      group_runs, identity, labels, load_runs)
from .records import read_records, save_records
from .comparison import collapse_summary, compare_reaching, compare_to_baseline, steps_to
from .stats import (MIN_PAIRS, MIN_POINTS, CorrelationTest, accuracy_noise, bootstrap_interval, correlation_test, holm,
                    mean_spread, spearman)

__all__ = ["RunRecord", "load_runs", "identity", "group_runs", "labels", "differing", "RUN_MEASURES", "correlations",
           "write_report", "main"]

log = logging.getLogger("ess_reg")
DEFAULT_URI = tracking.DEFAULT_URI
@dataclass
class Correlation:
    scope: str
    unit: str            # "runs" or "configurations" (seed means)
    measure: str
    test: CorrelationTest
    holm_p: float = math.nan

    @property
    def n(self) -> int:
        return self.test.n

    @property
    def spearman(self) -> float:
        return self.test.spearman


def _rows(units: Sequence, target: Callable, *measures: str) -> list[tuple[float, ...]]:
    """``(target, measure...)`` of every unit (a run, or a group's seed means) that has them all."""
    rows = []
    for u in units:
        values = [_value(u, RUN_MEASURES[m]) for m in measures]
        y = _value(u, target)
        if y is not None and all(v is not None for v in values):
            rows.append((y, *values))
    return rows


def _value(unit, measure: Callable[[RunRecord], float | None]) -> float | None:
    return unit.mean(measure) if isinstance(unit, Group) else measure(unit)


def _noise(records: Sequence[RunRecord], target: str) -> float | None:
    """The sampling noise of an accuracy across these runs (None for another target, or unknown)."""
    if target != ACCURACY:
        return None
    answers = [r.answers for r in records]
    accuracies = [r.metrics[target] for r in records if target in r.metrics]
    if not accuracies or None in answers:
        return None
    return accuracy_noise(sum(accuracies) / len(accuracies), min(answers))


def correlations(records: Sequence[RunRecord], measures: Sequence[str], *, target: str = ACCURACY,
                 resamples: int = 2000, seed: int = 0) -> list[Correlation]:
    """Spearman correlation of the target (accuracy) with each measure, within each training
    budget: over runs and over configurations (seed means, so that the seeds of one
    configuration do not count as independent points), pooled and per mixer; each with its
    permutation p-value and BCa interval, or refused with the reason. The p-values are
    Holm-corrected over every correlation made: one family."""
    groups = group_runs(records)
    by_budget = budgets(groups)
    out = []
    y = lambda r: r.metrics.get(target)  # noqa: E731
    for steps, scoped in by_budget.items():
        prefix = f"{steps} steps: " if len(by_budget) > 1 else ""
        scopes = {"all runs": scoped}
        mixers = sorted({g.runs[0].mixer for g in scoped})
        if len(mixers) > 1:
            for mixer in mixers:
                scopes[mixer] = [g for g in scoped if g.runs[0].mixer == mixer]
        for scope, scope_groups in scopes.items():
            runs = [r for g in scope_groups for r in g.runs]
            noise = _noise(runs, target)
            units = [("runs", runs)]
            if len(scope_groups) < len(runs):  # several seeds per configuration: also over configurations
                units.append(("configurations", scope_groups))
            for name in measures:
                for unit, items in units:
                    rows = _rows(items, y, name)
                    if not rows:
                        continue
                    test = correlation_test([p[1] for p in rows], [p[0] for p in rows], noise=noise,
                                            resamples=resamples, seed=seed)
                    out.append(Correlation(prefix + scope, unit, name, test))
    made = [c for c in out if c.test.refused is None]
    for c, adjusted in zip(made, holm([c.test.p for c in made])):
        c.holm_p = adjusted
    return out


def difference(groups: Sequence[Group], a: str, b: str, *, target: str = ACCURACY, resamples: int = 2000,
               seed: int = 0) -> tuple[float, tuple[float, float], int]:
    """Spearman(target, a) - Spearman(target, b) over configurations (seed means) that have both,
    with a percentile bootstrap interval (the same resampled configurations for both sides);
    NaN below :data:`MIN_POINTS` configurations."""
    rows = _rows(groups, lambda r: r.metrics.get(target), a, b)
    if len(rows) < MIN_POINTS:
        return math.nan, (math.nan, math.nan), len(rows)

    def stat(idx):
        picked = [rows[i] for i in idx]
        ys = [p[0] for p in picked]
        return spearman(ys, [p[1] for p in picked]) - spearman(ys, [p[2] for p in picked])

    value = stat(list(range(len(rows))))
    if math.isnan(value):
        return math.nan, (math.nan, math.nan), len(rows)
    return value, bootstrap_interval(stat, len(rows), resamples=resamples, seed=seed), len(rows)


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean, spread = mean_spread(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {spread:.3f}"


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}f}"


def _p(x: float) -> str:
    if x is None or math.isnan(x):
        return "-"
    return "< 0.001" if x < 0.001 else f"{x:.3f}"


def _scatter(groups: Sequence[Group], measure: str, target: str, path: Path, title: str) -> bool:
    """Target against a measure, a point per run: one colour per configuration (per mixer past
    10 configurations), translucent so that overlapping runs stay visible; an accuracy axis spans
    [0, 1] with the chance level drawn, so that noise is not stretched into a trend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_config = len(groups) <= 10
    series: dict[str, list[tuple[float, float]]] = {}
    for g in groups:
        for r in g.runs:
            x, y = RUN_MEASURES[measure](r), r.metrics.get(target)
            if x is not None and y is not None:
                series.setdefault(g.label if by_config else r.mixer, []).append((x, y))
    n = sum(len(points) for points in series.values())
    if not n:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, points in series.items():
        ax.scatter([p[0] for p in points], [p[1] for p in points], label=label, s=26, alpha=0.6,
                   edgecolors="black", linewidths=0.4)
    if target == ACCURACY:
        ax.set_ylim(-0.02, 1.02)
        chance = [r.metrics["valid/chance"] for g in groups for r in g.runs if "valid/chance" in r.metrics]
        if chance:
            ax.axhline(max(chance), color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax.set_xlabel(measure)
    ax.set_ylabel(target)
    ax.set_title(f"{title}\n{n} runs in {len(groups)} configurations"
                 + ("" if by_config else ", coloured by mixer"), fontsize=9)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _baseline_rule(spec: str):
    """``KEY=VALUE`` -> (is_baseline(group), stratum(group)): a group is the baseline when its
    configuration has KEY = VALUE (a config group's chosen option, ``penalty=none``, or any key,
    ``model.state_size=16``); its stratum is its configuration without KEY and the keys under it,
    so that whatever the runs were named, each treatment meets the baseline run under the same
    other settings and the same steps reached."""
    key, sep, value = spec.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"--baseline must be KEY=VALUE (e.g. penalty=none), got {spec!r}")

    def is_baseline(group: Group) -> bool:
        return group.identity.get(key) == value

    def stratum(group: Group) -> tuple:
        return tuple(sorted((k, v) for k, v in group.identity.items() if k != key and not k.startswith(key + ".")))

    return is_baseline, stratum


def _comparison_lines(groups: list[Group], baseline: str, target: str, resamples: int) -> list[str]:
    is_baseline, stratum = _baseline_rule(baseline)
    found = compare_to_baseline(groups, is_baseline, stratum, lambda r: r.metrics.get(target),
                                pair=lambda r: r.params.get("seed"), resamples=max(resamples, 20000))
    lines = [f"## Against the baseline ({baseline})", "",
             f"Each configuration against the {baseline} runs under the same other settings and steps. Where both "
             "sides ran the same seeds (same initialization and batches) the comparison is paired by seed: the mean "
             "per-seed difference with its t-interval, how many seeds came out higher and lower, the exact sign "
             "test and the sign-flip permutation test (exact up to 16 pairs); otherwise the two sides are "
             f"independent samples (Welch's t-interval, two-sample permutation test). Holm's correction runs over "
             f"the {len(found)} comparisons of this table. Intervals from fewer than {MIN_PAIRS} pairs are in "
             "italics: too few pairs for them to mean much.", "",
             "| configuration | n | mean | baseline | difference | 95% t-interval | higher / lower | sign p "
             "| permutation p | Holm p | reading |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in found:
        interval = f"[{_num(c.interval[0], 3)}, {_num(c.interval[1], 3)}]"
        if not c.test.reliable:
            interval = f"*{interval}*"
        n = f"{c.n} pairs" if c.paired else f"{c.n} vs {c.n_baseline} runs"
        split = f"{c.test.higher} / {c.test.lower}" if c.paired else "-"
        sign_p = _p(c.test.sign_p) if c.paired else "-"
        lines.append(f"| {c.label} | {n} | {c.mean:.3f} | {c.baseline_mean:.3f} | {_num(c.difference, 3)} | "
                     f"{interval} | {split} | {sign_p} | {_p(c.p)} | {_p(c.holm_p)} | {c.reading()} |")
    if not found:
        lines.append(f"| (no configuration has a {baseline} group under the same other settings and steps) "
                     "|||||||||| ")
    return lines + [""]


def _reaching_lines(groups: list[Group], baseline: str, target: str, thresholds: Sequence[float]) -> list[str]:
    is_baseline, stratum = _baseline_rule(baseline)
    found = [c for t in thresholds for c in compare_reaching(groups, is_baseline, stratum,
                                                             lambda r: r.history.get(target), t,
                                                             pair=lambda r: r.params.get("seed"))]
    if not found:
        return []
    lines = [f"## Reaching an accuracy, seed by seed (against {baseline})", "",
             f"At each threshold, paired by seed: how many seeds got there at some evaluation within the run; "
             f"rescued: of the seeds the {baseline} run never brought there, how many this configuration did (with "
             "the exact 95% Clopper-Pearson interval of that rate); lost: the reverse. The p-value is the exact "
             "McNemar test (rescued against lost), Holm-corrected over each threshold's rows. Steps saved: the "
             f"median of ({baseline} step - this step) over the seeds where both got there, with the exact sign "
             "test of faster against slower (not corrected over the rows). A run that never got there is counted, "
             "never given a step.", ""]
    for t in thresholds:
        rows = [c for c in found if c.threshold == t]
        if not rows:
            continue
        lines += [f"### Accuracy {t:g}", "",
                  "| configuration | pairs | reached | baseline reached | rescued | rescue rate (95%) | lost | "
                  "McNemar p | Holm p | faster / slower | median steps saved | sign p |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in rows:
            ci = c.rescue_interval
            rate = "-" if ci is None else f"{c.rescued / c.failing:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
            saved = "-" if c.median_saved is None else f"{c.median_saved:+g}"
            lines.append(f"| {c.label} | {c.pairs} | {c.reached} | {c.baseline_reached} | {c.rescued} of "
                         f"{c.failing} | {rate} | {c.lost} of {c.baseline_reached} | {_p(c.p)} | {_p(c.holm_p)} | "
                         f"{c.faster} / {c.slower} | {saved} | {_p(c.speed_p)} |")
        lines.append("")
    return lines


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


SPEED_THRESHOLDS = (0.5, 0.9)  # "faster": the first evaluation at these accuracies


def _steps_cell(group) -> str:
    """The budget, or under a stopping rule the median step at which the runs stopped and the cap."""
    if not group.runs[0].stops_by_rule:
        return str(group.steps)
    reached = sorted(r.steps for r in group.runs if r.steps is not None)
    median = statistics.median(reached) if reached else None
    return f"{median:g} (median; trainer.stop, cap {group.steps})" if median is not None else "-"


def _speed_cell(group: Group, target: str, threshold: float) -> str:
    """The median first step at ``threshold`` over the runs that reached it, and how many did
    (runs that never did are censored: they are counted, not given a step)."""
    steps = sorted(s for s in (steps_to(r.history.get(target) or [], threshold) for r in group.runs) if s is not None)
    if not steps:
        return f"- (0 of {len(group.runs)})"
    return f"{steps[len(steps) // 2]} ({len(steps)} of {len(group.runs)})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _seeds_sentence(groups: Sequence[Group]) -> str:
    counts = Counter(len(g.runs) for g in groups)
    parts = [f"{_count(configs, 'configuration')} with {_count(seeds, 'seed')}"
             for seeds, configs in sorted(counts.items())]
    return ", ".join(parts)


def warnings_for(groups: Sequence[Group]) -> list[str]:
    """What a reader must know before reading a pooled figure: runs of different budgets (kept
    apart) and, within a budget, the model and task settings the pooled rows span."""
    out = []
    by_budget = budgets(groups)
    if len(by_budget) > 1:
        sizes = ", ".join(f"{steps} ({_count(sum(len(g.runs) for g in gs), 'run')})" for steps, gs in by_budget.items())
        out.append(f"These runs reached different numbers of steps: {sizes}. Runs of different budgets are never "
                   "pooled: each budget is its own configuration and correlations are computed per budget.")
    for steps, scoped in by_budget.items():
        diff = {k: v for k, v in differing(scoped).items() if k != STEPS}
        if diff:
            where = f"At {steps} steps, the" if len(by_budget) > 1 else "The"
            out.append(f"{where} pooled rows (\"all runs\") span different models or tasks: "
                       f"{describe_differences(diff)}.")
    return out


def write_report(records: Sequence[RunRecord], out_dir: str | os.PathLike, title: str, *,
                 target: str = ACCURACY, baseline: str | None = None, resamples: int = 2000,
                 thresholds: Sequence[float] = SPEED_THRESHOLDS) -> tuple[Path, str]:
    """Write ``report.md`` (and its plots) into ``out_dir``; returns its path and the text for the
    terminal (the warnings and the configurations' table).

    ``target`` is the metric the measures are set against (``valid/accuracy``; a distillation
    study: ``valid/distill_kl``); ``baseline`` (``KEY=VALUE``, e.g. ``penalty=none``) adds each
    configuration's comparison with its baseline, and at each of ``thresholds`` (accuracies) the
    seeds it brought there that the baseline did not, and how much sooner."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(records)
    present = [m for m in RUN_MEASURES if any(RUN_MEASURES[m](r) is not None for r in records)]
    warnings = warnings_for(groups)
    lines = [f"# {title}", "",
             f"{_count(len(records), 'finished run')} in {_count(len(groups), 'configuration')} "
             f"({_seeds_sentence(groups)}).", ""]
    lines += [f"> **Note.** {w}" for w in warnings] + ([""] if warnings else [])

    speeds = [t for t in thresholds if target == ACCURACY and any(r.history.get(target) for r in records)]
    header = ["configuration", "seeds", "steps", target, *(f"steps to {t:g}" for t in speeds), *present, "verdicts"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        verdicts = Counter(r.tags.get("verdict", "?") for r in g.runs)
        table.append("| " + " | ".join([g.label, str(len(g.runs)), _steps_cell(g),
                                        _cell(g.values(lambda r: r.metrics.get(target))),
                                        *(_speed_cell(g, target, t) for t in speeds),
                                        *(_cell(g.values(RUN_MEASURES[m])) for m in present),
                                        ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))]) + " |")
    lines += ["## Configurations (mean ± sample standard deviation over seeds)", "", *table, ""]
    if baseline:
        lines += _comparison_lines(groups, baseline, target, resamples)
        if speeds:
            lines += _reaching_lines(groups, baseline, target, speeds)

    corr = correlations(records, present, target=target, resamples=resamples)
    made = sum(c.test.refused is None for c in corr)
    family = (f"Holm's correction runs over the {made} correlations of this table." if made
              else "No correlation could be made here.")
    lines += [f"## {target} against each measure", "",
              "Spearman rank correlation with its two-sided permutation p-value (exact up to 8 points) and a 95% BCa "
              "bootstrap interval, over runs and over configurations (the seed means: seeds of one configuration are "
              f"not independent points). {family} A correlation is refused where the points cannot carry one: fewer "
              f"than {MIN_POINTS}, a side that does not vary, or accuracies that differ by less than their sampling "
              "noise (two accuracies each measured on the evaluation's answers, 95%).", "",
              "| runs | over | measure | n | Spearman | 95% interval | permutation p | Holm p | Pearson |",
              "|---|---|---|---|---|---|---|---|---|"]
    shown = set()
    for c in corr:
        t = c.test
        if t.refused:
            same = [o for o in corr if (o.scope, o.unit, o.test.refused) == (c.scope, c.unit, t.refused)]
            if len(same) == len([o for o in corr if (o.scope, o.unit) == (c.scope, c.unit)]) > 1:
                if (c.scope, c.unit) not in shown:  # refused for every measure alike: one row says it
                    shown.add((c.scope, c.unit))
                    lines.append(f"| {c.scope} | {c.unit} | every measure | {t.n} | - | - | - | - | "
                                 f"refused: {t.refused} |")
                continue
            lines.append(f"| {c.scope} | {c.unit} | {c.measure} | {t.n} | - | - | - | - | refused: {t.refused} |")
        else:
            lines.append(f"| {c.scope} | {c.unit} | {c.measure} | {t.n} | {_num(t.spearman)} | "
                         f"[{_num(t.interval[0])}, {_num(t.interval[1])}] | {_p(t.p)} | {_p(c.holm_p)} | "
                         f"{_num(t.pearson)} |")
    if "ESS/kv" in present and "TSS/kv" in present:
        for steps, scoped in budgets(groups).items():
            d, (lo, hi), n = difference(scoped, "ESS/kv", "TSS/kv", target=target, resamples=resamples)
            if not math.isnan(d):  # too few configurations, or TSS/kv the same in every one
                lines += ["", f"Spearman({target}, ESS/kv) − Spearman({target}, TSS/kv) over {n} configurations "
                              f"(seed means) at {steps} steps: {_num(d)} (95% percentile bootstrap over configurations "
                              f"[{_num(lo)}, {_num(hi)}])."]
    lines.append("")
    lines += _collapse_lines(groups)
    stem = "accuracy" if target == ACCURACY else target.replace("/", "_")
    by_budget = budgets(groups)
    for steps, scoped in by_budget.items():
        suffix = f"_{steps}_steps" if len(by_budget) > 1 else ""
        for measure in ("ESS/kv", "TSS/kv", "utilization", "teacher ESS/kv"):
            name = f"{stem}_vs_" + measure.replace("/", "_per_").replace(" ", "_").lower() + suffix + ".png"
            plot_title = f"{title}: {target} against {measure}" + (f" at {steps} steps" if suffix else "")
            if measure in present and _scatter(scoped, measure, target, out / name, plot_title):
                lines += [f"![{target} against {measure}]({name})", ""]
    lines += ["ESS figures are per operator (a head, an SSM channel); ESS/kv and TSS/kv are read at the "
              "end of the context and divided by the number of key-value pairs; utilization is ESS over "
              "the reachable state min(i, L - i, TSS), summed over the probed indices.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    terminal = "\n".join([*(f"note: {w}" for w in warnings), *([""] if warnings else []), *table])
    return path, terminal


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--thresholds takes accuracies separated by commas, got {text!r}") from None
    bad = [v for v in values if not 0 < v <= 1]
    if bad:
        raise ValueError(f"--thresholds: {bad[0]:g} is not an accuracy in (0, 1]")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ess-report",
        description="Group runs by configuration (without the seed), aggregate over seeds, correlate accuracy "
                    "with ESS/kv, TSS/kv and the other measures, and write a Markdown report with plots.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="every finished run of this MLflow experiment")
    source.add_argument("--parent", help="the children of this sweep parent run; the report is logged to it")
    source.add_argument("--records", type=Path, default=None,
                        help="the runs kept in a records file (ess_reg.harness.records), no store needed")
    parser.add_argument("--export", type=Path, default=None, metavar="FILE",
                        help="also write the runs reported on to a records file (.gz: gzipped), to keep beside "
                             "the report")
    parser.add_argument("--tracking-uri", default=None,
                        help=f"the store (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})")
    parser.add_argument("--out", default=None, help="folder for report.md and its plots (default runs/reports/<name>)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--target", default=ACCURACY,
                        help=f"the metric the measures are set against (default {ACCURACY}; a distillation "
                             "study: valid/distill_kl)")
    parser.add_argument("--thresholds", default=",".join(f"{t:g}" for t in SPEED_THRESHOLDS), metavar="A,B",
                        help="accuracies for the steps-to columns and, with --baseline, the seed-by-seed rescue and "
                             "speed tables (default %(default)s)")
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
        if args.records is None:
            tracking.check_readable_store(uri)
        elif not args.records.is_file():
            raise ValueError(f"--records {args.records}: no such file")
        if args.baseline:
            _baseline_rule(args.baseline)  # a malformed spec fails before the store is read
        thresholds = _thresholds(args.thresholds)
        records = (read_records(args.records) if args.records is not None
                   else load_runs(uri, experiment=args.experiment, parent=args.parent))
        if not records:
            raise ValueError("no finished runs to report on")
        if not any(args.target in r.metrics for r in records):
            logged = sorted({k for r in records for k in r.metrics if not k.startswith(("L", "teacher/"))})
            raise ValueError(f"--target {args.target}: no run logged it; they logged {logged}")
    except ValueError as err:
        print(f"ess-report: error: {err}", file=sys.stderr)
        return 2
    if args.export is not None:
        save_records(records, args.export)
    name = args.experiment or (f"sweep-{args.parent[:8]}" if args.parent else args.records.name.split(".")[0])
    out = Path(args.out or Path("runs") / "reports" / name)
    path, table = write_report(records, out, f"ess-report: {name}", target=args.target, baseline=args.baseline,
                               resamples=args.resamples, thresholds=thresholds)
    if args.parent:  # the full id (--parent may be a prefix of it)
        args.parent = records[0].tags.get("mlflow.parentRunId", args.parent)
        tracker = tracking.Tracker.attach(uri, args.parent)
        for file in sorted(out.iterdir()):
            tracker.log_artifact(file, "report")
    print(table)
    print(f"\nreport: {path}")
    if args.records is not None:
        return 0  # no store to point at
    experiment = records[0].experiment_id
    if args.parent:
        print(tracking.where_to_look(uri, experiment, run_id=args.parent, compare=[r.run_id for r in records]))
    else:
        print(tracking.where_to_look(uri, experiment))
    return 0


if __name__ == "__main__":
    sys.exit(main())
