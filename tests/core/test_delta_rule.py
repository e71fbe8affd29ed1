"""Delta-rule operators (DeltaNet, Gated DeltaNet, and with one gate per key channel Kimi's delta
attention): the fast spectra path against the dense one, the operator against the textbook
product of its transitions, and gradients."""

import pytest
import torch

import ess_reg
from ess_reg.operators import DeltaRuleOperator


def random_delta(batch=(2, 3), length=20, state=4, gate="moderate", seed=0, beta_scale=1.0, per_channel=False):
    g = torch.Generator().manual_seed(seed)
    K = torch.nn.functional.normalize(torch.randn(*batch, length, state, generator=g, dtype=torch.float64), dim=-1)
    Q = torch.randn(*batch, length, state, generator=g, dtype=torch.float64)
    beta = beta_scale * torch.rand(*batch, length, generator=g, dtype=torch.float64)
    scale = {"none": 0.0, "weak": 0.01, "moderate": 0.3, "strong": 8.0}[gate]
    gates = (*batch, length, state) if per_channel else (*batch, length)
    log_alpha = -scale * torch.rand(*gates, generator=g, dtype=torch.float64)
    return DeltaRuleOperator(log_alpha, beta, K, Q)


def textbook(op: DeltaRuleOperator) -> torch.Tensor:
    """T[i, j] = q_i^T A_i ... A_{j+1} beta_j k_j with A_t = (I - beta_t k_t k_t^T) diag(alpha_t) formed
    as matrices (alpha_t one gate, or one per key channel)."""
    log_alpha, beta, K, Q = (t.reshape(-1, *t.shape[-2:]) for t in op.factors())
    n, length, state = K.shape
    eye = torch.eye(state, dtype=K.dtype)
    gate = torch.diag_embed(log_alpha.exp().expand(n, length, state))  # (n, L, N, N)
    A = (eye - beta[..., None] * K[..., :, None] * K[..., None, :]) @ gate
    T = torch.zeros(n, length, length, dtype=K.dtype)
    for j in range(length):
        x = beta[:, j] * K[:, j]  # (n, N)
        for i in range(j, length):
            if i > j:
                x = (A[:, i] @ x[..., None])[..., 0]
            T[:, i, j] = (Q[:, i] * x).sum(-1)
    return T.reshape(*op.batch_shape, length, length)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("gate", ["none", "weak", "moderate", "strong"])
def test_the_operator_is_the_product_of_its_transitions(gate, per_channel):
    op = random_delta(gate=gate, length=12, per_channel=per_channel)
    T = textbook(op)
    assert torch.allclose(op.materialize(), T, atol=1e-12)
    v = torch.randn(2, 3, 12, 5, dtype=torch.float64)
    assert torch.allclose(op.apply(v), T @ v, atol=1e-12)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("gate", ["none", "weak", "moderate", "strong"])
def test_fast_spectra_equal_the_dense_ones(gate, per_channel):
    op = random_delta(gate=gate, length=40, state=6, seed=1, per_channel=per_channel)
    fast = ess_reg.hankel_svdvals(op)
    dense = ess_reg.hankel_svdvals(op, method="dense")
    assert fast.shape == (2, 3, 39, 6)
    assert torch.allclose(fast, dense[..., :6], atol=1e-6 * dense.abs().max())
    assert dense[..., 6:].abs().max() <= 1e-9 * dense.abs().max()  # rank <= N beyond: nothing missed
    some = torch.tensor([1, 7, 20, 38])
    assert torch.allclose(ess_reg.hankel_svdvals(op, some), fast[..., some - 1, :], atol=1e-10)


