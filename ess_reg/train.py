"""``ess-train``: the Hydra application (the one module that imports hydra), and ``ess-analyze``.

    ess-train                                   # the default: a small MQAR run, minutes on a CPU
    ess-train model=s6 task.num_kv_pairs=8      # any key of conf/ can be overridden
    ess-train -m model=la,gla hydra/launcher=joblib hydra.launcher.n_jobs=2   # a sweep
    ess-analyze runs/checkpoints/<run>/last.pt  # per-layer ESS/TSS report of a checkpoint
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import tracking
from .diagnose import FailureThresholds, LayerReport
from .training import ProbeSettings, TrainerSettings, TrainingDiverged, fit, probe_report

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config ``ess-train OVERRIDES...`` would run, for notebooks, tests and benchmarks.

    ``${hydra:...}`` interpolations resolve as in a real run; the ``hydra`` node is dropped.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides or []), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _settings(cfg: DictConfig) -> tuple[TrainerSettings, ProbeSettings]:
    trainer = TrainerSettings(**OmegaConf.to_container(cfg.trainer, resolve=True))
    p = cfg.probe
    probe = ProbeSettings(examples=p.examples, num_indices=p.num_indices, kind=p.kind,
                          thresholds=FailureThresholds(saturation=p.saturation, collapse=p.collapse))
    return trainer, probe


def _run_name(cfg: DictConfig) -> str:
    name = cfg.tracking.run_name
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        name = f"{name}-job{HydraConfig.get().job.num}"  # sweep jobs must not share a checkpoint
    return name


def format_report(reports: dict[str, LayerReport], thresholds: FailureThresholds | None = None) -> str:
    header = f"{'layer':<18} {'ESS avg':>8} {'TSS avg':>8} {'ESS/TSS':>8} {'ESS total':>10} {'TSS total':>10} {'ESS/kv':>7}  mode"
    lines = [header, "-" * len(header)]
    for name, r in reports.items():
        per_kv = f"{r.ess_per_item:7.2f}" if r.ess_per_item is not None else f"{'-':>7}"
        lines.append(f"{name:<18} {r.ess_avg:8.2f} {r.tss_avg:8.1f} {r.utilization:8.2f} {r.ess_total:10.1f} "
                     f"{r.tss_total:10.1f} {per_kv}  {r.failure_mode(thresholds)}")
    return "\n".join(lines)


def _log_ess_artifacts(tracker: tracking.Tracker, reports: dict[str, LayerReport]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = {}
    for name, r in reports.items():
        per_index = r.ess.values.mean(dim=(0, 1)).tolist()
        table[name] = {**r.metrics(), "indices": r.ess.indices.tolist(), "ess_per_index": per_index,
                       "tss_per_index": r.tss.tolist(), "failure_mode": r.failure_mode()}
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(r.ess.indices.tolist(), per_index, marker="o", label="ESS (mean per operator)")
        ax.plot(r.ess.indices.tolist(), r.tss.tolist(), linestyle="--", label="TSS")
        if r.context_end is not None:
            ax.axvline(r.context_end, color="grey", linewidth=0.8, label="end of context")
        ax.set_xlabel("sequence index i")
        ax.set_ylabel("state size")
        ax.set_title(name)
        ax.legend()
        tracker.log_figure(fig, f"ess_vs_index_{name}.png")
        plt.close(fig)
    tracker.log_json(table, "ess_table.json")


def _init_search(cfg: DictConfig, task, probe: ProbeSettings):
    """Score ``seeds x schemes`` initializations by ESS on the probe batch; returns the search result."""
    from .init_search import select_init
    from .training import probe_indices

    schemes = [dict(s) for s in (cfg.init.schemes or [{}])]
    candidates = [{"seed": int(seed), "scheme": scheme} for seed in cfg.init.seeds for scheme in schemes]

    def factory(candidate):
        kwargs = {**OmegaConf.to_container(cfg.model.mixer_kwargs, resolve=True), **candidate["scheme"]}
        return instantiate(cfg.model, mixer_kwargs=kwargs)

    def report(i, candidate, score, reports):
        print(f"init search {i + 1}/{len(candidates)}: {candidate} -> {cfg.init.score} {score:.4f}")

    inputs = task.test_set(probe.examples, seed=cfg.seed).inputs
    result = select_init(factory, candidates, inputs, score=cfg.init.score,
                         indices=probe_indices(task, probe.num_indices), context_end=task.context_end,
                         items_to_recall=task.items_to_recall, on_candidate=report)
    print(f"init search: chose {result.candidate} (score {result.scores[result.index]:.4f})")
    return result


def run(cfg: DictConfig) -> dict:
    """Train as ``cfg`` says and log everything; returns :func:`ess_reg.training.fit`'s result."""
    trainer, probe = _settings(cfg)
    torch.manual_seed(cfg.seed)  # the model's initialization is part of the run's seed
    task = instantiate(cfg.task)
    search = _init_search(cfg, task, probe) if cfg.init.search else None
    model = search.model if search is not None else instantiate(cfg.model)
    make_optimizer = instantiate(cfg.optimizer)
    run_name = _run_name(cfg)
    checkpoint = Path(trainer.checkpoint_dir) / "last.pt"
    run_id = None
    if trainer.resume:
        if checkpoint.exists():
            run_id = torch.load(checkpoint, map_location="cpu", weights_only=False)["run_id"]
            print(f"resuming MLflow run {run_id} from {checkpoint}")
        else:
            print(f"trainer.resume=true but no checkpoint at {checkpoint}: starting a new run")
            trainer.resume = False
    t = cfg.tracking
    tracker = tracking.Tracker(t.uri, t.experiment, t.artifact_location, run_name=run_name, run_id=run_id,
                               parent_run_id=os.environ.get(tracking.PARENT_RUN_ENV))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker.log_params(tracking.flatten(resolved))
    tracker.set_tags({"mixer": cfg.model.mixer, "task": type(task).__name__,
                      "num_parameters": sum(p.numel() for p in model.parameters())})
    if search is not None:
        tracker.log_json(search.table(), "init_search.json")
        tracker.set_tags({"init.chosen": search.candidate, "init.chosen_score": search.scores[search.index]})
    regularizer = None
    if cfg.penalty.get("_target_"):
        regularizer = instantiate(cfg.penalty)(model, task=task)
        tracker.set_tags({"penalty": cfg.penalty._target_.rsplit(".", 1)[-1]})
    print(f"ess-train: {cfg.model.mixer} on {type(task).__name__} -> MLflow run {tracker.run_id} "
          f"({t.uri}, experiment {t.experiment!r})")
    try:
        result = fit(model, task, make_optimizer, trainer, probe, tracker, seed=cfg.seed, config=resolved,
                     regularizer=regularizer)
    except TrainingDiverged as err:
        print(f"ess-train: run FAILED: {err}", file=sys.stderr)
        raise
    except BaseException:
        tracker.set_tags({"failure_reason": "interrupted or crashed; resume with trainer.resume=true"})
        tracker.finish("KILLED")
        raise
    tracker.set_tags({f"failure_mode.{name}": mode for name, mode in result["failure_modes"].items()})
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(OmegaConf.to_yaml(resolved))
        tracker.log_artifact(config_path)
    _log_ess_artifacts(tracker, result["reports"])
    tracker.log_artifact(result["checkpoint"], "checkpoint")
    tracker.finish("FINISHED")
    print("\n" + format_report(result["reports"], probe.thresholds))
    accuracy = result["metrics"].get("valid/accuracy")
    if accuracy is not None:
        print(f"\nvalid accuracy {accuracy:.3f} after {result['steps']} steps")
    print(f"look at it: mlflow ui --backend-store-uri {t.uri}")
    result["run_id"] = tracker.run_id
    return result


