"""``ess-analyze RUN_ID | CHECKPOINT | FOLDER``: a trained model's per-layer ESS report and verdict.

A folder written by ``save_pretrained`` is measured on a token batch instead
(:mod:`ess_reg.harness.pretrained`).

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
from .pretrained import analyze_pretrained, is_pretrained_folder, write_outputs
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
    parser.add_argument("target", help="an MLflow run id, a checkpoint file (last.pt) or its folder, or a folder "
                                           "written by save_pretrained (a Hugging Face model)")
    parser.add_argument("--tracking-uri", default=None,
                        help=f"the store holding the run (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})")
    parser.add_argument("--checkpoint-root", default=DEFAULT_CHECKPOINTS,
                        help=f"where runs keep checkpoints, one folder per run id (default {DEFAULT_CHECKPOINTS})")
    parser.add_argument("--examples", type=int, default=None, help="probe batch size (default: the run's)")
    parser.add_argument("--num-indices", type=int, default=None,
                        help="evenly spaced indices (default: the run's; for a folder, every index)")
    hf = parser.add_argument_group("a save_pretrained folder (loaded offline, with eager attention)")
    hf.add_argument("--ids", default=None, help="a text file of token ids, one sequence per line (default: random ids)")
    hf.add_argument("--length", type=int, default=128, help="length of the random sequences (default 128)")
    hf.add_argument("--separator", type=int, default=None,
                    help="a separator token id: the ESS drop across it and its boundary profile")
    hf.add_argument("--seed", type=int, default=0, help="seed of the random ids (default 0)")
    hf.add_argument("--certified", type=float, default=None, metavar="RTOL",
                    help="measure with the certified matrix-free ESS at this relative tolerance (large low-rank "
                         "blocks multiplied, not decomposed; the table's path column says which path each layer took)")
    hf.add_argument("--heads", type=int, default=None, metavar="N",
                    help="measure N heads (or channels) per layer, drawn at random, the same for every index: the "
                         "layer means stay unbiased estimates (default: every head)")
    hf.add_argument("--out", default=None, help="folder for table.txt, ess_vs_index.png and boundary_profile.json "
                                                "(default runs/analyze/<folder name>)")
    args = parser.parse_args(argv)
    if is_pretrained_folder(args.target):
        return _pretrained_main(args)
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


def _pretrained_main(args) -> int:
    threads_before = torch.get_num_threads()
    torch.set_num_threads(resolve_threads("auto"))
    try:
        result = analyze_pretrained(args.target, ids=args.ids, length=args.length, examples=args.examples or 2,
                                    separator=args.separator, seed=args.seed, num_indices=args.num_indices,
                                    certified=args.certified, heads=args.heads)
    except (ValueError, OSError) as err:
        print(f"ess-analyze: error: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads_before)
    out = Path(args.out) if args.out else Path("runs/analyze") / Path(args.target).resolve().name
    written = write_outputs(result, out)
    b, length = result.tokens.shape
    where = f"{args.num_indices} evenly spaced indices" if args.num_indices else "every index"
    if args.heads:
        where += f", {args.heads} heads per layer"
    print(f"{args.target}: {result.model_type}, {b} sequence(s) of {length} tokens, {where}")
    print(result.analysis.table())
    print("wrote " + ", ".join(str(p) for p in written))
    if args.tracking_uri:
        tracker = tracking.Tracker(args.tracking_uri, "ess-analyze", None, run_name=f"{result.model_type} {out.name}")
        tracker.log_params({"folder": str(Path(args.target).resolve()), "model_type": result.model_type,
                            "examples": b, "length": length, "separator": args.separator,
                            "indices": args.num_indices or "all", "certified": args.certified,
                            "heads": args.heads or "all",
                            "ids": args.ids or f"random, seed {args.seed}"})
        tracker.log_metrics({f"{name}/ess": float(h.mean()) for name, h in result.analysis.per_head.items()}
                            | {f"{name}/tss": v for name, v in result.analysis.tss.items()}
                            | {f"{name}/boundary_drop": v for name, v in result.analysis.modulation.items()
                               if v == v}, 0)
        for path in written:
            tracker.log_artifact(path)
        tracker.finish()
        print(f"logged as MLflow run {tracker.run_id} ({args.tracking_uri}, experiment 'ess-analyze')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
