"""A checkpoint is data: nothing in it is executed, imported or called."""

import pathlib

import pytest
import torch

from ess_reg.harness.ess_analyze import analyze_run
from ess_reg.harness.build import ConfigError
from ess_reg.harness.ess_train import compose_config, run


class Payload:
    """Unpickling this writes a file: what a crafted checkpoint would do with pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "executed"))


@pytest.fixture
def trained(tiny):
    """A finished tiny run (its checkpoint is what the tests craft from) and its overrides."""
    overrides = tiny()
    result = run(compose_config(overrides))
    return result, overrides


def test_a_crafted_pickle_is_refused_and_not_executed(tmp_path, trained):
    result, overrides = trained
    marker = tmp_path / "pwned.txt"
    crafted = tmp_path / "crafted.pt"
    state = torch.load(result.checkpoint, weights_only=True)
    state["model"] = Payload(str(marker))
    torch.save(state, crafted)
    with pytest.raises(ConfigError, match="not a loadable ess-train checkpoint"):
        analyze_run(str(crafted))
    with pytest.raises(ConfigError, match="not a loadable ess-train checkpoint") as refused:
        run(compose_config([*overrides, f"trainer.resume={crafted}"]))
    assert not marker.exists()
    message = str(refused.value)
    assert message.startswith(f"trainer.resume={crafted} ") and "weights_only=False" not in message
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 4096)
    with pytest.raises(ConfigError, match=r"garbage.pt is not an ess-train checkpoint \(not a torch.save archive\)"):
        analyze_run(str(garbage))


def test_a_crafted_target_is_refused_and_nothing_is_called(tmp_path, trained):
    result, overrides = trained
    source, copy = tmp_path / "source.txt", tmp_path / "copy.txt"
    source.write_text("data")
    state = torch.load(result.checkpoint, weights_only=True)
    state["config"]["model"] = {"_target_": "shutil.copyfile", "src": str(source), "dst": str(copy)}
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    with pytest.raises(ConfigError, match="model._target_='shutil.copyfile' is not one of ess-reg's models"):
        analyze_run(str(crafted))
    with pytest.raises(ConfigError, match=r"names model._target_='shutil.copyfile', which none of ess-reg's configs"):
        run(compose_config([*overrides, f"trainer.resume={crafted}"]))  # the run would go on under its stored config
    # also below the top of the config: only plain data is passed on
    state["config"]["model"] = {**torch.load(result.checkpoint, weights_only=True)["config"]["model"],
                                "mixer_kwargs": {"_target_": "shutil.copyfile", "src": str(source), "dst": str(copy)}}
    torch.save(state, crafted)
    with pytest.raises(ConfigError, match="may not name a class"):
        analyze_run(str(crafted))
    with pytest.raises(ConfigError, match=r"model.mixer_kwargs._target_='shutil.copyfile'"):
        run(compose_config([*overrides, f"trainer.resume={crafted}"]))
    # A resumed run instantiates its stored optimizer: only targets ess-reg's configs name pass.
    state = torch.load(result.checkpoint, weights_only=True)
    state["config"]["optimizer"] = {"_target_": "shutil.copyfile", "_partial_": True, "src": str(source),
                                    "dst": str(copy)}
    torch.save(state, crafted)
    with pytest.raises(ConfigError, match=r"optimizer._target_='shutil.copyfile'"):
        run(compose_config([*overrides, f"trainer.resume={crafted}"]))
    assert not copy.exists()


@pytest.mark.parametrize("field, value, message", [
    ("rng", torch.zeros(3), "its rng must be a 1-d uint8 tensor"),
    ("step", "abc", "its step must be an int >= 0, got 'abc'"),
    ("config", ["not", "a", "mapping"], "its config must be a mapping, got list"),
    ("run_id", 7, "its run_id must be a string, got int"),
    ("penalty", {"random": torch.zeros(7, dtype=torch.uint8)}, "its penalty's random state must be a CPU generator's"),
])
def test_a_malformed_field_is_refused_before_anything_is_reopened(tmp_path, trained, store, field, value, message):
    from mlflow.tracking import MlflowClient

    result, overrides = trained
    state = torch.load(result.checkpoint, weights_only=True)
    state[field] = value
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    with pytest.raises(ConfigError, match=message):
        analyze_run(str(crafted))
    with pytest.raises(ConfigError, match=message):
        run(compose_config([*overrides, f"trainer.resume={crafted}"]))
    assert MlflowClient(store["uri"]).get_run(result.run_id).info.status == "FINISHED"  # not reopened


def test_a_small_file_whose_config_asks_for_a_huge_model_is_refused_without_building_it(tmp_path, trained):
    result, overrides = trained
    state = torch.load(result.checkpoint, weights_only=True)
    state["config"]["model"] = {**state["config"]["model"], "d_model": 200000, "n_layers": 64}
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    with pytest.raises(ConfigError, match=r"the weights do not fit the model its config builds \(.* missing.*"
                                          r"of another shape, e\.g\. .*200000\] in the model"):
        analyze_run(str(crafted))
    with pytest.raises(ConfigError, match="the weights do not fit the model its config builds"):
        run(compose_config([*overrides, f"trainer.resume={crafted}"]))


def test_a_run_id_whose_checkpoint_belongs_to_another_run_is_refused(store, tiny):
    first = run(compose_config(tiny()))
    second = run(compose_config(tiny("seed=1")))
    # run two's checkpoint folder now holds run one's file
    (store["dir"] / "ckpt" / second.run_id / "last.pt").write_bytes(first.checkpoint.read_bytes())
    with pytest.raises(ConfigError, match=f"belongs to run {first.run_id}; refusing to continue another run"):
        run(compose_config(tiny(f"trainer.resume={second.run_id}", "trainer.max_steps=8")))


def test_a_run_id_against_a_server_that_does_not_answer_is_refused_in_seconds(tmp_path, capsys):
    from ess_reg.harness.ess_analyze import main as analyze_main

    code = analyze_main(["0123456789abcdef0123456789abcdef", "--tracking-uri", "http://127.0.0.1:9",
                         "--checkpoint-root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "is not a local checkpoint, and tracking.uri=http://127.0.0.1:9: no tracking server answers" in err
