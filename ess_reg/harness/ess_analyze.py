"""``ess-analyze RUN_ID | CHECKPOINT``: a trained model's per-layer ESS report and verdict.

The model and task are rebuilt from the checkpoint's config through the project's registries
(never from a class named in the file), the checkpoint loads with ``weights_only=True``, and
the probe batch, indices, accuracy set and thresholds are the run's own: the report reproduces
the run's final evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import tracking
from .build import ConfigError, build_task, probe_settings
from ..layer_report import LayerReport
from ..verdict import Verdict, diagnose
from .findings import format_report
from .checkpoints import trained_model
from .run_probe import ProbeSettings, RunProbe
from .settings import resolve_threads
from .training import evaluate

__all__ = ["RunAnalysis", "analyze_run", "main", "DEFAULT_URI"]

DEFAULT_URI = tracking.DEFAULT_URI
DEFAULT_CHECKPOINTS = "runs/checkpoints"


@dataclass
class RunAnalysis:
    checkpoint: Path
    config: dict
    step: int
    accuracy: float
    probe: ProbeSettings
    reports: dict[str, LayerReport]
    verdict: Verdict


def analyze_run(target: str, *, uri: str | None = None, checkpoint_root: str = DEFAULT_CHECKPOINTS,
                examples: int | None = None, num_indices: int | None = None) -> RunAnalysis:
    """Analyze the run ``target`` names: a checkpoint file or folder, or a run id (its local
    checkpoint, else its ``checkpoint`` artifact in the store at ``uri``)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    model, state, path = trained_model(target, checkpoint_root, uri, key="target")
    config = state["config"]
    task = build_task(config["task"])
    probe = probe_settings(config["probe"])
    probe = dataclasses.replace(probe, examples=examples or probe.examples,
                                num_indices=num_indices or probe.num_indices)  # checked again
    seed = config["seed"]
    test = task.test_set(config["trainer"]["eval_examples"], seed=seed)
    accuracy = evaluate(model, test.inputs, test.labels, config["trainer"]["batch_size"])["accuracy"]
    reports = RunProbe(task, probe, seed).report(model)
    return RunAnalysis(path, config, int(state["step"]), accuracy, probe, reports,
                    diagnose(reports, accuracy, probe.thresholds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ess-analyze",
        description="Per-layer ESS report and verdict of a trained ess-train model, on the run's own probe batch.")
    parser.add_argument("target", help="an MLflow run id, or a checkpoint file (last.pt) or its folder")
    parser.add_argument("--tracking-uri", default=None,
                        help=f"the store holding the run (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})")
    parser.add_argument("--checkpoint-root", default=DEFAULT_CHECKPOINTS,
                        help=f"where runs keep checkpoints, one folder per run id (default {DEFAULT_CHECKPOINTS})")
    parser.add_argument("--examples", type=int, default=None, help="probe batch size (default: the run's)")
    parser.add_argument("--num-indices", type=int, default=None, help="evenly spaced indices (default: the run's)")
    args = parser.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(resolve_threads("auto"))  # the trainer's default for shared machines
    try:
        result = analyze_run(args.target, uri=args.tracking_uri, checkpoint_root=args.checkpoint_root,
                         examples=args.examples, num_indices=args.num_indices)
    except (ConfigError, ValueError) as err:
        print(f"ess-analyze: error: {err}", file=sys.stderr)
        return 2
    finally:  # main() is also called in-process (tests, notebooks): leave torch as it was
        torch.set_num_threads(threads_before)
    c = result.config
    print(f"{result.checkpoint}: {c['model']['mixer']} on {c['task']['_target_'].rsplit('.', 1)[-1]} "
          f"(L={c['task']['seq_len']}), step {result.step}, valid accuracy {result.accuracy:.3f}")
    print(format_report(result.reports, result.verdict, result.probe.thresholds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
