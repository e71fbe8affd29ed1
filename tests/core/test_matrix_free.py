"""The certified matrix-free ESS: every interval contains the exact ESS, and narrows to it when
the basis spans the block's range."""

import pytest
import torch

from ess_reg import StateSpaceOperator, certified_ess, entropy_ess, tolerance_ess
from ess_reg.certificate import entropy_ess_bounds, tolerance_ess_bounds
from ess_reg.ess import entropy_ess_from_svdvals, tolerance_ess_from_svdvals
from ess_reg.operators import as_operator

L = 160
INDICES = [3, 40, 80, 120, 157]


def causal_with_spectrum(values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``tril(U diag(values) V^T)`` for random orthogonal ``U, V``: blocks whose spectra decay
    like ``values`` (the triangle cuts them, so the blocks' own spectra are not ``values``)."""
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(L, L, dtype=torch.float64, generator=gen)).Q
    V = torch.linalg.qr(torch.randn(L, L, dtype=torch.float64, generator=gen)).Q
    return torch.tril((U * values) @ V.T)


SPECTRA = {
    "rank 5": torch.cat([torch.linspace(3, 1, 5), torch.zeros(L - 5)]).double(),
    "fast decay": 0.6 ** torch.arange(L, dtype=torch.float64),
    "slow decay": 0.98 ** torch.arange(L, dtype=torch.float64),
    "flat": torch.ones(L, dtype=torch.float64),
}


def low_rank_causal(rank: int, heads: int = 2, seed: int = 0) -> torch.Tensor:
    """``tril(Q K^T)``: a linear-attention operator, every block of rank <= ``rank``."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(heads, L, rank, dtype=torch.float64, generator=gen) for _ in range(2))
    return torch.tril(q @ k.mT)


@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("kind", ["entropy", "tolerance"])
def test_the_interval_contains_the_exact_ess(spectrum, kind):
    T = causal_with_spectrum(SPECTRA[spectrum])
    exact = entropy_ess(T, INDICES) if kind == "entropy" else tolerance_ess(T, indices=INDICES)
    # A small block and a loose rtol: the Krylov path answers, not the exact fallback.
    result = certified_ess(T, INDICES, measure=kind, rtol=0.05, block_size=4, max_fraction=1.0, min_size=0)
    assert torch.all(result.lower <= exact + 1e-9) and torch.all(exact <= result.upper + 1e-9)
    if kind == "entropy":
        assert torch.all((result.value - exact).abs() <= 0.05 * exact + 1e-9)
    assert "krylov" in result.path


def test_the_interval_narrows_to_the_exact_value_when_the_basis_spans_the_range():
    T = low_rank_causal(6)
    result = certified_ess(T, INDICES[1:-1], block_size=8, rtol=1e-4, min_size=0)
    exact = entropy_ess(T, INDICES[1:-1])
    assert result.path == ["krylov"] * 3 and result.rank == [8] * 3  # one block spans each range
    # What is left is the round-off allowance: a tail of about 1e-13 ||H||_F^2 spread over the
    # rank, a few 1e-5 of the ESS at these sizes.
    assert torch.allclose(result.lower, exact, rtol=1e-4) and torch.allclose(result.upper, exact, rtol=1e-4)
    assert torch.all(result.lower <= exact) and torch.all(exact <= result.upper)


def test_float32_operators_are_certified_in_float64():
    T = low_rank_causal(6).float()
    result = certified_ess(T, [80], block_size=8, min_size=0)
    assert result.value.dtype == torch.float64 and result.path == ["krylov"]
    exact = entropy_ess(T.double(), [80])
    assert torch.all(result.lower <= exact) and torch.all(exact <= result.upper)


def test_the_exact_path_of_a_float32_operator_runs_in_float64():
    # its interval is one value: that value must be the float64 ESS of the matrix given, not a
    # float32 SVD's (off by about 1e-6 here, which a zero-width interval would not admit)
    T = causal_with_spectrum(SPECTRA["slow decay"]).float()
    result = certified_ess(T, INDICES, gram=False)
    assert result.path == ["exact"] * len(INDICES)
    exact = entropy_ess(T.double(), INDICES)
    torch.testing.assert_close(result.value, exact, rtol=1e-12, atol=0)
    assert not torch.allclose(entropy_ess(T, INDICES).double(), exact, rtol=1e-9, atol=0)


def test_a_long_tail_falls_back_to_the_exact_path_and_says_so():
    T = causal_with_spectrum(SPECTRA["flat"])
    result = certified_ess(T, [80], rtol=1e-6, block_size=4, min_size=0, gram=False)
    assert result.path == ["exact"] and torch.equal(result.lower, result.upper)
    assert torch.allclose(result.value, entropy_ess(T, [80]))


@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("kind", ["entropy", "tolerance"])
def test_the_gramian_route_certifies_what_krylov_leaves(spectrum, kind):
    # a basis limit below one block: no index tries the basis, each takes the Gramian or the SVD
    T = causal_with_spectrum(SPECTRA[spectrum])
    result = certified_ess(T, INDICES, measure=kind, min_size=0, max_fraction=0.01)
    exact = entropy_ess(T, INDICES) if kind == "entropy" else tolerance_ess(T, indices=INDICES)
    assert set(result.path) <= {"gram", "exact"} and "gram" in result.path
    assert torch.all(result.lower <= exact + 1e-9) and torch.all(exact <= result.upper + 1e-9)
    if kind == "entropy":
        assert torch.all(result.half_width <= 1e-3 * result.lower)


def test_the_gramian_route_gives_way_to_the_svd_where_its_interval_is_too_wide():
    # squaring loses the small values' digits: no Gramian interval is as narrow as 1e-13
    T = causal_with_spectrum(SPECTRA["fast decay"])
    result = certified_ess(T, INDICES, rtol=1e-13, min_size=0, max_fraction=0.01)
    assert result.path == ["exact"] * len(INDICES)
    assert torch.allclose(result.value, entropy_ess(T, INDICES))
    assert certified_ess(T, INDICES, min_size=0, max_fraction=0.01, gram=False).path == ["exact"] * len(INDICES)
    assert certified_ess(T, INDICES).path == ["exact"] * len(INDICES)  # every block below min_size
    with pytest.raises(TypeError, match="gram must be True or False"):
        certified_ess(T, INDICES, gram=1)


def test_an_operator_without_block_products_is_measured_exactly():
    gen = torch.Generator().manual_seed(1)
    op = StateSpaceOperator(-torch.rand(3, 40, 4, generator=gen, dtype=torch.float64),
                            torch.randn(3, 40, 4, generator=gen, dtype=torch.float64),
                            torch.randn(3, 40, 4, generator=gen, dtype=torch.float64))
    result = certified_ess(op, [5, 20])
    assert result.path == ["exact", "exact"]
    assert torch.allclose(result.value, entropy_ess(op, [5, 20]))


def test_small_blocks_take_the_exact_path_unless_asked_otherwise():
    T = low_rank_causal(3)
    assert certified_ess(T, [80]).path == ["exact"]  # 80 x 80: below the default min_size
    assert certified_ess(T, [80], min_size=0).path == ["krylov"]


def test_the_same_seed_repeats_the_measurement():
    T = causal_with_spectrum(SPECTRA["fast decay"])
    a, b = (certified_ess(T, INDICES, block_size=4, seed=3, min_size=0) for _ in range(2))
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)


# ---- the certificate on its own: any lower bounds on the leading values, the exact F^2 ----------


def partial_knowledge(sigma: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading ``k`` values shrunk by random factors in (0.5, 1] (valid lower bounds), and F^2."""
    shrink = 0.5 + 0.5 * torch.rand(*sigma.shape[:-1], k, generator=gen, dtype=sigma.dtype)
    ritz = torch.sort(sigma[..., :k] * shrink, descending=True).values
    return ritz, sigma.square().sum(-1)


@pytest.mark.parametrize("k", [0, 1, 3, 8])
def test_the_certificate_holds_for_any_lower_bounds(k):
    gen = torch.Generator().manual_seed(k)
    r = 12
    scales = torch.rand(400, 1, generator=gen, dtype=torch.float64) * 3
    draws = torch.rand(400, r, generator=gen, dtype=torch.float64) ** (1 + 4 * scales)
    sigma = torch.sort(draws, descending=True).values
    sigma[:50, 6:] = 0  # rank-deficient blocks
    ritz, frob_sq = partial_knowledge(sigma, k, gen)
    lower, upper = entropy_ess_bounds(ritz, frob_sq, r)
    exact = entropy_ess_from_svdvals(sigma)
    assert torch.all(lower <= exact + 1e-12) and torch.all(exact <= upper + 1e-12)
    for relative, tol in ((True, 0.05), (False, 0.1)):
        lo, hi = tolerance_ess_bounds(ritz, frob_sq, r, tol, relative)
        count = tolerance_ess_from_svdvals(sigma, tol, relative)
        assert torch.all(lo <= count) and torch.all(count <= hi)


def test_the_certificate_is_a_point_when_everything_is_known():
    sigma = torch.tensor([[4.0, 2.0, 1.0, 0.5]], dtype=torch.float64)
    lower, upper = entropy_ess_bounds(sigma, sigma.square().sum(-1), 4)
    assert torch.allclose(lower, entropy_ess_from_svdvals(sigma)) and torch.allclose(upper, lower, rtol=1e-10)
    lo, hi = tolerance_ess_bounds(sigma, sigma.square().sum(-1), 4, tol=0.2)
    assert lo.item() == hi.item() == 3


@pytest.mark.parametrize("power", [1, 2])
def test_the_water_filling_level_is_the_smallest_that_reaches_the_target(power):
    # the certificate's level, found in closed form and settled by bisection: never short of the
    # target, and the same to an ulp of the scale as 100 halvings of the whole range; on values
    # with ties, zeros, several tail entries or none, targets already met or far away
    from ess_reg.certificate import _level, _total

    gen = torch.Generator().manual_seed(7)
    for trial in range(300):
        k = 1 + trial % 23
        scale = 10.0 ** (-9 + 12 * torch.rand((), generator=gen, dtype=torch.float64))
        values = torch.rand(3, k, generator=gen, dtype=torch.float64) * scale
        if trial % 4 == 0:
            values[:, : k // 2 + 1] = values[:, :1]  # ties
        if trial % 5 == 0:
            values[:, -1] = 0
        extra = torch.randint(0, 9, (3,), generator=gen).double() * (trial % 3 != 0)
        target = values.pow(power).sum(-1) * (0.5 + 2.5 * torch.rand(3, generator=gen, dtype=torch.float64))
        level = _level(values, extra, target, power)
        assert torch.all(_total(values, extra, level, power) >= target)
        lo = torch.zeros_like(target)
        hi = torch.maximum(target ** (1 / power), values.amax(-1))
        top = hi.clone()
        for _ in range(100):
            mid = (lo + hi) / 2
            short = _total(values, extra, mid, power) < target
            lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
        assert torch.all((level - hi).abs() <= 4 * torch.finfo(torch.float64).eps * top)


def test_a_zero_block_has_ess_zero():
    lower, upper = entropy_ess_bounds(torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), 5)
    assert lower.item() == upper.item() == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(measure="soft"), "unknown measure"),
    (dict(rtol=0), "rtol"),
    (dict(block_size=0), "block_size"),
    (dict(max_fraction=1.5), "max_fraction"),
    (dict(min_size=-1), "min_size"),
    (dict(measure="tolerance", tol=2.0), "counts nothing"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        certified_ess(low_rank_causal(2), [10], **kwargs)


# ---- a module linearized at its input: products by JVP / VJP, the Jacobian never formed ---------


class TinyGRU(torch.nn.Module):
    def __init__(self, d: int = 3, hidden: int = 4):
        super().__init__()
        self.rnn = torch.nn.GRU(d, hidden, batch_first=True)
        self.out = torch.nn.Linear(hidden, d)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


def linearized_gru(length: int = 20, hidden: int = 4):
    from ess_reg import jacobian_operator
    from ess_reg.operators import LinearizedOperator

    torch.manual_seed(0)
    module = TinyGRU(hidden=hidden).double()
    x = torch.randn(2, length, 3, dtype=torch.float64)
    return LinearizedOperator(module, x, state_size=hidden), jacobian_operator(module, x)


def test_block_products_of_a_linearized_module_are_its_jacobians_blocks():
    op, jacobian = linearized_gru()
    X = torch.randn(2, 1, 7 * 3, 5, dtype=torch.float64)
    Y = torch.randn(2, 1, 13 * 3, 5, dtype=torch.float64)
    block = jacobian.hankel_block(7).unsqueeze(1)  # (B, 1, (L - i) D_out, i D_in)
    assert torch.allclose(op.block_apply(7, X), block @ X, atol=1e-12)
    assert torch.allclose(op.block_apply_transpose(7, Y), block.mT @ Y, atol=1e-12)
    v = torch.randn(2, 20, 3, dtype=torch.float64)
    assert torch.allclose(op.apply(v), jacobian.apply(v), atol=1e-12)


def test_a_recurrence_is_certified_exactly_once_the_basis_reaches_its_state_size():
    op, jacobian = linearized_gru(hidden=4)
    result = certified_ess(op, [2, 8, 15], block_size=2)
    assert result.path == ["krylov"] * 3 and result.rank == [4, 4, 4]  # rank <= state size, reached
    exact = entropy_ess(jacobian, [2, 8, 15])
    assert torch.all(result.lower <= exact) and torch.all(exact <= result.upper)
    assert torch.allclose(result.value, exact, rtol=1e-9)
    count = certified_ess(op, [8], measure="tolerance", block_size=2)
    assert torch.equal(count.value, tolerance_ess(jacobian, indices=[8]))


# ---- a gated convolution: products by FFT, ||H_i||_F by one more convolution -------------------


def test_a_gated_convolution_is_certified_without_forming_t():
    from ess_reg import ToeplitzOperator

    g = torch.Generator().manual_seed(4)
    lags = torch.arange(L, dtype=torch.float64)
    h = torch.stack([torch.exp(-lags / 30) * torch.cos(lags / 7), torch.exp(-lags / 5)])  # (2, L): two channels
    q, k = (1 + 0.1 * torch.randn(2, L, generator=g, dtype=torch.float64) for _ in range(2))
    op = ToeplitzOperator(h, q, k)
    result = certified_ess(op, INDICES, block_size=4, max_fraction=1.0, rtol=1e-3, min_size=0)
    exact = entropy_ess(op.materialize(), INDICES)
    assert "krylov" in result.path
    assert torch.all(result.lower <= exact) and torch.all(exact <= result.upper)
    assert torch.allclose(entropy_ess(op, INDICES), exact)  # its exact path: T a few channels at a time


def test_the_gramian_route_certifies_a_gated_convolution_from_its_filter():
    from ess_reg import ToeplitzOperator

    lags = torch.arange(L, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    h = torch.stack([0.97 ** lags, torch.exp(-lags / 5) * torch.cos(lags / 3)])  # (2, L)
    q, k = (1 + 0.1 * torch.randn(2, L, generator=g, dtype=torch.float64) for _ in range(2))
    op = ToeplitzOperator(h, q, k)
    result = certified_ess(op, INDICES, min_size=0, max_fraction=0.01)  # no basis: Gramian or SVD
    exact = entropy_ess(op.materialize(), INDICES)
    assert "gram" in result.path
    assert torch.all(result.lower <= exact) and torch.all(exact <= result.upper)


@pytest.mark.parametrize("shapes, message", [
    (((2, 1), (2, 8), (2, 8)), "L >= 2"),
    (((2, 8), (2, 7), (2, 8)), "q must have shape"),
    (((2, 8), (3, 8), (2, 8)), "do not broadcast"),
])
def test_a_toeplitz_operator_names_what_is_wrong(shapes, message):
    from ess_reg import ToeplitzOperator

    h, q, k = (torch.randn(*shape, dtype=torch.float64) for shape in shapes)
    with pytest.raises(ValueError, match=message):
        ToeplitzOperator(h, q, k)


def test_ritz_values_go_through_block_svdvals(monkeypatch):
    """The Krylov products reach hundreds of rows: on CUDA their SVDs must take the driver that
    ``block_svdvals`` picks (torch's default Jacobi driver was off on such blocks)."""
    import ess_reg.matrix_free as matrix_free
    from ess_reg.operators import batching

    shapes = []

    def spy(blocks):
        shapes.append(tuple(blocks.shape))
        return batching.block_svdvals(blocks)

    monkeypatch.setattr(matrix_free, "block_svdvals", spy)
    T = low_rank_causal(4)
    result = certified_ess(T, INDICES, min_size=0, block_size=4, max_fraction=1.0)
    assert "krylov" in result.path and shapes, "no Krylov index took the spy's SVDs"
    exact = entropy_ess(T, INDICES)
    assert torch.all((result.lower <= exact + 1e-9) & (exact <= result.upper + 1e-9))


def test_the_gramian_route_stays_within_the_memory_budget(monkeypatch):
    # a batch whose blocks would not fit the budget goes to the exact path, which works in chunks
    import ess_reg.matrix_free as matrix_free

    T = causal_with_spectrum(SPECTRA["fast decay"])
    options = dict(min_size=0, max_fraction=0.01)
    assert set(certified_ess(T, INDICES, **options).path) == {"gram"}
    monkeypatch.setattr(matrix_free, "DEFAULT_MEMORY_BUDGET", 2**10)
    assert certified_ess(T, INDICES, **options).path == ["exact"] * len(INDICES)
    # per index: a budget that holds the edge blocks (3 x 157: 3.8 KiB with its Gramian) and not
    # the middle ones (80 x 80: 150 KiB)
    monkeypatch.setattr(matrix_free, "DEFAULT_MEMORY_BUDGET", 2**14)
    assert certified_ess(T, INDICES, **options).path == ["gram", "exact", "exact", "exact", "gram"]


def test_the_gramian_route_takes_a_large_batch_in_chunks(monkeypatch):
    # three heads whose blocks at index 80 take 150 KiB each with the Gramian: a budget of 400 KiB
    # holds two at a time, the route goes through all three, and the intervals are those of one pass
    import ess_reg.matrix_free as matrix_free

    T = torch.stack([causal_with_spectrum(SPECTRA["fast decay"], seed=s) for s in range(3)])
    options = dict(min_size=0, max_fraction=0.01)
    whole = certified_ess(T, [80], **options)
    monkeypatch.setattr(matrix_free, "DEFAULT_MEMORY_BUDGET", 400 * 2**10)
    assert matrix_free._gram_chunk(as_operator(T), 80, matrix_free.DEFAULT_MEMORY_BUDGET) == 2
    chunked = certified_ess(T, [80], **options)
    assert whole.path == chunked.path == ["gram"]
    torch.testing.assert_close(chunked.lower, whole.lower, rtol=1e-12, atol=0)
    torch.testing.assert_close(chunked.upper, whole.upper, rtol=1e-12, atol=0)
    exact = entropy_ess(T, [80])
    assert torch.all(chunked.lower <= exact) and torch.all(exact <= chunked.upper)
