import pytest
import torch

from ess_reg import StateSpaceOperator, hankel_svdvals
from ess_reg.indices import resolve_indices

from factories import DECAY_REGIMES, random_causal, random_state_space


def loop_reference(T: torch.Tensor, indices) -> list[torch.Tensor]:
    return [torch.linalg.svdvals(T[..., i:, :i]) for i in indices]


@pytest.mark.parametrize("method", ["dense", "loop"])
def test_dense_paths_match_definition(method):
    T = random_causal(2, 3, 17, 17, seed=0)
    sigma = hankel_svdvals(T, method=method)
    assert sigma.shape == (2, 3, 16, 8)  # width = max_i min(i, L - i) = 8
    for k, ref in enumerate(loop_reference(T, range(1, 17))):
        r = ref.shape[-1]
        assert torch.allclose(sigma[..., k, :r], ref, atol=1e-12)
        assert torch.all(sigma[..., k, r:] == 0)


@pytest.mark.parametrize("regime", sorted(DECAY_REGIMES))
@pytest.mark.parametrize("chunk_size", [None, 1, 3, 64])
def test_state_space_path_matches_dense(regime, chunk_size):
    op = random_state_space((2, 3), 29, 5, regime, seed=3)
    fast = hankel_svdvals(op, chunk_size=chunk_size)
    dense = hankel_svdvals(op.materialize(), method="loop")
    assert fast.shape == (2, 3, 28, 5)
    scale = dense.amax(-1, keepdim=True)
    assert torch.allclose(fast / scale, dense[..., :5] / scale, atol=1e-10)
    assert torch.all(dense[..., 5:] <= 1e-10 * scale)  # rank <= N


@pytest.mark.parametrize("chunk_size", [2, 3])
def test_state_space_batches_by_offset_in_chunk(chunk_size):
    # 99 indices >= MIN_GROUP * c: one SVD batch per i mod c, each at its exact width; L mod c
    # differs from 0 for c = 3, so the reversed side's offsets differ from the forward side's.
    from ess_reg.operators.state_space import MIN_GROUP

    op = random_state_space((2,), 100, 4, "mixed", seed=5)
    assert 99 >= MIN_GROUP * chunk_size
    fast = hankel_svdvals(op, chunk_size=chunk_size)
    dense = hankel_svdvals(op.materialize(), method="loop")
    scale = dense.amax(-1, keepdim=True)
    assert torch.allclose(fast / scale, dense[..., :4] / scale, atol=1e-10)


@pytest.mark.parametrize("dense", [False, True])
def test_autocast_does_not_lower_the_precision(dense):
    # One operator: no thread pool, so the work runs in this thread, where autocast is on.
    op = random_state_space((1,), 29, 5, "moderate", seed=3, dtype=torch.float32)
    x = op.materialize() if dense else op
    plain = hankel_svdvals(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would run the matmuls in bf16
        mixed = hankel_svdvals(x)
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, plain, rtol=1e-5, atol=1e-6 * float(plain.max()))


@pytest.mark.parametrize("chunk_size", [None, 3, 7])  # 40 = 13 * 3 + 1 = 5 * 7 + 5: uneven last chunks
def test_state_space_subset_and_order_of_indices(chunk_size):
    op = random_state_space((4,), 40, 6, "mixed", seed=4)
    indices = [39, 1, 17, 17, 6, 33]  # every remainder mod 3, unsorted, repeated
    fast = hankel_svdvals(op, indices, chunk_size=chunk_size)
    dense = hankel_svdvals(op, indices, method="dense")
    assert fast.shape == (4, 6, 6)
    assert torch.allclose(fast, dense[..., :6], atol=1e-10 * dense.max())
    assert torch.all(dense[..., 6:] <= 1e-10 * dense.max())


def test_state_space_near_ends_exact_zeros():
    # rank(H_i) <= min(i, L - i): H_1 is one column, so only sigma_1 may be nonzero.
    op = random_state_space((1,), 10, 4, seed=5)
    sigma = hankel_svdvals(op)
    assert torch.all(sigma[0, 0, 1:] == 0) and torch.all(sigma[0, -1, 1:] == 0)
    assert torch.all(sigma[0, 0, 0] > 0)


