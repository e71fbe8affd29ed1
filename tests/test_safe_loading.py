"""A checkpoint is data: nothing in it is executed, imported or called."""

import pathlib

import pytest
import torch

from ess_reg.harness.analyze import analyze
from ess_reg.harness.build import ConfigError
from ess_reg.harness.app import compose_config, run


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
        analyze(str(crafted))
    with pytest.raises(ConfigError, match="not a loadable ess-train checkpoint"):
        run(compose_config([*overrides, f"trainer.resume={crafted}"]))
    assert not marker.exists()


def test_a_crafted_target_is_refused_and_nothing_is_called(tmp_path, trained):
    result, overrides = trained
    source, copy = tmp_path / "source.txt", tmp_path / "copy.txt"
    source.write_text("data")
    state = torch.load(result.checkpoint, weights_only=True)
    state["config"]["model"] = {"_target_": "shutil.copyfile", "src": str(source), "dst": str(copy)}
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    with pytest.raises(ConfigError, match="model._target_='shutil.copyfile' is not one of ess-reg's models"):
        analyze(str(crafted))
    with pytest.raises(ConfigError, match=r"names model._target_='shutil.copyfile', which none of ess-reg's configs"):
        run(compose_config([*overrides, f"trainer.resume={crafted}"]))  # the run would go on under its stored config
    # also below the top of the config: only plain data is passed on
    state["config"]["model"] = {**torch.load(result.checkpoint, weights_only=True)["config"]["model"],
                                "mixer_kwargs": {"_target_": "shutil.copyfile", "src": str(source), "dst": str(copy)}}
    torch.save(state, crafted)
    with pytest.raises(ConfigError, match="may not name a class"):
        analyze(str(crafted))
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
