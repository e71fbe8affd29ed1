"""Finished runs as records, and their configurations: what makes two runs the same experiment.

A configuration is a run's full config without the seed, the run name and the logging keys, with
the step the run *reached* in place of the budget it was asked for; runs are grouped by it, and
each group is labelled by what tells it from the others shown (:func:`labels`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..layer_report import FailureThresholds
from . import tracking
from .naming import CHOSEN_GROUPS

__all__ = ["RunRecord", "load_runs", "identity", "Group", "group_runs", "labels", "differing", "budgets",
           "RUN_MEASURES", "ACCURACY", "STEPS", "NOT_CONFIG", "describe_differences"]

# Params that differ between runs without making them a different configuration: the seed, where
# and how a run logs, and the budget asked for (a run's *reached* step stands in for it).
NOT_CONFIG = ("seed", "tracking.", "trainer.checkpoint_dir", "trainer.resume", "trainer.threads", "trainer.progress",
              "trainer.log_every", "trainer.eval_every", "trainer.checkpoint_every", "trainer.max_steps",
              "init.chosen", "num_parameters", "verdict")
CHOICES = CHOSEN_GROUPS
STEPS = "steps"  # the identity key of a run's reached step


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
    experiment_id: str | None = None

    @property
    def mixer(self) -> str:
        return self.params.get("model.mixer", "?")

    def at(self, key: str, step: int) -> float | None:
        """``key``'s evaluation at ``step`` from the history read, or None where it has none."""
        return next((value for s, value in self.history.get(key, []) if s == step), None)

    @property
    def steps(self) -> int | None:
        """The step the run reached: its last evaluation (a resumed run's, not the budget it was
        first given); the budget asked for where no history was read."""
        steps = [s for h in self.history.values() for s, _ in h]
        if steps:
            return max(steps)
        budget = self.params.get("trainer.max_steps")
        return int(budget) if budget not in (None, "None") else None

    @property
    def stops_by_rule(self) -> bool:
        """Whether ``trainer.stop`` could end the run before its budget (then its runs are
        compared at the rule and the cap, whatever step each reached)."""
        return any(self.params.get(f"trainer.stop.{k}") not in (None, "None") for k in ("target", "patience"))

    @property
    def budget(self) -> int | None:
        """What runs must share to be compared: the step reached, or under a stopping rule the cap
        (``trainer.max_steps``) the rule ran under."""
        if self.stops_by_rule:
            cap = self.params.get("trainer.max_steps")
            return int(cap) if cap not in (None, "None") else None
        return self.steps

    @property
    def config_key(self) -> tuple:
        return tuple(sorted(identity(self).items()))

    def layer_mean(self, suffix: str) -> float | None:
        values = [v for k, v in self.metrics.items() if k.startswith("L") and k.endswith("/" + suffix)]
        return sum(values) / len(values) if values else None

    @property
    def answers(self) -> int | None:
        """How many answers the final accuracy was measured on (for its sampling noise)."""
        if "valid/answers" in self.metrics:
            return int(self.metrics["valid/answers"])
        try:  # runs from before valid/answers was logged: MQAR asks every key once
            examples = int(self.params["trainer.eval_examples"])
        except (KeyError, ValueError):
            return None
        pairs = self.params.get("task.num_kv_pairs")
        return examples * int(pairs) if pairs and pairs.isdigit() else examples


def identity(record: RunRecord) -> dict[str, str]:
    """What makes a run's configuration: every param but the seed, the logging keys and the
    asked budget; the chosen option of each config group; and the step it reached (under a
    stopping rule, the rule's cap: each run stops where it converged)."""
    # a null key counts as absent: runs logged before a key with a null default existed
    # (trainer.stop.*, penalty.per_layer) are the same configuration as those after
    out = {k: v for k, v in record.params.items() if not k.startswith(NOT_CONFIG) and v != "None"}
    out.update({g: record.tags[g] for g in CHOICES if g in record.tags})
    out[STEPS] = f"<={record.budget} (trainer.stop)" if record.stops_by_rule else str(record.steps)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# Measure name -> value of a run (None when the run lacks it). ESS figures are per operator (a
