"""The Operator protocol every kind follows (ess_reg/operators/): what the rest of the core relies on."""

import pytest
import torch
from torch import nn

from ess_reg import hankel_svdvals
from ess_reg.jacobian import jacobian_operator
from ess_reg.matrix_free import BlockProducts, ExplicitBlocks
from ess_reg.operators import (DeltaRuleOperator, DenseOperator, DiagonalState, LinearizedOperator, Operator,
                               ToeplitzOperator, as_operator)

from factories import random_causal, random_state_space


def _delta_rule(seed=3, length=12, state=3):
    g = torch.Generator().manual_seed(seed)
    K = torch.nn.functional.normalize(torch.randn(2, length, state, generator=g, dtype=torch.float64), dim=-1)
    Q = torch.randn(2, length, state, generator=g, dtype=torch.float64)
    beta = torch.rand(2, length, generator=g, dtype=torch.float64)
    log_alpha = -0.3 * torch.rand(2, length, generator=g, dtype=torch.float64)
    return DeltaRuleOperator(log_alpha, beta, K, Q)


def _jacobian(length=10):
    conv = nn.Conv1d(2, 3, 4, padding=3).double()  # causal after trimming the right end
    torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(0))
    module = _Causal(conv)
    x = torch.randn(2, length, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return jacobian_operator(module, x), module, x


class _Causal(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):  # (B, L, D_in) -> (B, L, D_out)
        return self.conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)


def _toeplitz(length=12):
    g = torch.Generator().manual_seed(8)
    h, q, k = (torch.randn(*shape, length, generator=g, dtype=torch.float64) for shape in ((3,), (2, 3), (2, 3)))
    return ToeplitzOperator(h, q, k)


def _linearized():
    _, module, x = _jacobian()
    return LinearizedOperator(module, x)


