"""What makes a run recognizable in the MLflow UI: its name, its tags, the code it ran.

Plain functions of plain data (the command-line overrides, the config-group choices); the
Hydra app (:mod:`ess_reg.harness.ess_train`) reads those from Hydra and passes them in.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["run_name", "run_tags", "git_commit", "NAME_IGNORES", "CHOSEN_GROUPS"]

# The config groups whose chosen option says what a run is (model=gla, penalty=ess_max): logged as
# tags and params, and named in ess-report's labels instead of the _target_ they stand for.
CHOSEN_GROUPS = ("model", "task", "optimizer", "penalty", "init", "distill")

# Overrides that do not change what a run computes, so they do not name it.
NAME_IGNORES = ("tracking.", "hydra.", "hydra/", "trainer.progress", "trainer.resume", "trainer.threads",
                "trainer.checkpoint_dir", "trainer.device")
MAX_NAME = 120


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_name(choices: Mapping[str, str], overrides: Sequence[str], swept: Sequence[str] | None = None) -> str:
    """``<model>-<task>`` followed by the overrides that make this run differ.

    In a sweep, only the swept keys are named (what the jobs share names none of them).
    """
    base = f"{choices.get('model', 'model')}-{choices.get('task', 'task')}"
    keep = []
    for override in overrides:
        key = _key(override)
        if key in ("model", "task") or key.startswith(NAME_IGNORES):
            continue
        if swept is not None and key not in swept:
            continue
        keep.append(override.lstrip("+~"))
    name = " ".join([base, *keep])
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def git_commit(path: str | Path | None = None) -> tuple[str, bool] | None:
    """``(commit, dirty)`` of the git checkout holding ``path`` (default: this package), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit, bool(status)) if commit else None


def run_tags(choices: Mapping[str, str], overrides: Sequence[str]) -> dict[str, str]:
    """Config-group choices (``model=gla``...), the command-line overrides and the git commit."""
    tags = {group: str(choice) for group, choice in choices.items()
            if not group.startswith("hydra") and choice is not None}
    tags["overrides"] = " ".join(overrides) if overrides else "(none)"
    commit = git_commit()
    if commit is not None:
        tags["mlflow.source.git.commit"] = commit[0]
        tags["git.dirty"] = str(commit[1]).lower()
    return tags
