"""Every option of every config group composes and builds; the shared model base agrees with
the Python backbone; every group is documented.

Options are found by listing ``conf/<group>/*.yaml``, so a new config file is tested without
touching this file.
"""

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ess_reg import RandomIndices
from ess_reg.harness.ess_train import CONFIG_DIR, compose_config, prepare
from ess_reg.harness.build import MODEL_TARGETS, ConfigError, search_space
from ess_reg.harness.checkpoints import save_checkpoint
from ess_reg.harness.distill import DistillSettings
from ess_reg.harness.run_probe import ProbeSettings
from ess_reg.harness.settings import TrainerSettings
from ess_reg.models import MIXERS
from ess_reg.models.lm import LanguageModel
from ess_reg.penalty import OBJECTIVES, Budget, ESSPenalty, Schedule

CONF = Path(CONFIG_DIR)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
MODEL_BASE = CONF / "model" / "base" / "lm.yaml"


def groups() -> list[str]:
    return sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


GROUP_OPTIONS = [(g, o) for g in groups() for o in options(g)]


def cheap(tmp_path, *extra) -> list[str]:
    """Overrides that make any run tiny and write only under ``tmp_path`` (as the ``tiny``
    fixture of tests/conftest.py, with a tiny model), then ``extra``: the option under test wins."""
    return ["model.d_model=16", "model.n_layers=1", "trainer.max_steps=1", "trainer.batch_size=2",
            "trainer.eval_examples=2", "trainer.progress=false", "trainer.device=cpu",
            "probe.examples=2", "probe.num_indices=2",
            f"tracking.uri=sqlite:///{tmp_path}/m.db", f"tracking.artifact_location={tmp_path}/a",
            f"trainer.checkpoint_dir={tmp_path}/c", *extra]


def leaves(node, prefix=""):
    """``{dotted.key: value}`` for every leaf of a plain nested dict."""
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def test_groups_and_options_are_found():
    found = dict.fromkeys(groups())
    assert {"model", "task", "optimizer", "trainer", "tracking", "probe", "init", "experiment"} <= found.keys()
    assert set(MIXERS) <= set(options("model"))  # a model option for every mixer of the zoo
    assert "base" not in options("model")