# head, an SSM channel) and at the end of the context for the per-item ones, as the runs log them.
RUN_MEASURES: dict[str, Callable[[RunRecord], float | None]] = {
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
# read in full: collapse during training, ESS at initialization, steps to an accuracy, and the
# validation loss beside them (what a researcher reads anyway: the baseline for an early warning)
HISTORIES = ("ess/util", "ess/per_kv", "valid/accuracy", "valid/loss")
LAYER_UTILIZATION = re.compile(r"^L\d+/util$")  # each layer's, read in full too (the collapse rule per layer)
# The studies' collapse rule: every layer's utilization at or below the verdict's "collapse or near
# collapse" bound (its default thresholds: collapse + margin, 0.25).
_THRESHOLDS = FailureThresholds()
COLLAPSED = _THRESHOLDS.collapse + _THRESHOLDS.margin


def history_keys(metrics) -> list[str]:
    """The metrics of a run read in full: :data:`HISTORIES` and each layer's utilization."""
    return [*HISTORIES, *sorted(k for k in metrics if LAYER_UTILIZATION.match(k))]


def load_runs(uri: str, *, experiment: str | None = None, parent: str | None = None,
              with_history: bool = True) -> list[RunRecord]:
    """The FINISHED runs of an experiment or of a sweep parent, as records; ``with_history``:
    with the evaluations' histories (:func:`history_keys`: one query per run and metric)."""
    if (experiment is None) == (parent is None):
        raise ValueError("give exactly one of experiment or parent")
    runs = tracking.experiment_runs(uri, experiment) if experiment else tracking.child_runs(uri, parent)
    records = []
    for run in runs:
        if run.info.status != "FINISHED" or "model.mixer" not in run.data.params:
            continue  # unfinished runs and sweep parents (no model of their own) are not data points
        record = RunRecord(run.info.run_id, run.info.run_name or run.info.run_id, dict(run.data.params),
                           dict(run.data.metrics), dict(run.data.tags), experiment_id=run.info.experiment_id)
        if with_history:
            for key in history_keys(run.data.metrics):
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

    def mean(self, measure: Callable[[RunRecord], float | None]) -> float | None:
        values = self.values(measure)
        return sum(values) / len(values) if values else None

    @property
    def identity(self) -> dict[str, str]:
        return identity(self.runs[0])

    @property
    def steps(self) -> int | None:
        """The budget the group's runs share (:attr:`RunRecord.budget`)."""
        return self.runs[0].budget


def _natural(label: str) -> list:
    """Sort key that orders ``state_size=2`` before ``state_size=16``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", label)]


def _key_order(key: str) -> tuple:
    return (0, CHOICES.index(key), "") if key in CHOICES else (2, 0, "") if key == STEPS else (1, 0, key)


def _telling(key: str, ident: dict, identities: Sequence[dict]) -> bool:
    """Whether ``key`` tells ``ident`` from the others: a config group's chosen option always
    does; a key under a group (``penalty.schedule.weight``) only among configurations that chose
    the same option; a ``_target_`` never (the option says it)."""
    if key not in ident or key.endswith("._target_"):
        return False
    group = key.split(".")[0]
    if key == group or group not in CHOICES:
        return True
    # absent counts as a value: a key set in one configuration and null (absent) in another tells them apart
    same_option = [other for other in identities if other.get(group) == ident.get(group)]
    return len({other.get(key) for other in same_option}) > 1


def _varying(identities: Sequence[dict]) -> list[str]:
    keys = sorted({k for ident in identities for k in ident}, key=_key_order)
    return [k for k in keys if len({ident.get(k) for ident in identities}) > 1]


def labels(identities: Sequence[dict[str, str]]) -> list[str]:
    """A short label per configuration that names only what tells it from the others shown: the
    chosen option of a config group that differs (``penalty=ess_max``), a key that differs among
    configurations that chose the same option (``penalty.schedule.weight=0.1``), the steps
    reached when they differ; never a ``_target_``. ``all runs`` when there is one."""
    if len(identities) == 1:
        return ["all runs"]
    varying = _varying(identities)
    out = [" ".join(f"{k}={ident[k]}" for k in varying if _telling(k, ident, identities)) for ident in identities]
    if len(set(out)) < len(out):  # not told apart that way: every differing key
        out = [" ".join(f"{k}={ident.get(k, '-')}" for k in varying) for ident in identities]
    return [label or "(the others' defaults)" for label in out]


def group_runs(records: Sequence[RunRecord]) -> list[Group]:
    """Runs with the same configuration but the seed (:func:`identity`: the steps reached
    included), grouped and labelled by what tells the groups apart (:func:`labels`)."""
    by_key: dict[tuple, list[RunRecord]] = {}
    for r in records:
        by_key.setdefault(r.config_key, []).append(r)
    keys = list(by_key)
    names = labels([dict(k) for k in keys])
    return sorted((Group(label, by_key[key]) for label, key in zip(names, keys)), key=lambda g: _natural(g.label))


def differing(groups: Sequence[Group], prefixes: Sequence[str] = ("model", "task", STEPS)) -> dict[str, list[str]]:
    """The keys under ``prefixes`` (the model, the task, the steps reached) that tell the groups
    apart, as their labels would (:func:`labels`), with their values: what a pooled figure pools
    over."""
    identities = [g.identity for g in groups]
    out = {}
    for k in _varying(identities):
        if k.split(".")[0] not in prefixes:
            continue
        values = {ident[k] for ident in identities if _telling(k, ident, identities)}
        if values:
            out[k] = sorted(values, key=_natural)
    return out


def describe_differences(diff: dict[str, list[str]]) -> str:
    return "; ".join(f"{k} ({', '.join(v)})" for k, v in diff.items())


def budgets(groups: Sequence[Group]) -> dict[int | None, list[Group]]:
    """The groups by the steps their runs reached (or the cap of their stopping rule): runs of
    different budgets are never pooled."""
    out: dict[int | None, list[Group]] = {}
    for g in groups:
        out.setdefault(g.steps, []).append(g)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
