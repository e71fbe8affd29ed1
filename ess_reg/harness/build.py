"""From a run's config (plain data) to the objects it trains: task, model, settings, initialization.

Model and task are built only from the project's own registries — a class named by its
``_target_`` must be one of :data:`MODEL_TARGETS` / :data:`TASK_TARGETS`, and every other key is
a plain argument — so a config read from a checkpoint or a store can never name code to run.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layer_report import FailureThresholds
from ..tasks import TASKS, Task
from .run_probe import ProbeSettings, RunProbe
from .settings import TrainerSettings

__all__ = ["with_state_size", "ConfigError", "config_dir", "config_targets", "check_targets", "MODEL_TARGETS",
           "TASK_TARGETS", "build_task", "build_model", "trainer_settings",
           "probe_settings", "with_chosen_init", "initial_model"]

log = logging.getLogger("ess_reg")


class ConfigError(ValueError):
    """A config value that cannot run; the message names the key and what is allowed."""


def config_dir() -> str:
    """``conf/`` ships inside the installed package (``ess_reg/conf``); in a source checkout
    (an editable install) it is the repository's top-level ``conf/``."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"ess-reg's configs are missing: no conf/config.yaml in {package} or {package.parent}")


def config_targets() -> frozenset[str]:
    """Every ``_target_`` that ess-reg's own config files name (optimizers, penalties, their
    parts, models, tasks): the only ones a config restored from a checkpoint may name, since a
    resumed run instantiates its stored optimizer and penalty."""
    targets = set()
    for path in Path(config_dir()).rglob("*.yaml"):
        targets.update(re.findall(r"^\s*_target_:\s*([\w.]+)", path.read_text(), flags=re.M))
    return frozenset(targets)


def check_targets(config: Mapping, where: str) -> None:
    """Refuse a config (read from a checkpoint) with a ``_target_``, at any depth, that none of
    ess-reg's configs names; nothing is imported to find out."""
    allowed = config_targets()

    def walk(node, path):
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key == "_target_" and value is not None and value not in allowed:
                    raise ConfigError(f"{where}: the stored config names {path}_target_={value!r}, which none of "
                                      "ess-reg's configs names: refused (nothing was imported or called)")
                walk(value, f"{path}{key}.")
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{path}{i}.")

    walk(config, "")


def _model_class():
    from ..models.lm import LanguageModel

    return LanguageModel


# The second name is the one runs logged before the zoo moved under ess_reg: their configs still load.
MODEL_TARGETS = {"ess_reg.models.lm.LanguageModel": _model_class, "models.lm.LanguageModel": _model_class}
TASK_TARGETS = {f"ess_reg.tasks.{cls.__name__}": cls for cls in TASKS.values()}
_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any, key: str) -> Any:
    """Check that ``value`` is plain data (no ``_target_`` below the top): nothing to execute."""
    if isinstance(value, Mapping):
        if "_target_" in value:
            raise ConfigError(f"{key} may not name a class (_target_) below the top of the config")
        return {k: _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, _PLAIN):
        raise ConfigError(f"{key} must be plain data, got {type(value).__name__}")
    return value


def _from_registry(node: Mapping, group: str, registry: Mapping[str, Any]):
    node = dict(node)
    target = node.pop("_target_", None)
    if target not in registry:
        raise ConfigError(f"{group}._target_={target!r} is not one of ess-reg's {group}s: {sorted(registry)}")
    return registry[target], {k: _plain(v, f"{group}.{k}") for k, v in node.items()}


def build_task(node: Mapping) -> Task:
    cls, kwargs = _from_registry(node, "task", TASK_TARGETS)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"task: {err}") from None