@pytest.mark.parametrize("group, option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_option_composes_and_builds(group, option, tmp_path):
    overrides = cheap(tmp_path, f"{group}={option}")
    if group == "experiment":  # an experiment's own settings must survive: override only the outputs
        overrides = [o for o in overrides if o.startswith(("tracking.", "trainer.checkpoint_dir", "trainer.device"))]
        overrides.append(f"experiment={option}")
    cfg = compose_config(overrides)
    if OmegaConf.is_missing(cfg.distill, "teacher"):  # a teacher to learn from: a checkpoint of the same setup
        teacher_plan = prepare(compose_config([*overrides, "distill=none"]))
        save_checkpoint(tmp_path / "teacher.pt", teacher_plan.model, torch.optim.SGD(teacher_plan.model.parameters()),
                        1, None, teacher_plan.config)
        overrides.append(f"distill.teacher={tmp_path / 'teacher.pt'}")
        cfg = compose_config(overrides)
    if OmegaConf.is_missing(cfg.init, "source"):  # a model to compress: a checkpoint of the same setup
        source_plan = prepare(compose_config([*overrides, "init=default"]))
        save_checkpoint(tmp_path / "source.pt", source_plan.model, torch.optim.SGD(source_plan.model.parameters()),
                        1, None, source_plan.config)
        overrides += [f"init.source={tmp_path / 'source.pt'}", "init.size=2"]
        cfg = compose_config(overrides)
    plan = prepare(cfg)
    config = plan.config
    assert plan.choices[group] == option

    if group == "model":
        mixers = plan.model.mixers()
        assert len(mixers) == 1 and {type(m) for m in mixers.values()} == {MIXERS[config["model"]["mixer"]]}
        if option in MIXERS:  # a model option named after a mixer builds that mixer
            assert plan.model.mixer_name == option
        assert plan.model.embedding.num_embeddings == plan.task.vocab_size
        assert plan.model.embedding.embedding_dim == 16
    elif group == "task":
        assert type(plan.task).__name__ == cfg.task._target_.rsplit(".", 1)[1]
        for key, value in config["task"].items():
            if key != "_target_":
                assert getattr(plan.task, key) == value, key
        assert plan.probe.inputs.shape == (2, plan.task.seq_len)
    elif group == "optimizer":
        optimizer = plan.make_optimizer(plan.model.parameters())
        assert type(optimizer).__name__ == cfg.optimizer._target_.rsplit(".", 1)[1]
        assert isinstance(optimizer, torch.optim.Optimizer)
        for key, value in config["optimizer"].items():
            if not key.startswith("_"):
                assert optimizer.defaults[key] == pytest.approx(value), key
    elif group == "trainer":
        assert isinstance(plan.trainer, TrainerSettings) and plan.trainer.max_steps == 1
        for key, value in config["trainer"].items():
            if key == "stop":  # a group of its own: the rule, built from its keys
                assert dataclasses.asdict(plan.trainer.stop) == value
            elif key not in ("resume", "checkpoint_dir"):
                assert getattr(plan.trainer, key) == value, key
    elif group == "probe":
        settings = plan.probe.settings
        assert isinstance(settings, ProbeSettings) and settings.kind == config["probe"]["kind"]
        assert (settings.thresholds.solved, settings.thresholds.saturation, settings.thresholds.collapse) == \
            (config["probe"]["solved"], config["probe"]["saturation"], config["probe"]["collapse"])
        assert len(plan.probe.index_tensor()) >= 2
    elif group == "init":
        if config["init"]["search"]:  # every candidate scored, the choice recorded so it rebuilds
            seeds, schemes = search_space(config)
            assert len(plan.search.scores) == len(seeds) * len(schemes) > 1
            assert config["init"]["chosen"]["seed"] in seeds and config["init"]["chosen"]["scheme"] in schemes
        else:
            assert plan.search is None and config["init"]["chosen"] is None
    elif group == "tracking":
        default = compose_config([f"tracking={option}"]).tracking  # the option's own store resolves
        assert isinstance(OmegaConf.to_container(default, resolve=True)["uri"], str)
        assert config["tracking"]["uri"] == f"sqlite:///{tmp_path}/m.db"
    elif group == "experiment":
        preset = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"))
        preset.pop("defaults", None)
        for key, value in leaves(preset).items():  # every value the preset sets is the one that runs
            # hydra.* (a study's sweep) is Hydra's own: compose_config drops that node
            if not key.startswith(("tracking.", "trainer.checkpoint_dir", "trainer.device", "hydra.")):
                assert OmegaConf.select(cfg, key) == value, key
    elif group == "penalty":
        preset = cfg.penalty
        if preset._target_ is None:
            assert plan.regularizer is None
        else:  # every part built by Hydra, as the preset says
            penalty = plan.regularizer
            assert type(penalty).__name__ == preset._target_.rsplit(".", 1)[1]
            assert penalty.schedule == Schedule(**{k: v for k, v in preset.schedule.items() if k != "_target_"})
            assert penalty.budget == Budget(**{k: v for k, v in preset.budget.items() if k != "_target_"})
            if isinstance(penalty, ESSPenalty):
                assert penalty.measure_name == preset.measure and penalty.probe.kind == preset.kind
                assert penalty.probe.indices == RandomIndices(preset.indices.count)
                objective = preset.objective
                if isinstance(objective, str):
                    assert penalty.objective == OBJECTIVES[objective]()
                else:  # Target, Constraint: the class and every value the preset gives
                    assert type(penalty.objective).__name__ == objective._target_.rsplit(".", 1)[1]
                    for key, value in objective.items():
                        if key != "_target_":
                            assert getattr(penalty.objective, key) == value, key
            value = penalty(plan.probe.inputs, step=10_000)  # it acts on the model: a gradient path
            assert value.requires_grad and torch.isfinite(value)
    elif group == "distill":
        if config["distill"]["teacher"] is None:
            assert plan.teacher is None
        else:  # the teacher rebuilt from its checkpoint, frozen, with the preset's settings
            assert plan.teacher.settings == DistillSettings(**config["distill"])
            assert not any(p.requires_grad for p in plan.teacher.parameters())
            x = plan.probe.inputs
            assert plan.teacher.loss(x, plan.teacher(x), torch.zeros_like(x)).item() == \
                pytest.approx(0.0, abs=1e-6)
    else:
        pytest.fail(f"no check for config group {group!r}: add one to {Path(__file__).name}")


# -- the shared model base ---------------------------------------------------------------------


def test_model_base_equals_the_backbone_defaults():
    base = OmegaConf.load(MODEL_BASE)
    assert base._target_ in MODEL_TARGETS
    params = inspect.signature(LanguageModel.__init__).parameters
    params = {name: p for name, p in params.items() if name != "self"}
    assert set(base) - {"_target_"} == set(params), "the base names every LanguageModel argument, nothing else"
    checked = []
    for name, param in params.items():
        if param.default is inspect.Parameter.empty or OmegaConf.is_missing(base, name):
            continue  # vocab_size comes from the task; mixer is set by each model option
        if OmegaConf.is_interpolation(base, name):
            continue
        assert base[name] == param.default, f"conf/model/base/lm.yaml {name}={base[name]!r}, " \
                                            f"LanguageModel default {param.default!r}"
        checked.append(name)
    assert {"d_model", "n_layers", "mlp_ratio", "short_conv", "max_len", "mixer_kwargs"} <= set(checked)
    assert OmegaConf.is_missing(base, "mixer")


@pytest.mark.parametrize("option", options("model"))
def test_model_option_is_the_base_plus_its_mixer(option):
    base = OmegaConf.to_container(OmegaConf.load(MODEL_BASE))
    own = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{option}.yaml"))
    defaults = own.pop("defaults", [])
    assert "base/lm@_here_" in defaults and defaults[-1] == "_self_", "model options build on the shared base"
    assert own.get("mixer") in MIXERS
    repeated = {k: v for k, v in own.items() if k not in ("mixer", "mixer_kwargs") and base.get(k) == v}
    assert not repeated, f"conf/model/{option}.yaml repeats the base's {repeated}: set only what differs"

    node = OmegaConf.to_container(compose_config([f"model={option}"]).model)  # lands at `model`, merged
    assert list(node) == list(base)  # same keys, in the base's (LanguageModel's) order
    assert node == {**base, **own}


def test_a_model_option_without_a_mixer_is_refused_with_the_choices(tmp_path):
    cfg = compose_config(cheap(tmp_path, "model=gla"))
    cfg.model.mixer = "???"  # what the base leaves when an option forgets its mixer
    with pytest.raises(ConfigError,
                       match=r"model: unknown mixer '\?\?\?'; choose one of \['deltanet', 'gated_deltanet', 'gla'"):
        prepare(cfg)


# -- the documentation -------------------------------------------------------------------------


def config_dirs() -> list[str]:
    return sorted(str(p.relative_to(CONF)) for p in CONF.rglob("*") if p.is_dir() and "__pycache__" not in p.parts)


def test_every_config_group_and_option_is_documented():
    text = DOCS.read_text()
    missing = [d for d in config_dirs() if f"`{d}`" not in text]
    assert not missing, f"docs/configuration.md does not document the config group(s) {missing}"
    undocumented = [f"{g}={o}" for g, o in GROUP_OPTIONS if f"`{o}`" not in text]
    assert not undocumented, f"docs/configuration.md does not document {undocumented}"


def test_a_study_preset_sweep_is_what_the_parent_run_records():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ess_reg.harness.sweep import swept_keys, sweep_overrides

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=["experiment=ess_vs_tss", "model=sa", "model.state_size=null"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    overrides = sweep_overrides(cfg)  # the preset's sweep, with the command line winning for its keys
    assert "task.num_kv_pairs=2,4,8,16" in overrides and "model=sa" in overrides
    assert not any(o.startswith(("model=la", "model.state_size=2")) for o in overrides)
    assert swept_keys(overrides) == ["task.num_kv_pairs"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):  # no preset: the command line alone
        plain = compose(config_name="config", overrides=["seed=0"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert sweep_overrides(plain) == ["seed=0"]


STUDIES = [o for o in options("experiment")
           if "sweeper" in (OmegaConf.load(CONF / "experiment" / f"{o}.yaml").get("hydra") or {})]


def swept_values(override: str) -> list[str]:
    """The values a sweep override names, as Hydra parses it: each choice of a list or range,
    both ends of a tuning sweeper's interval."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(override)
    if parsed.is_discrete_sweep():
        return list(parsed.sweep_string_iterator())
    if parsed.is_interval_sweep():
        return [str(parsed.value().start), str(parsed.value().end)]
    return [str(parsed.value())]


@pytest.mark.parametrize("preset", STUDIES)
def test_every_value_of_a_study_presets_sweep_composes_and_builds(preset, tmp_path):
    """A sweep is only checked job by job when it runs: each value of each swept key must compose
    (a key the config lacks would stop the sweep at its first job) and build."""
    params = OmegaConf.load(CONF / "experiment" / f"{preset}.yaml").hydra.sweeper.params
    outputs = [o for o in cheap(tmp_path) if o.startswith(("tracking.", "trainer.checkpoint_dir", "trainer.device"))]
    for key, values in params.items():
        for value in swept_values(f"{key}={values}"):
            overrides = [*outputs, f"experiment={preset}", f"{key}={value}"]
            cfg = compose_config(overrides)
            if OmegaConf.is_missing(cfg.distill, "teacher") or OmegaConf.is_missing(cfg.init, "source"):
                continue  # distillation and compression studies: their teachers and sources come from step 1
                # (each option is checked with one above)
            cfg.trainer.max_steps = 1
            prepare(cfg)


def test_the_slurm_launcher_preset_composes_with_its_defaults():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.partition) == (120, 4, "gpu")


def test_init_search_space_is_the_mixers_schemes_under_the_runs_seed_by_default():
    cfg = OmegaConf.to_container(compose_config(["init=ess_search", "model=s6", "seed=7"]), resolve=True)
    seeds, schemes = search_space(cfg)
    assert seeds == [7] and [s["a_init"] for s in schemes] == ["s4d_real", "s4d_lin", "constant", "uniform"]
    cfg = OmegaConf.to_container(compose_config(["init=ess_search_seeds", "seed=7"]), resolve=True)
    assert search_space(cfg) == (list(range(8)), [{}])
    cfg = OmegaConf.to_container(compose_config(["init=ess_search", "init.seeds=[1,2]",
                                                 "init.schemes=[{gate_normalizer: 4}]"]), resolve=True)
    assert search_space(cfg) == ([1, 2], [{"gate_normalizer": 4}])
    for bad, message in (("init.seeds=[]", "init.seeds is empty"), ("init.schemes=all", "must be 'auto' or a list")):
        cfg = OmegaConf.to_container(compose_config(["init=ess_search", bad]), resolve=True)
        with pytest.raises(ConfigError, match=message):
            search_space(cfg)
