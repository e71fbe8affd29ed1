import pytest
import torch

from ess_reg import (
    DenseOperator,
    StateSpaceOperator,
    average_ess,
    entropy_ess,
    entropy_ess_from_svdvals,
    hankel_svdvals,
    layer_ess,
    soft_tolerance_ess,
    soft_tolerance_ess_from_svdvals,
    tolerance_ess,
    tolerance_ess_from_svdvals,
    total_ess,
)

from factories import DECAY_REGIMES, random_causal, random_state_space


def lti_toeplitz(decays, weights, length):
    """T[i, j] = h[i - j], h[k] = sum_n w_n a_n^k: an order-N LTI system, built directly."""
    k = torch.arange(length, dtype=torch.float64)
    h = (weights * decays ** k[:, None]).sum(-1)
    i, j = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    return torch.where(i >= j, h[(i - j).clamp(min=0)], torch.zeros(()))


def shift(length, k):
    return torch.diag(torch.ones(length - k, dtype=torch.float64), -k)


# ---- operators of known rank -----------------------------------------------------------

def test_lti_order_n_has_tolerance_ess_n_inside():
    L, N = 32, 4
    decays = torch.tensor([0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    T = lti_toeplitz(decays, torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64), L)
    ess = tolerance_ess(T, tol=1e-8)
    idx = torch.arange(1, L)
    expected = torch.minimum(torch.minimum(idx, L - idx), torch.tensor(N)).to(ess.dtype)
    assert torch.equal(ess, expected)
    assert torch.all(ess[N - 1 : L - N] == N)
    # The same system as a StateSpaceOperator (fast path) gives the same count.
    op = StateSpaceOperator(decays.log().expand(L, N), torch.ones(L, N, dtype=torch.float64),
                            torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64).expand(L, N))
    assert torch.allclose(op.materialize(), T, atol=1e-14)
    assert torch.equal(tolerance_ess(op, tol=1e-8), expected)


@pytest.mark.parametrize("k", [1, 3])
def test_shift_operator_has_ess_min_k_i_L_minus_i(k):
    # A delay line of length k: every nonzero singular value of H_i is 1, so both ESS are its rank.
    L = 16
    T = shift(L, k)
    idx = torch.arange(1, L)
    rank = torch.minimum(torch.minimum(idx, L - idx), torch.tensor(k)).to(torch.float64)
    assert torch.equal(tolerance_ess(T), rank)
    assert torch.allclose(entropy_ess(T), rank, rtol=1e-9)


def test_identity_feedthrough_has_zero_ess():
    # A diagonal (feed-through D u_i) stores nothing: every H_i is zero.
    T = torch.diag(torch.arange(1.0, 9.0, dtype=torch.float64))
    assert torch.equal(entropy_ess(T), torch.zeros(7, dtype=torch.float64))
    assert torch.equal(tolerance_ess(T), torch.zeros(7, dtype=torch.float64))


def test_rank_one_blocks_have_entropy_ess_one():
    # A scalar decaying recurrence (N = 1): T[i, j] = c_i a^(i-j) b_j, every H_i has rank 1.
    L = 20
    g = torch.Generator().manual_seed(0)
    op = StateSpaceOperator(torch.full((L, 1), -0.3, dtype=torch.float64),
                            torch.randn(L, 1, generator=g, dtype=torch.float64),
                            torch.randn(L, 1, generator=g, dtype=torch.float64))
    for method in ("state_space", "dense"):
        assert torch.allclose(entropy_ess(op, method=method), torch.ones(L - 1, dtype=torch.float64), rtol=1e-9)


