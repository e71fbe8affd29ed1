"""``model.state_size``, the one config key that sizes every mixer's state, through the harness."""

import pytest

from ess_reg.harness.build import ConfigError
from ess_reg.harness.ess_train import compose_config, prepare
from ess_reg.models import state_kwargs


@pytest.mark.parametrize("model", ["la", "gla", "s6", "s4d", "swa"])
def test_one_config_key_sizes_every_mixer_and_the_logged_config_says_so(model):
    plan = prepare(compose_config([f"model={model}", "model.state_size=6", "experiment=tiny"]))
    assert {m.state_size() for m in plan.model.mixers().values()} == {6}
    knob = state_kwargs(model, 6)
    assert knob.items() <= plan.config["model"]["mixer_kwargs"].items()  # the preset's own value replaced


def test_a_state_size_for_attention_stops_the_run_before_it_starts():
    with pytest.raises(ConfigError, match="model.state_size: SoftmaxAttention's state grows"):
        prepare(compose_config(["model=sa", "model.state_size=6", "experiment=tiny"]))