KINDS = {
    "dense": lambda: DenseOperator(random_causal(2, 12, 12, seed=4)),
    "state_space": lambda: random_state_space((2,), 12, 3, "moderate", seed=5),
    "delta_rule": _delta_rule,
    "jacobian": lambda: _jacobian()[0],
    "toeplitz": _toeplitz,
    "linearized": _linearized,
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_follows_the_protocol(kind):
    op = KINDS[kind]()
    assert isinstance(op, Operator) and op.kind == kind
    assert as_operator(op) is op
    idx = torch.arange(1, op.seq_len)
    sigma = hankel_svdvals(op, idx)
    # No block has more nonzero singular values than max_rank says (shape, and state where finite).
    rank = (sigma > 1e-9 * sigma.amax()).sum(-1)
    assert bool((rank <= op.max_rank(idx)).all())
    assert sigma.shape[-1] == int(op.max_rank(idx).max())
    # Every method a kind lists gives the same spectra (the dense paths of a finite-state kind pad
    # to the shape's width: what lies past the state is round-off).
    width = sigma.shape[-1]
    for method in op.methods:
        other = hankel_svdvals(op, idx, method=method)
        torch.testing.assert_close(other[..., :width], sigma, atol=1e-9, rtol=1e-7)
        assert other.shape[-1] == width or float(other[..., width:].abs().max()) <= 1e-9 * float(sigma.max())


@pytest.mark.parametrize("kind", ["dense", "state_space", "delta_rule", "toeplitz"])
def test_apply_reference_equals_the_fast_apply(kind):
    op = KINDS[kind]()
    v = torch.randn(*op.batch_shape, op.seq_len, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(op.apply(v), op.apply_reference(v))


def test_a_linearized_module_applies_its_jacobian():
    op = KINDS["linearized"]()
    v = torch.randn(*op.x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(op.apply(v), op.apply_reference(v))


@pytest.mark.parametrize("kind", ["dense", "toeplitz", "linearized"])
def test_block_products_are_products_with_the_hankel_blocks(kind):
    op = KINDS[kind]()
    assert isinstance(op, BlockProducts)
    d_in, d_out = op.io_width
    g = torch.Generator().manual_seed(9)
    for i in (1, op.seq_len // 2, op.seq_len - 1):
        block = (op.jacobian().hankel_block(i).unsqueeze(1) if kind == "linearized"
                 else op.materialize()[..., i:, :i])
        X = torch.randn(*op.batch_shape, i * d_in, 3, generator=g, dtype=torch.float64)
        Y = torch.randn(*op.batch_shape, (op.seq_len - i) * d_out, 3, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.block_apply(i, X), block @ X)
        torch.testing.assert_close(op.block_apply_transpose(i, Y), block.mT @ Y)
        frob = op.block_frobenius_sq(i, torch.float64)
        assert frob is None if kind == "linearized" else torch.allclose(frob, block.square().sum((-1, -2)))


@pytest.mark.parametrize("kind", ["dense", "toeplitz"])
def test_explicit_blocks_are_the_hankel_blocks_of_t(kind):
    op = KINDS[kind]()
    assert isinstance(op, ExplicitBlocks)
    T = op.materialize().reshape(-1, op.seq_len, op.seq_len)  # the flattened batch
    for i in range(1, op.seq_len):
        block = op.block_matrix(i, torch.float32, slice(None))
        assert block.dtype == torch.float32 and block.shape == T[:, i:, :i].shape
        torch.testing.assert_close(op.block_matrix(i, torch.float64, slice(None)), T[:, i:, :i], rtol=0, atol=1e-15)
        torch.testing.assert_close(op.block_matrix(i, torch.float64, slice(1, 2)), T[1:2, i:, :i], rtol=0, atol=1e-15)
    T = op.materialize().clone()
    block = op.block_matrix(3, torch.float64, slice(None))
    block.zero_()  # a new tensor: writing to it leaves the operator as it was
    torch.testing.assert_close(op.materialize(), T)
    assert not any(isinstance(KINDS[other](), ExplicitBlocks) for other in ("state_space", "delta_rule", "linearized"))


def test_explicit_blocks_of_a_t_whose_batch_does_not_flatten_as_a_view():
    T = random_causal(6, 12, 12, seed=4).reshape(2, 3, 12, 12).transpose(0, 1)  # batch (3, 2), not viewable
    op, flat = DenseOperator(T), T.reshape(-1, 12, 12)
    for items in (slice(None), slice(1, 4), slice(5, 6)):
        torch.testing.assert_close(op.block_matrix(5, torch.float64, items), flat[items, 5:, :5], rtol=0, atol=0)


def test_jacobian_apply_is_the_linear_module():
    op, module, x = _jacobian()
    # A linear module's Jacobian is its operator: applied to any input it gives the module's output.
    v = torch.randn_like(x)
    torch.testing.assert_close(op.apply(v), module(v) - module(torch.zeros_like(v)))
    assert op.io_width == (2, 3)
    assert op.max_rank(torch.tensor([1, 5, 9])).tolist() == [2, 10, 3]  # min(2 i, 3 (L - i))
    with pytest.raises(ValueError, match="v must have shape"):
        op.apply(v[:, :, :1])


def test_only_finite_state_kinds_take_the_state_space_path():
    with pytest.raises(ValueError, match="needs a StateSpaceOperator"):
        hankel_svdvals(KINDS["jacobian"](), method="state_space")


def test_diagonal_state_is_the_state_space_kind_only():
    assert [k for k, make in KINDS.items() if isinstance(make(), DiagonalState)] == ["state_space"]


class _Scaled:
    """A kind of the user's own: twice a dense operator, following the protocol by delegation."""

    kind, methods, multiplicity, io_width, state_size = "scaled", ("dense",), 1, (1, 1), None

    def __init__(self, T):
        self.inner = DenseOperator(2 * T)
        self.seq_len, self.batch_shape, self.dtype, self.device = (
            self.inner.seq_len, self.inner.batch_shape, self.inner.dtype, self.inner.device)

    def __getattr__(self, name):  # max_rank, svdvals, value_tensors, apply, ...
        return getattr(self.inner, name)


def test_a_kind_of_the_users_own_is_measured_through_the_protocol():
    T = random_causal(2, 9, 9, seed=7)
    mine = _Scaled(T)
    assert isinstance(mine, Operator)
    torch.testing.assert_close(hankel_svdvals(mine), 2 * hankel_svdvals(T))
    with pytest.raises(ValueError, match="does not apply to a scaled operator"):
        hankel_svdvals(mine, method="loop")