def build_model(node: Mapping) -> nn.Module:
    factory, kwargs = _from_registry(node, "model", MODEL_TARGETS)
    try:
        return factory()(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model: {err}") from None


def trainer_settings(node: Mapping) -> TrainerSettings:
    node = {k: v for k, v in node.items() if k not in ("resume", "checkpoint_dir")}
    try:
        return TrainerSettings(**node)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def probe_settings(node: Mapping) -> ProbeSettings:
    node = dict(node)
    try:
        thresholds = FailureThresholds(saturation=node.pop("saturation"), collapse=node.pop("collapse"),
                                       solved=node.pop("solved"),
                                       # absent from configs stored before these keys existed
                                       margin=node.pop("margin", FailureThresholds.margin),
                                       still_falling=node.pop("still_falling", FailureThresholds.still_falling))
        return ProbeSettings(**node, thresholds=thresholds)
    except (TypeError, ValueError, KeyError) as err:
        message = f"probe.{err.args[0]} is missing" if isinstance(err, KeyError) else str(err)
        raise ConfigError(message if message.startswith("probe.") else f"probe: {message}") from None


def with_state_size(config: Mapping) -> dict:
    """``config`` with ``model.state_size``, when set, written into the mixer's own knob in
    ``model.mixer_kwargs`` (``feature_dim``, ``d_state``, ``window``), replacing the model
    option's value: one sweep key sizes every mixer, and the logged config says what was built."""
    model = config.get("model") or {}
    if model.get("state_size") is None:
        return dict(config)
    from ..models import state_kwargs

    kwargs = dict(model.get("mixer_kwargs") or {})
    try:
        knob = state_kwargs(model["mixer"], model["state_size"], **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.state_size: {err}") from None
    out = copy.deepcopy(dict(config))
    out["model"] = {**out["model"], "mixer_kwargs": {**kwargs, **knob}}
    return out


def with_chosen_init(config: Mapping, chosen: Mapping) -> dict:
    """``config`` as it must be logged after an init search chose ``chosen = {seed, scheme}``:
    the scheme merged into ``model.mixer_kwargs`` and the choice under ``init.chosen``, so that
    the logged config rebuilds exactly the model that trained."""
    out = copy.deepcopy(dict(config))
    out["model"] = {**out["model"], "mixer_kwargs": {**(out["model"].get("mixer_kwargs") or {}),
                                                     **dict(chosen["scheme"])}}
    out["init"] = {**out["init"], "chosen": {"seed": int(chosen["seed"]), "scheme": dict(chosen["scheme"])}}
    return out


def search_space(config: Mapping) -> tuple[list[int], list[dict]]:
    """An init search's seeds and schemes: ``init.seeds`` (null: the run's own seed) and
    ``init.schemes`` (``auto``: the mixer's own, :func:`ess_reg.models.init_schemes`; else a list
    of ``model.mixer_kwargs`` overrides)."""
    init = config["init"]
    seeds = init.get("seeds")
    seeds = [int(config["seed"])] if seeds is None else [int(seed) for seed in seeds]
    schemes = init.get("schemes")
    if schemes == "auto":
        from ..models import init_schemes

        mixer = (config.get("model") or {}).get("mixer")
        try:
            schemes = init_schemes(mixer)
        except ValueError as err:
            raise ConfigError(f"init.schemes=auto: {err}") from None
    elif isinstance(schemes, str):
        raise ConfigError(f"init.schemes must be 'auto' or a list of mixer_kwargs overrides, got {schemes!r}")
    schemes = [dict(scheme) for scheme in (schemes or [{}])]
    if not seeds:
        raise ConfigError("init.seeds is empty: give at least one seed, or null for the run's own")
    return seeds, schemes


def initial_model(config: Mapping, probe: RunProbe, on_candidate=None) -> tuple[nn.Module, dict, Any]:
    """The model a run starts from, and the config that rebuilds it.

    ``init.chosen`` set (a logged config, a resume): build under that seed. ``init.search``:
    score ``seeds x schemes`` (:func:`search_space`) by ESS on the probe batch and keep the best; the returned config
    records the choice (:func:`with_chosen_init`). Otherwise: build under the run's seed.
    Returns ``(model, config, search result or None)``.
    """
    init = config.get("init") or {}
    chosen = init.get("chosen")
    if init.get("compressed"):  # init=compressed, logged: the compressed architecture (weights: the checkpoint's)
        torch.manual_seed(int(config["seed"]))
        return build_model(config["model"]), dict(config), None
    if chosen:
        torch.manual_seed(int(chosen["seed"]))
        return build_model(config["model"]), dict(config), None
    if not init.get("search"):
        torch.manual_seed(int(config["seed"]))
        return build_model(config["model"]), dict(config), None

    from ..init_search import select_init

    seeds, schemes = search_space(config)
    candidates = [{"seed": seed, "scheme": scheme} for seed in seeds for scheme in schemes]

    def factory(candidate):
        node = dict(config["model"])
        node["mixer_kwargs"] = {**(node.get("mixer_kwargs") or {}), **candidate["scheme"]}
        return build_model(node)

    result = select_init(factory, candidates, probe.inputs, score=init["score"], indices=probe.indices,
                         kind=probe.settings.kind, context_end=probe.task.context_end,
                         items_to_recall=probe.task.items_to_recall,
                         on_candidate=on_candidate)
    return result.model, with_chosen_init(config, result.candidate), result