def test_reflections_at_the_edge_and_the_checks():
    # beta |k|^2 = 2: a reflection (eigenvalue -1), still no expansion; the spectra agree there too
    op = random_delta(length=16, beta_scale=2.0, seed=2)
    assert torch.allclose(ess_reg.hankel_svdvals(op), ess_reg.hankel_svdvals(op, method="dense")[..., :4], atol=1e-8)
    K = torch.ones(1, 5, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"beta \|k\|\^2 must be in \[0, 2\]"):
        DeltaRuleOperator(torch.zeros(1, 5, dtype=torch.float64), torch.full((1, 5), 1.5, dtype=torch.float64), K, K)
    with pytest.raises(ValueError, match="log_alpha must be <= 0"):
        DeltaRuleOperator(torch.full((1, 5), 0.1, dtype=torch.float64), torch.zeros(1, 5, dtype=torch.float64), K, K)
    with pytest.raises(ValueError, match="beta must be"):
        DeltaRuleOperator(torch.zeros(1, 5, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64), K, K)


def test_entropy_ess_of_the_fast_path_passes_gradcheck():
    op = random_delta(batch=(1, 1), length=8, state=3, seed=3)
    factors = [t.detach().clone().requires_grad_(True)
               for t in (op.log_alpha.squeeze(-1), op.beta.squeeze(-1), op.K, op.Q)]

    def ess(log_alpha, beta, K, Q):
        built = DeltaRuleOperator(log_alpha, beta, K, Q, check_values=False)
        return ess_reg.entropy_ess_from_svdvals(ess_reg.hankel_svdvals(built, [2, 4, 6]))

    assert torch.autograd.gradcheck(ess, factors, atol=1e-6)


def test_delta_rule_operators_are_probed_and_narrowed_like_any_operator():
    op = random_delta(length=10)
    head = op.batch_head(1).index_batch(1, [2, 0])
    assert head.batch_shape == (1, 2)
    assert torch.allclose(head.materialize(), op.materialize()[:1][:, [2, 0]])
    result = ess_reg.layer_ess({"delta": op}, "tolerance")["delta"]
    assert result.values.shape == (2, 3, 9) and result.values.max() <= 4


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("gate", ["none", "moderate", "strong"])
@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_the_chunked_delta_rule_equals_the_sequential_one(gate, chunk, per_channel):
    op = random_delta(gate=gate, length=21, seed=5, per_channel=per_channel)
    v = torch.randn(2, 3, 21, 4, dtype=torch.float64)
    assert torch.allclose(op.apply(v, chunk_size=chunk), op.apply(v, method="sequential"), atol=1e-12)


def test_the_chunked_delta_rule_has_the_sequential_gradients():
    op = random_delta(batch=(1, 2), length=10, seed=6)
    v = torch.randn(1, 2, 10, 3, dtype=torch.float64)
    grads = []
    for method in ("chunked", "sequential"):
        leaves = [t.detach().clone().requires_grad_(True)
                  for t in (op.log_alpha.squeeze(-1), op.beta.squeeze(-1), op.K)]
        built = DeltaRuleOperator(*leaves, op.Q, check_values=False)
        (built.apply(v, chunk_size=4, method=method) ** 2).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(*grads))


def test_gates_per_key_channel_are_not_one_gate():
    per_channel = random_delta(length=12, per_channel=True, gate="strong", seed=7)
    assert per_channel.log_alpha.shape == (2, 3, 12, 4)
    # the same gates, each channel's alpha set to the first channel's: one gate for the state
    shared = DeltaRuleOperator(per_channel.log_alpha[..., 0], per_channel.beta.squeeze(-1), per_channel.K,
                               per_channel.Q)
    assert not torch.allclose(per_channel.materialize(), shared.materialize())
    narrowed = per_channel.index_batch(1, torch.tensor([0, 2]))
    assert narrowed.log_alpha.shape == (2, 2, 12, 4)
    assert torch.allclose(narrowed.materialize(), per_channel.materialize()[:, [0, 2]])
    with pytest.raises(ValueError, match=r"or \(..., L, N\)"):
        DeltaRuleOperator(torch.zeros(2, 3, 12, 5, dtype=torch.float64), per_channel.beta.squeeze(-1),
                          per_channel.K, per_channel.Q)
