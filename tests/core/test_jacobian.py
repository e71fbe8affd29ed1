"""Jacobian ESS: any causal module through its local linearization (ess_reg.jacobian)."""

import pytest
import torch
from torch import nn

import ess_reg
from ess_reg.jacobian import input_output_jacobian, jacobian_ess

from factories import random_state_space


class LinearRecurrence(nn.Module):
    """y = T u per channel for a fixed state-space operator T of batch shape (1, D)."""

    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, u):  # (1, L, D)
        return self.op.apply(u.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)


def test_jacobian_ess_of_a_linear_recurrence_equals_its_state_space_ess():
    torch.manual_seed(0)
    op = random_state_space((1, 1), 12, 3)
    module = LinearRecurrence(op)
    u = torch.randn(1, 12, 1, dtype=torch.float64)
    assert torch.allclose(input_output_jacobian(module, u)[0, :, 0, :, 0], op.materialize()[0, 0], atol=1e-12)
    for kind in ("tolerance", "entropy"):
        via_jacobian = jacobian_ess(module, u, kind=kind).values[0, 0]
        direct = ess_reg.layer_ess({"op": op}, kind).get("op").values[0, 0]
        assert torch.allclose(via_jacobian, direct, atol=1e-8), kind


def test_several_independent_channels_add_their_ranks():
    torch.manual_seed(1)
    op = random_state_space((1, 3), 10, 2, seed=1)
    u = torch.randn(1, 10, 3, dtype=torch.float64)
    absolute = {"tol": 1e-9, "relative": False}
    mimo = jacobian_ess(LinearRecurrence(op), u, ess_options=absolute).values[0, 0]
    per_channel = ess_reg.layer_ess({"op": op}, "tolerance", ess_options=absolute)["op"].values[0].sum(0)
    assert torch.equal(mimo, per_channel)


class GRULayer(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)

    def forward(self, x):
        return self.gru(x)[0]


def test_a_grus_tolerance_ess_is_bounded_by_its_hidden_size_and_reaches_it():
    torch.manual_seed(2)
    hidden = 3
    layer = GRULayer(4, hidden).double()
    x = torch.randn(2, 16, 4, dtype=torch.float64)
    ess = jacobian_ess(layer, x, kind="tolerance", ess_options={"tol": 1e-10}).values
    assert ess.shape == (2, 1, 15)
    assert ess.max() <= hidden  # everything from the past passes through h numbers
    assert ess[..., 4:12].min() == hidden  # and a random GRU uses all of them mid-sequence


def test_a_module_that_looks_ahead_is_refused():
    class LooksAhead(nn.Module):
        def forward(self, x):
            return x + torch.roll(x, -1, dims=1)

    with pytest.raises(ValueError, match="not causal"):
        jacobian_ess(LooksAhead(), torch.randn(1, 6, 2, dtype=torch.float64))


def test_entropy_jacobian_ess_has_gradients_for_the_modules_weights():
    torch.manual_seed(3)
    layer = GRULayer(2, 3).double()
    x = torch.randn(1, 8, 2, dtype=torch.float64)
    value = jacobian_ess(layer, x, [2, 4, 6], kind="entropy").values.mean()
    value.backward()
    grads = [p.grad for p in layer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_a_recurrent_layer_measured_through_its_jacobian_gets_its_reach_from_its_channels():
    from ess_reg.jacobian import jacobian_operator

    class MeasuredGRU(GRULayer):
        def operator(self, x):
            return jacobian_operator(self, x)

        def state_size(self):
            return self.gru.hidden_size

    torch.manual_seed(4)
    layer = MeasuredGRU(4, 3).double()
    report = ess_reg.measure(layer, torch.randn(2, 12, 4, dtype=torch.float64), kind="tolerance",
                             ess_options={"tol": 1e-10})[""]
    assert report.io_width == (4, 3)
    assert report.reach[0] == 3  # at i = 1 one input step of 4 channels can fill a state of 3
    assert report.utilization == pytest.approx(1.0)  # a random GRU uses its whole state