class ParentRunCallback(Callback):
    """In a multirun, one parent MLflow run groups the jobs' runs (set for them via the environment)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        t = config.tracking
        name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        run_id = tracking.start_parent_run(t.uri, t.experiment, t.artifact_location, name)
        os.environ[tracking.PARENT_RUN_ENV] = run_id
        print(f"ess-train: sweep parent run {run_id}")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        run_id = os.environ.pop(tracking.PARENT_RUN_ENV, None)
        if run_id:
            tracking.finish_run(config.tracking.uri, run_id)


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    _hydra_main()


def analyze_main(argv: list[str] | None = None) -> int:
    """``ess-analyze CHECKPOINT``: per-layer ESS/TSS report of a saved model on a probe batch."""
    parser = argparse.ArgumentParser(prog="ess-analyze", description=analyze_main.__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--examples", type=int, default=None, help="probe batch size (default: the run's)")
    parser.add_argument("--num-indices", type=int, default=None, help="evenly spaced indices (default: the run's)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"error: no checkpoint file at {args.checkpoint}", file=sys.stderr)
        return 2
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if "config" not in state or "model" not in state:
        print(f"error: {args.checkpoint} is not an ess-train checkpoint (no config/model inside)", file=sys.stderr)
        return 2
    cfg = OmegaConf.create(state["config"])
    model, task = instantiate(cfg.model), instantiate(cfg.task)
    model.load_state_dict(state["model"])
    _, probe = _settings(cfg)
    probe.examples = args.examples or probe.examples
    probe.num_indices = args.num_indices or probe.num_indices
    inputs = task.test_set(probe.examples, seed=cfg.seed).inputs
    reports = probe_report(model.eval(), task, inputs, probe)
    print(f"{args.checkpoint}: {cfg.model.mixer}, step {state['step']}, {type(task).__name__} "
          f"(L={task.seq_len}), probe batch {probe.examples}")
    print(format_report(reports, probe.thresholds))
    return 0


if __name__ == "__main__":
    main()