def test_equal_singular_values_give_their_count():
    sigma = torch.tensor([[2.0, 2.0, 2.0, 0.0], [5.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(entropy_ess_from_svdvals(sigma), torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64))
    assert torch.equal(tolerance_ess_from_svdvals(sigma), torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64))


def test_entropy_ess_is_scale_free_and_bounded_by_rank():
    T = random_causal(3, 24, 24, seed=0)
    ess = entropy_ess(T)
    assert torch.allclose(entropy_ess(1e-8 * T), ess, rtol=1e-9)
    assert torch.allclose(entropy_ess(1e8 * T), ess, rtol=1e-9)
    assert torch.all(ess <= tolerance_ess(T, tol=1e-12) + 1e-9)
    assert torch.all(ess >= 1 - 1e-9)


def test_smoothing_moves_values_by_less_than_1e_6():
    torch.manual_seed(1)
    sigma = torch.rand(50, 16, dtype=torch.float64) + 1e-3
    p = sigma / sigma.sum(-1, keepdim=True)
    exact = torch.exp(-(p * p.log()).sum(-1))
    assert torch.allclose(entropy_ess_from_svdvals(sigma), exact, rtol=1e-6, atol=0)
    assert not torch.equal(entropy_ess_from_svdvals(sigma, eps=1e-2), entropy_ess_from_svdvals(sigma))


# ---- zero operator, gradients --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dense", "state_space"])
def test_zero_operator_gives_zero_with_finite_gradients(kind):
    L, N = 10, 3
    shape = (2, L, L) if kind == "dense" else (2, L, N)
    leaf = torch.zeros(*shape, dtype=torch.float64, requires_grad=True)

    def operator():
        return torch.tril(leaf) if kind == "dense" else StateSpaceOperator(-leaf.abs() - 0.1, leaf, leaf)

    for fn in (entropy_ess, soft_tolerance_ess):
        leaf.grad = None
        ess = fn(operator())
        assert torch.equal(ess, torch.zeros_like(ess))
        ess.sum().backward()
        assert torch.isfinite(leaf.grad).all()
    x = operator()
    assert torch.equal(tolerance_ess(x), torch.zeros(2, L - 1, dtype=torch.float64))


def test_rank_deficient_gradients_are_finite_on_both_paths():
    L, N = 12, 4
    g = torch.Generator().manual_seed(2)
    b = torch.randn(L, 1, generator=g, dtype=torch.float64).expand(L, N).clone().requires_grad_()
    c = torch.randn(L, N, generator=g, dtype=torch.float64, requires_grad=True)
    log_decay = torch.full((L, N), -0.2, dtype=torch.float64)  # equal modes + rank-1 input: rank 1
    for method in ("state_space", "dense"):
        b.grad = c.grad = None
        ess = entropy_ess(StateSpaceOperator(log_decay, b, c), method=method)
        assert torch.allclose(ess, torch.ones_like(ess), rtol=1e-9)
        ess.sum().backward()
        assert torch.isfinite(b.grad).all() and torch.isfinite(c.grad).all()


def test_gradcheck_entropy_ess_wrt_T():
    torch.manual_seed(3)
    T = torch.randn(2, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: entropy_ess(torch.tril(t)), (T,))
    assert torch.autograd.gradcheck(lambda t: soft_tolerance_ess(torch.tril(t), tol=0.1), (T,))


@pytest.mark.parametrize("method", ["state_space", "dense"])
def test_gradcheck_entropy_ess_wrt_state_space_factors(method):
    g = torch.Generator().manual_seed(4)
    L, N = 9, 3
    raw = torch.randn(2, L, N, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(2, L, N, generator=g, dtype=torch.float64, requires_grad=True)
    C = torch.randn(2, L, N, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(raw, B, C):
        log_decay = torch.nn.functional.logsigmoid(raw)  # <= 0, as a gated model makes it
        return entropy_ess(StateSpaceOperator(log_decay, B, C), method=method, chunk_size=4)

    assert torch.autograd.gradcheck(fn, (raw, B, C))


# ---- fast path == dense path ---------------------------------------------------------------

@pytest.mark.parametrize("regime", sorted(DECAY_REGIMES))
def test_fast_path_equals_dense_path(regime):
    op = random_state_space((2, 4), 48, 6, regime, seed=7)
    T = op.materialize()
    fast = entropy_ess(op)
    dense = entropy_ess(T, method="loop")
    assert (fast - dense).abs().max() <= 1e-6
    tol = 1e-3
    fast_count, dense_count = tolerance_ess(op, tol=tol), tolerance_ess(T, tol=tol)
    # Away from ties: blocks where no singular value sits within 1e-6 (relative) of the threshold.
    sigma = hankel_svdvals(T, method="loop")
    ratio = sigma / sigma.amax(-1, keepdim=True)
    clear = ((ratio / tol - 1).abs() > 1e-6).all(-1)
    assert clear.float().mean() > 0.9
    assert torch.equal(fast_count[clear], dense_count[clear])


def test_float32_fast_path_is_close_to_float64():
    op64 = random_state_space((3,), 64, 8, "mixed", seed=8)
    op32 = StateSpaceOperator(*(t.float() for t in (op64.log_decay, op64.B, op64.C)))
    assert torch.allclose(entropy_ess(op32).double(), entropy_ess(op64), rtol=1e-4)


# ---- tolerance and its surrogate ------------------------------------------------------------

def test_absolute_tolerance():
    sigma = torch.tensor([[3.0, 0.5, 0.01]])
    assert tolerance_ess_from_svdvals(sigma, tol=0.1, relative=False).item() == 2
    assert tolerance_ess_from_svdvals(sigma, tol=0.1, relative=True).item() == 2  # 0.5 / 3 > 0.1
    assert tolerance_ess_from_svdvals(sigma, tol=0.2, relative=True).item() == 1


def test_soft_tolerance_tends_to_count():
    torch.manual_seed(5)
    sigma = torch.rand(100, 12, dtype=torch.float64) ** 4
    hard = tolerance_ess_from_svdvals(sigma, tol=0.05)
    soft = soft_tolerance_ess_from_svdvals(sigma, tol=0.05, temperature=1e-4)
    ratio = sigma / sigma.amax(-1, keepdim=True)
    clear = ((ratio / 0.05).log().abs() > 0.01).all(-1)
    assert torch.allclose(soft[clear], hard[clear], atol=1e-6)
    # At the default temperature it is smooth but still close to the count.
    assert (soft_tolerance_ess_from_svdvals(sigma, tol=0.05) - hard).abs().mean() < 1.0


def test_bad_tolerances_and_temperatures():
    T = random_causal(6, 6, dtype=torch.float32)
    for bad in (0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tol must be a positive finite number"):
            tolerance_ess(T, tol=bad)
    with pytest.raises(ValueError, match="relative tol=1.5 >= 1"):
        tolerance_ess(T, tol=1.5)
    assert tolerance_ess(T, tol=1.5, relative=False).shape == (5,)
    with pytest.raises(ValueError, match="temperature"):
        soft_tolerance_ess(T, temperature=0.0)
    with pytest.raises(ValueError, match="NaN/Inf"):
        entropy_ess_from_svdvals(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match=">= 0"):
        entropy_ess_from_svdvals(torch.tensor([-1.0]))
    with pytest.raises(ValueError, match=r"1\.\.L-1"):
        entropy_ess(T, indices=[6])


# ---- aggregation ----------------------------------------------------------------------------

def test_average_and_total():
    ess = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])  # (batch=1, channels=2, indices=2)
    assert torch.equal(average_ess(ess), torch.tensor([[2.0, 2.0]]))
    assert torch.equal(total_ess(ess), torch.tensor([[3.0, 5.0]]))
    assert torch.equal(total_ess(ess, multiplicity=4), torch.tensor([[12.0, 20.0]]))


def test_layer_ess_counts_multiplicity_and_matches_direct_call():
    ops = {
        "gla": random_state_space((2, 3), 16, 4, seed=9, multiplicity=8),
        "shift": DenseOperator(shift(16, 2).expand(2, 5, 16, 16)),
    }
    report = layer_ess(ops, indices=[4, 8, 12])
    gla, sh = report["gla"], report["shift"]
    assert gla.values.shape == (2, 3, 3) and gla.multiplicity == 8
    direct = entropy_ess(ops["gla"], [4, 8, 12])
    assert torch.allclose(gla.values, direct)
    assert torch.allclose(gla.total, 8 * direct.sum(1).mean())
    assert torch.allclose(sh.total, torch.tensor(5 * 2.0, dtype=torch.float64))
    assert torch.allclose(sh.average, torch.tensor(2.0, dtype=torch.float64))
    assert sh.total_per_index.shape == (3,)
    tol = layer_ess(ops, kind="tolerance", ess_options={"tol": 0.5})
    assert torch.all(tol["shift"].values[..., 1:-1] == 2)
    with pytest.raises(ValueError, match="unknown ESS kind"):
        layer_ess(ops, kind="renyi")
    with pytest.raises(ValueError, match="no ESS-capable layer"):
        layer_ess({})
