"""The ESS contract (ess_reg.contract): a custom layer measured through it, operators handed
over without attributes on the layer, and deferred operators narrowed in one place."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import ess_reg
from ess_reg.contract import capturing
from ess_reg.probe import capture_operators

from factories import lm, tokens


LIBRARY = Path(__file__).resolve().parents[2] / "docs" / "library.md"


def docs_example():
    """The custom layer of docs/library.md, as written there (the docs cannot drift from the contract)."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", LIBRARY.read_text(), re.S) if "class Smoother" in b)
    namespace = {}
    exec(compile(block, "docs/library.md", "exec"), namespace)
    return namespace["Smoother"]


class Smoother(docs_example()):
    """The docs' layer, counting its operator builds."""

    calls = 0

    def operator(self, x):
        self.calls += 1
        return super().operator(x)


def test_a_custom_layer_is_measured_through_the_contract_with_its_handed_over_operator():
    torch.manual_seed(0)
    layer = Smoother(3).double()
    assert isinstance(layer, ess_reg.ESSLayer) and not isinstance(nn.Linear(2, 2), ess_reg.ESSLayer)
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    op = layer.operator(x)  # T(u) u == forward(u): the operator is what the layer applies
    expected = (op.materialize() @ x.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
    assert torch.allclose(layer(x), expected, atol=1e-12)
    layer.calls = 0
    reports = ess_reg.measure(layer, x, kind="tolerance")
    assert layer.calls == 1  # the forward's own operator, never built a second time
    values = reports[""].ess.values
    assert torch.allclose(values, torch.ones_like(values))  # tolerance-ESS of a rank-1 Hankel block: 1
    fresh = Smoother(3)
    fresh.calls = 0
    assert not capturing(layer) and set(vars(layer)) == set(vars(fresh))  # nothing left behind


def test_two_captures_at_once_both_receive_and_a_forward_outside_hands_over_nothing():
    layer = Smoother(2)
    x = torch.randn(1, 6, 2)
    with capture_operators(layer) as outer:
        with capture_operators(layer) as inner:
            layer(x)
        assert capturing(layer)  # the outer capture still listens
    assert outer.handed[""] is inner.handed[""]
    before = dict(outer.handed)
    layer(x)
    assert outer.handed == before and not capturing(layer)


def test_s6_hands_over_a_deferred_operator_that_narrows_like_the_full_one():
    model = lm("s6", vocab_size=16, d_model=8, d_state=4).double()
    x = tokens(batch=3, length=10, vocab_size=16)
    mixer = model.blocks[0].mixer
    with capture_operators(model) as capture:
        model(x)
    deferred = capture.handed["blocks.0.mixer"]
    assert isinstance(deferred, ess_reg.DeferredOperator) and deferred.batch_shape == (3, mixer.d_inner)
    full = mixer.operator(capture.inputs["blocks.0.mixer"])
    channels = torch.tensor([5, 0, 9])
    narrowed = deferred.batch_head(2).index_batch(1, channels).index_batch(1, torch.tensor([2, 0]))
    assert narrowed.batch_shape == (2, 2)
    reference = full.batch_head(2).index_batch(1, channels[[2, 0]])
    assert torch.allclose(narrowed.resolve().materialize(), reference.materialize(), atol=1e-12)
    ops = capture.operators(batch_limit=2, pick_channels=lambda name, n: channels)
    assert torch.allclose(ops["blocks.0.mixer"].materialize(),
                          full.batch_head(2).index_batch(1, channels).materialize(),
                          atol=1e-12)
    with pytest.raises(ValueError, match="channel dim"):
        deferred.index_batch(0, [0])
