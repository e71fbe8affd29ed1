import pytest
import torch

from ess_reg import DenseOperator, StateSpaceOperator, as_operator

from factories import DECAY_REGIMES, random_causal, random_state_space


def reference_matrix(op: StateSpaceOperator) -> torch.Tensor:
    """T from its definition, one entry at a time."""
    log_decay, B, C = op.factors()
    L = op.seq_len
    T = torch.zeros(*op.batch_shape, L, L, dtype=B.dtype)
    for i in range(L):
        for j in range(i + 1):
            decay = torch.exp(log_decay[..., j + 1 : i + 1, :].sum(-2))
            T[..., i, j] = (C[..., i, :] * decay * B[..., j, :]).sum(-1)
    return T


@pytest.mark.parametrize("regime", sorted(DECAY_REGIMES))
def test_materialize_matches_definition(regime):
    op = random_state_space((2, 3), 12, 4, regime, seed=1)
    ref = reference_matrix(op)
    T = op.materialize()
    assert torch.allclose(T, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.triu(T, 1), torch.zeros_like(T))


@pytest.mark.parametrize("regime", sorted(DECAY_REGIMES))
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
@pytest.mark.parametrize("method", ["chunked", "factored"])
def test_state_space_apply_equals_materialized(regime, chunk_size, method):
    op = random_state_space((2, 3), 37, 5, regime, seed=2)
    v = torch.randn(2, 3, 37, 4, dtype=torch.float64)
    expected = op.materialize() @ v
    got = op.apply(v, chunk_size=chunk_size, method=method)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)
    assert torch.allclose(op.apply(v, method="sequential"), expected, rtol=1e-10, atol=1e-10)


def test_factored_scan_survives_very_strong_decays_in_float32():
    # log-decays of -80 per step would overflow exp(-cumsum) in a fixed chunk; the chunk shrinks.
    op = random_state_space((2,), 50, 3, "strong", seed=3, dtype=torch.float32)
    strong = StateSpaceOperator(op.log_decay * 4, op.B, op.C)
    v = torch.randn(2, 50, 2)
    got = strong.apply(v, method="factored", chunk_size=64)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, strong.apply(v, method="sequential"), rtol=1e-5, atol=1e-6)


def test_apply_broadcasts_shared_factors():
    # An LTI system: one log_decay shared by the batch, values per batch element.
    L, N = 20, 3
    log_decay = -torch.rand(1, L, N, dtype=torch.float64)
    B, C = torch.randn(4, L, N, dtype=torch.float64), torch.randn(4, L, N, dtype=torch.float64)
    op = StateSpaceOperator(log_decay, B, C)
    assert op.batch_shape == (4,)
    v = torch.randn(4, L, 2, dtype=torch.float64)
    assert torch.allclose(op.apply(v, chunk_size=6), op.materialize() @ v, atol=1e-12)


def test_dense_apply_is_matmul():
    T = random_causal(3, 10, 10, dtype=torch.float32)
    v = torch.randn(3, 10, 2)
    assert torch.allclose(DenseOperator(T).apply(v), T @ v)


def test_as_operator():
    T = random_causal(5, 5, dtype=torch.float32)
    assert isinstance(as_operator(T), DenseOperator)
    op = random_state_space((1,), 5, 2)
    assert as_operator(op) is op
    with pytest.raises(TypeError, match="causal operator"):
        as_operator([[1.0]])


# ---- bad input ---------------------------------------------------------------------------

def test_dense_rejects_bad_T():
    with pytest.raises(ValueError, match="NaN/Inf"):
        DenseOperator(torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="NaN/Inf"):
        DenseOperator(torch.tensor([[1.0, 0.0], [float("inf"), 1.0]]))
    with pytest.raises(ValueError, match="square"):
        DenseOperator(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="not causal"):
        DenseOperator(torch.ones(4, 4))
    with pytest.raises(ValueError, match="L must be >= 2"):
        DenseOperator(torch.ones(1, 1))
    with pytest.raises(ValueError, match=r"\(\.\.\., L, L\)"):
        DenseOperator(torch.ones(4))
    with pytest.raises(ValueError, match="floating-point"):
        DenseOperator(torch.ones(4, 4, dtype=torch.long).tril())
    with pytest.raises(ValueError, match="multiplicity"):
        DenseOperator(torch.eye(3), multiplicity=0)


