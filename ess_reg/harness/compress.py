"""``init=compressed``: start a run from a trained run's model with its state cut down.

    ess-train init=compressed init.source=<run id or checkpoint> init.size=4 trainer.max_steps=200

The source run's model is rebuilt from its checkpoint (as a teacher or a resume is), each of its
diagonal state-space layers keeps the ``init.size`` state coordinates of most energy on one
training batch (:func:`ess_reg.compression.compress_state`), and the run fine-tunes the result
on its own task: its evaluation at step 0 is the compressed model before any fine-tuning.
``init.size=ess`` keeps what the measured ESS says the model uses
(:func:`ess_reg.compression.state_size_from_ess`, the largest over the layers, since every layer
of a zoo model has one state size): the largest tolerance-ESS over every index, example and head
(the worst case). ``init.size=entropy`` keeps the entropy-ESS at the end of the task's context,
averaged over the examples, the largest over heads and layers, rounded up (the default: safe on
31 of 32 trained gla and la models in the knee studies, docs/results.md). The
model's config is the source's with ``model.state_size`` set to the kept size, and ``init.compressed``
records the cut and the rule that chose its size (``given``, ``ess`` or ``entropy``): the logged
config rebuilds the compressed architecture, the checkpoint holds its weights. ``init.method=merge``
(time-invariant layers: ``s4d``) refits the kept coordinates to the whole operator instead of
dropping the others (``compress_state(method="merge")``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping

from torch import nn

from ..compression import METHODS, compress_state, state_size_from_ess
from .build import ConfigError, build_model, with_state_size
from .checkpoints import check_same_task, trained_model
from .run_probe import RunProbe

__all__ = ["compressed_start"]

log = logging.getLogger("ess_reg")


MEASURED_SIZES = ("ess", "entropy")  # ess: the largest tolerance-ESS; entropy: the entropy-ESS at the context end


def _size(value, key: str = "init.size"):
    if value in MEASURED_SIZES or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigError(f"{key} must be a positive int (state coordinates to keep), ess or entropy, got {value!r}")


def compressed_start(config: Mapping, probe: RunProbe) -> tuple[nn.Module, dict, dict]:
    """The source model of ``init.source``, compressed to ``init.size``; the config that rebuilds
    it; and what was cut (``{layer: StateCut}``)."""
    init = config["init"]
    size = _size(init.get("size"))
    method = init.get("method", "keep")
    if method not in METHODS:
        raise ConfigError(f"init.method must be one of {', '.join(METHODS)}, got {method!r}")
    rule = size if size in MEASURED_SIZES else "given"  # recorded: the resolved size alone hides who chose it
    source = str(init["source"])
    model, state, _ = trained_model(source, config["trainer"]["checkpoint_dir"], config["tracking"]["uri"],
                                    key="init.source")
    task = probe.task
    mixer = (state["config"].get("model") or {}).get("mixer")
    if mixer != config["model"].get("mixer"):
        raise ConfigError(f"init.source={source} is a {mixer} model; "
                          f"this run's model is {config['model'].get('mixer')}: "
                          f"add model={mixer} (the other model keys are taken from the source)")
    other_task = init.get("other_task", False)
    if not isinstance(other_task, bool):
        raise ConfigError(f"init.other_task must be true or false, got {other_task!r}")
    check_same_task("init.source", source, state["config"].get("task"), config.get("task"),
                    other_task=other_task, flag="init.other_task")
    if size == "entropy" and task.context_end is None:
        raise ConfigError(f"init.size=entropy reads the ESS at the end of the task's context; the task "
                          f"{type(task).__name__} has none: give an int")
    vocab = model.embedding.num_embeddings if hasattr(model, "embedding") else None
    if vocab != task.vocab_size:
        raise ConfigError(f"init.source={source}: the source model's vocabulary is {vocab}, this run's task has "
                          f"{task.vocab_size}: they must be equal")
    batch = task.train_batch(config["trainer"]["batch_size"], 0, int(config["seed"])).inputs  # step 0 trains nothing
    try:
        if size == "ess":
            size = max(state_size_from_ess(model, batch).values())
        elif size == "entropy":  # where the task's items have all been seen
            size = max(state_size_from_ess(model, batch, indices=[task.context_end], measure="entropy").values())
        cuts = compress_state(model, batch, size, method=method)
    except ValueError as err:
        raise ConfigError(f"init.source={source}: {err}") from None
    out = copy.deepcopy(dict(config))
    stored = copy.deepcopy(dict(state["config"].get("model") or {}))
    out["model"] = {**stored, "state_size": size}
    out = with_state_size(out)
    energy = min(float(c.energy_kept.min()) for c in cuts.values())
    out["init"] = {**out["init"], "size": size,
                   "compressed": {"source": state.get("run_id") or source, "size": size, "rule": rule,
                                  "method": method,
                                  "state_before": max(c.before for c in cuts.values()),
                                  "energy_kept_min": round(energy, 6)}}
    rebuilt = build_model(out["model"])  # the logged config must rebuild exactly this model
    try:
        rebuilt.load_state_dict(model.state_dict())
    except RuntimeError as err:
        raise ConfigError(f"init.source={source}: the compressed model does not fit the config that should rebuild "
                          f"it: {str(err).splitlines()[0]}") from None
    for cut in cuts.values():
        log.info("init=compressed: %s", cut)
    return rebuilt.train(), out, cuts