@pytest.mark.parametrize("span", [0, 3, 100])
def test_dense_grouped_blocks_match_loop(span):
    # Grouping neighbouring indices into one zero-padded batch (the CUDA layout) changes nothing.
    # Pins the dense path's _dense_svdvals's `span`: hankel_svdvals groups only on CUDA, with no public knob.
    from ess_reg.operators.dense import _dense_svdvals

    T = random_causal(2, 30, 30, seed=2)
    idx = torch.tensor([5, 1, 29, 6, 7, 15, 14, 22])
    expected = hankel_svdvals(T, idx, method="loop")
    assert torch.allclose(_dense_svdvals(T, idx, 2**28, span=span), expected, atol=1e-12)


def test_dense_path_keeps_gradients_and_thread_setting():
    threads = torch.get_num_threads()
    T = random_causal(2, 20, 20).requires_grad_()
    hankel_svdvals(T).sum().backward()
    assert T.grad is not None and torch.isfinite(T.grad).all() and T.grad.abs().sum() > 0
    assert torch.get_num_threads() == threads
    with torch.no_grad():
        assert not hankel_svdvals(T).requires_grad


def test_dense_memory_budget_chunks_without_changing_the_answer():
    T = random_causal(3, 40, 40, seed=1)
    roomy = hankel_svdvals(T)
    tight = hankel_svdvals(T, memory_budget=40 * 40 * 8 * 4 * 2)  # about two blocks at once
    assert torch.allclose(roomy, tight, atol=1e-12)
    with pytest.raises(ValueError, match="memory_budget"):
        hankel_svdvals(T, memory_budget=1000)


def test_state_space_memory_budget_chunks_batch():
    op = random_state_space((6,), 24, 3, seed=6)
    roomy = hankel_svdvals(op)
    tight = hankel_svdvals(op, memory_budget=150_000)  # two batch elements at a time
    assert torch.allclose(roomy, tight, atol=1e-12)
    with pytest.raises(ValueError, match="memory_budget"):
        hankel_svdvals(op, memory_budget=100)


def test_dtypes():
    T = random_causal(12, 12, dtype=torch.float32)
    assert hankel_svdvals(T).dtype == torch.float32
    assert hankel_svdvals(T, dtype=torch.float64).dtype == torch.float64
    half = hankel_svdvals(T.to(torch.bfloat16))
    assert half.dtype == torch.float32
    assert torch.allclose(half, hankel_svdvals(T.to(torch.bfloat16).float()))
    op = random_state_space((2,), 12, 3, dtype=torch.float32)
    assert hankel_svdvals(op).dtype == torch.float32
    op16 = StateSpaceOperator(*(t.to(torch.float16) for t in (op.log_decay, op.B, op.C)))
    assert hankel_svdvals(op16).dtype == torch.float32
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        hankel_svdvals(T, dtype=torch.float16)


def test_resolve_indices_errors():
    L = 10
    assert resolve_indices(None, L).tolist() == list(range(1, 10))
    assert resolve_indices(3, L).tolist() == [3]
    assert resolve_indices(torch.tensor([2, 9]), L).tolist() == [2, 9]
    for bad in ([0], [10], [-1], [1, 11]):
        with pytest.raises(ValueError, match=r"1\.\.L-1 = 1\.\.9"):
            resolve_indices(bad, L)
    with pytest.raises(ValueError, match="empty"):
        resolve_indices([], L)
    with pytest.raises(ValueError, match="integers"):
        resolve_indices([1.5], L)
    with pytest.raises(ValueError, match="integers"):
        resolve_indices(torch.tensor([1.0]), L)


def test_method_errors():
    T = random_causal(6, 6, dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown method"):
        hankel_svdvals(T, method="fast")
    with pytest.raises(ValueError, match="needs a StateSpaceOperator"):
        hankel_svdvals(T, method="state_space")
    with pytest.raises(ValueError, match="not causal"):
        hankel_svdvals(torch.randn(6, 6))
    with pytest.raises(ValueError, match="chunk_size"):
        hankel_svdvals(random_state_space((1,), 6, 2), chunk_size=0)