def test_dense_causal_tolerance_is_relative():
    T = torch.tril(torch.ones(4, 4, dtype=torch.float64))
    T[0, 3] = 1e-9  # round-off-sized leak above the diagonal is accepted
    DenseOperator(T)
    T[0, 3] = 1e-3
    with pytest.raises(ValueError, match=r"j > i"):
        DenseOperator(T)


def test_check_values_false_skips_only_data_scans():
    # A model's forward may skip the NaN / sign scans; shapes are still checked.
    L, N = 6, 2
    StateSpaceOperator(torch.ones(L, N), torch.ones(L, N), torch.ones(L, N), check_values=False)
    DenseOperator(torch.ones(L, L), check_values=False)
    with pytest.raises(ValueError, match="must agree"):
        StateSpaceOperator(torch.ones(L, N), torch.ones(L, 3), torch.ones(L, N), check_values=False)


def test_state_space_rejects_bad_factors():
    L, N = 6, 3
    ok = -torch.rand(2, L, N)
    B, C = torch.randn(2, L, N), torch.randn(2, L, N)
    with pytest.raises(ValueError, match="must agree in their last two dims"):
        StateSpaceOperator(ok, B[..., :2], C)
    with pytest.raises(ValueError, match="must agree in their last two dims"):
        StateSpaceOperator(ok, B, C[:, :4])
    with pytest.raises(ValueError, match="do not broadcast"):
        StateSpaceOperator(ok, torch.randn(3, L, N), C)
    with pytest.raises(ValueError, match="log_decay must be <= 0"):
        StateSpaceOperator(ok.abs(), B, C)
    bad = B.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="B has 1 NaN/Inf"):
        StateSpaceOperator(ok, bad, C)
    inf_decay = ok.clone()
    inf_decay[0, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match="log_decay has 1 NaN/Inf"):
        StateSpaceOperator(inf_decay, B, C)
    with pytest.raises(ValueError, match="L must be >= 2"):
        StateSpaceOperator(ok[:, :1], B[:, :1], C[:, :1])
    with pytest.raises(ValueError, match="share a dtype"):
        StateSpaceOperator(ok.double(), B, C)
    with pytest.raises(ValueError, match="multiplicity"):
        StateSpaceOperator(ok, B, C, multiplicity=-1)


def test_apply_rejects_wrong_value_shape():
    op = random_state_space((2,), 8, 2)
    with pytest.raises(ValueError, match="v must have shape"):
        op.apply(torch.randn(2, 7, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown apply method"):
        op.apply(torch.randn(2, 8, 1, dtype=torch.float64), method="fft")
    with pytest.raises(ValueError, match="v must have shape"):
        DenseOperator(torch.eye(8)).apply(torch.randn(8))


def test_block_svdvals_asks_cuda_for_the_qr_driver_on_large_blocks_only(monkeypatch):
    # The CUDA dispatch, checked without a GPU: which driver each block shape would get.
    from types import SimpleNamespace

    from ess_reg.operators import batching

    asked = []
    monkeypatch.setattr(torch.linalg, "svdvals", lambda blocks, **kw: asked.append(kw.get("driver")) or blocks)
    for shape in ((3, 33, 8), (3, 8, 40), (512, 512), (3, 32, 32), (16, 16)):
        batching.block_svdvals(SimpleNamespace(is_cuda=True, shape=shape))
    batching.block_svdvals(SimpleNamespace(is_cuda=False, shape=(512, 512)))
    assert asked == ["gesvd", "gesvd", "gesvd", None, None, None]
