"""Memory-bounded paths give the answers of the whole-tensor ones.

Validation of a dense T in slices, conversion of half-precision blocks one chunk at a time,
the state-space operator's dense path in channel groups and row blocks.  Peak memory against
the budget is measured by bench/memory.py, not here (one generous check of validation only).
"""

import gc

import pytest
import torch

from ess_reg import DenseOperator, StateSpaceOperator, entropy_ess, hankel_svdvals
from ess_reg.operators import batching, checks, dense, state_space

from factories import DECAY_REGIMES, random_causal, random_state_space


def whole_tensor_check(T: torch.Tensor, causal_rtol: float = dense.CAUSAL_RTOL) -> None:
    """The checks as they were, on the whole tensor at once: the reference for verdicts and messages."""
    if not bool(torch.isfinite(T).all()):
        raise ValueError(f"T has {(~torch.isfinite(T)).sum().item()} NaN/Inf entries")
    upper = torch.triu(T, diagonal=1).abs().amax()
    scale = T.abs().amax()
    if upper > causal_rtol * scale:
        raise ValueError(
            "T is not causal: max |T[i, j]| above the diagonal (j > i) is "
            f"{upper.item():.3g}, more than {causal_rtol:g} x max |T| = {scale.item():.3g}"
        )


def verdict(check, T: torch.Tensor, **kwargs) -> str:
    try:
        check(T, **kwargs)
    except ValueError as err:
        return str(err)
    return "ok"


# Slices of 1 entry (one row at a time), a few rows, one matrix, a few matrices, everything.
CHUNK_BYTES = [1, 3 * 7 * 8, 7 * 7 * 8, 3 * 49 * 8, 2**30]


@pytest.fixture(params=CHUNK_BYTES, ids=lambda b: f"chunk{b}")
def chunk_bytes(request, monkeypatch):
    # Sets checks._CHECK_CHUNK_BYTES, the validation's slice size (no public knob): small T in many slices.
    monkeypatch.setattr(checks, "_CHECK_CHUNK_BYTES", request.param)
    return request.param


@pytest.mark.parametrize("shape", [(7, 7), (5, 7, 7), (2, 3, 7, 7)])
def test_slices_cover_every_entry_once_with_row_offsets(shape, chunk_bytes):
    count = torch.zeros(shape)
    row_of = torch.full(shape, -1.0)
    # Pins checks._slices, the slicing the validation scans T by (no public route to the slices).
    for part, row0 in checks._slices(count, max(1, chunk_bytes // 8)):
        assert part.numel() <= max(7, chunk_bytes // 8)  # at most the limit, or one row
        part += 1  # a view into `count`
        # Write each entry's row index, as the slice's offset gives it, through the same view.
        rows = row_of.as_strided(part.shape, part.stride(), part.storage_offset())
        rows.copy_(torch.arange(row0, row0 + part.shape[-2], dtype=torch.float32).unsqueeze(-1).expand(part.shape))
    assert torch.equal(count, torch.ones(shape))
    assert torch.equal(row_of, torch.arange(7.0).unsqueeze(-1).expand(shape))


@pytest.mark.parametrize("shape", [(7, 7), (5, 7, 7), (2, 3, 7, 7)])
def test_sliced_validation_gives_the_whole_tensor_verdicts(shape, chunk_bytes):
    base = random_causal(*shape, seed=0)
    last = (*(s - 1 for s in shape[:-2]), 5, 6)  # the last row above the diagonal, in the last slice
    cases = {"causal": base.clone()}
    for name, where, value in [
        ("leak in last slice", last, 1e-3),
        ("round-off leak in last slice", last, 1e-9),
        ("leak just above diagonal of last row", (*last[:-2], 5, 6), 2.0),
        ("leak in first slice", (*(0 for _ in shape[:-2]), 0, 1), 1e-3),
        ("nan in last slice", (*last[:-2], 6, 6), float("nan")),
        ("inf in last slice", (*last[:-2], 6, 0), float("-inf")),
    ]:
        T = base.clone()
        T[where] = value
        cases[name] = T
    both = base.clone()
    both[(*(0 for _ in shape[:-2]), 3, 1)] = float("nan")
    both[(*last[:-2], 6, 6)] = float("inf")
    both[last] = 5.0  # also non-causal: the NaN/Inf message wins, with the total count
    cases["nan first and inf last"] = both
    for name, T in cases.items():
        assert verdict(DenseOperator, T) == verdict(whole_tensor_check, T), name  # "ok" or the same message
    assert verdict(whole_tensor_check, cases["leak in last slice"]).startswith("T is not causal")
    assert verdict(whole_tensor_check, cases["nan first and inf last"]) == "T has 2 NaN/Inf entries"


def test_sliced_validation_tolerance_and_dtypes(chunk_bytes):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        T = torch.tril(torch.ones(3, 7, 7)).to(dtype)
        T[2, 4, 6] = 1e-3
        for rtol in (1e-6, 1e-2, float("inf"), 0.0):
            assert verdict(DenseOperator, T, causal_rtol=rtol) == verdict(whole_tensor_check, T, causal_rtol=rtol)
    empty = torch.zeros(0, 7, 7)
    DenseOperator(empty)  # nothing to scan, as before


def _rss_growth(fn) -> int | None:
    """Peak resident-set growth of ``fn()`` (None where the peak cannot be reset)."""
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    try:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS")
    except (OSError, StopIteration):
        return None
    fn()
    return status("VmHWM") - base


def test_validation_does_not_copy_T(monkeypatch):
    # Generous: the checks used to hold 1-2 full-size temporaries (2.1x T at peak); now one
    # 1 MiB slice buffer (checks._CHECK_CHUNK_BYTES, the private slice size, set to 1 MiB).
    monkeypatch.setattr(checks, "_CHECK_CHUNK_BYTES", 2**20)
    DenseOperator(torch.ones(2, 64, 64).tril_())  # the kernels' code paged in before measuring
    T = torch.ones(8, 1024, 1024).tril_()  # 32 MiB
    growth = _rss_growth(lambda: DenseOperator(T))
    if growth is None:
        pytest.skip("no /proc/self/clear_refs to reset the peak resident set")
    assert growth < T.numel() * T.element_size() / 4


# ---- half precision: blocks converted one chunk at a time --------------------------------------

@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_blocks_equal_converting_T_whole(half):
    T = random_causal(3, 2, 24, 24, seed=1, dtype=torch.float32).to(half)
    idx = [5, 1, 23, 12, 12, 7]
    whole = hankel_svdvals(T.float(), idx)
    assert torch.equal(hankel_svdvals(T, idx), whole)  # same blocks, same batches: same bits
    # One batch element per SVD chunk (float32 block 12 x 12: 576 B, its converted copy 576 B);
    # LAPACK's last bits depend on how a batch is laid out, so equal to round-off here.
    assert torch.allclose(hankel_svdvals(T, idx, memory_budget=2000), whole, rtol=1e-6, atol=1e-6)
    # batch dims that do not merge into one: blocks gathered, never the whole T
    permuted = T.transpose(0, 1)
    assert torch.equal(hankel_svdvals(permuted, idx), hankel_svdvals(permuted.float().contiguous(), idx))
    assert torch.equal(hankel_svdvals(T, idx, method="loop"), hankel_svdvals(T.float(), idx, method="loop"))
    T64 = T.float()
    assert torch.equal(hankel_svdvals(T64, idx, dtype=torch.float64), hankel_svdvals(T64.double(), idx))


@pytest.mark.parametrize("span", [0, 3, 100])
def test_grouped_blocks_convert_like_the_whole_tensor(span):
    # The zero-padded groups (the CUDA layout) filled from half-precision blocks.
    T = random_causal(2, 30, 30, seed=2, dtype=torch.float32).to(torch.bfloat16)
    idx = torch.tensor([5, 1, 29, 6, 7, 15, 14, 22])
    expected = hankel_svdvals(T.double(), idx, method="loop")
    # Pins dense._dense_svdvals's `span` (how far apart grouped indices may be): set by the device, not public.
    got = dense._dense_svdvals(T, idx, 2**28, span=span, dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-12)


def test_dense_budget_chunks_batch_and_keeps_order():
    T = random_causal(5, 40, 40, seed=3)
    idx = [20, 3, 39, 20, 11]
    roomy = hankel_svdvals(T, idx)
    # batching._SVD_OVERHEAD and _SVD_UV_OVERHEAD: the private memory model the budget is checked by, to hit its edge.
    largest = 20 * 20 * 8 * batching._SVD_OVERHEAD
    for budget in (largest + 1, 2 * largest + 1, 3 * largest):  # one, two, three batch elements a chunk
        assert torch.allclose(hankel_svdvals(T, idx, memory_budget=budget), roomy, rtol=1e-13, atol=1e-13)
    with torch.inference_mode():  # the output is written by the calling thread
        assert torch.allclose(hankel_svdvals(T, idx, memory_budget=largest + 1), roomy, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="memory_budget"):
        hankel_svdvals(T, idx, memory_budget=largest - 1)
    leaf = T.clone().requires_grad_()
    with_grad = hankel_svdvals(leaf, idx, memory_budget=20 * 20 * 8 * batching._SVD_UV_OVERHEAD + 1)
    assert torch.allclose(with_grad.detach(), roomy, atol=1e-12)
    with_grad.sum().backward()
    assert torch.isfinite(leaf.grad).all()


# ---- state-space operators on the dense path: channel groups and row blocks ----------------------

@pytest.mark.parametrize("regime", sorted(DECAY_REGIMES))
@pytest.mark.parametrize("rows", [1, 4, 13, 29])
def test_row_blocks_materialize_T(regime, rows):
    op = random_state_space((2, 3), 29, 4, regime, seed=7)
    T = op.materialize()
    factors = (t.reshape(-1, 29, 4) for t in op.factors())
    # Pins state_space._materialize_rows, the row-block materialization inside method="dense" (no public route).
    blocked = state_space._materialize_rows(*factors, rows).reshape(T.shape)
    assert torch.allclose(blocked, T, rtol=1e-12, atol=1e-14 * float(T.abs().max()))
    assert torch.equal(torch.triu(blocked, 1), torch.zeros_like(blocked))


def test_state_space_dense_path_in_channel_groups_equals_one_shot(monkeypatch):
    length, state = 24, 3
    op = random_state_space((2, 3), length, state, "mixed", seed=8)
    one_shot = hankel_svdvals(op.materialize(), method="dense")  # T of every channel at once
    calls = []
    # Spies on state_space._materialize_rows (private) to see the channel groups and row blocks the budget gives.
    materialize = state_space._materialize_rows

    def spy(log_decay, B, C, rows, trimmer=None):
        calls.append((B.shape[0], rows))
        return materialize(log_decay, B, C, rows, trimmer)

    monkeypatch.setattr(state_space, "_materialize_rows", spy)
    assert torch.allclose(hankel_svdvals(op, method="dense"), one_shot, atol=1e-12)
    assert calls == [(6, length)]  # the default budget: every channel, one row block
    calls.clear()
    t_bytes = length * length * 8
    budget = 2 * t_bytes + 100  # one channel at a time, a few rows per block
    grouped = hankel_svdvals(op, method="dense", memory_budget=budget)
    assert torch.allclose(grouped, one_shot, atol=1e-12)
    assert len(calls) == 6 and all(c == 1 and r < length for c, r in calls)
    calls.clear()
    indices = [17, 2, 9, 9]
    assert torch.allclose(hankel_svdvals(op, indices, method="dense", memory_budget=4 * t_bytes + 100),
                          hankel_svdvals(op.materialize(), indices, method="dense"), atol=1e-12)
    assert [c for c, _ in calls] == [2, 2, 2]
    with pytest.raises(ValueError, match="memory_budget.*state_space"):
        hankel_svdvals(op, method="dense", memory_budget=t_bytes)


def test_state_space_dense_path_shared_factors_and_half_precision():
    g = torch.Generator().manual_seed(9)
    length, state = 20, 2
    log_decay = -torch.rand(length, state, generator=g, dtype=torch.float64)  # shared by every channel
    B = torch.randn(4, length, state, generator=g, dtype=torch.float64)
    C = torch.randn(1, length, state, generator=g, dtype=torch.float64)
    op = StateSpaceOperator(log_decay, B, C)
    expected = hankel_svdvals(op.materialize(), method="dense")
    assert torch.allclose(hankel_svdvals(op, method="dense", memory_budget=2 * length**2 * 8 + 50), expected,
                          atol=1e-12)
    half = StateSpaceOperator(*(t.to(torch.bfloat16) for t in (log_decay, B, C)))
    sigma = hankel_svdvals(half, method="dense")  # factors converted first: T built in float32
    assert sigma.dtype == torch.float32
    reference = hankel_svdvals(StateSpaceOperator(*(t.float() for t in (half.log_decay, half.B, half.C))),
                               method="dense")
    assert torch.allclose(sigma, reference, rtol=1e-5, atol=1e-6)


def test_state_space_dense_path_gradients_through_row_blocks():
    length, state = 16, 3
    op = random_state_space((2,), length, state, "moderate", seed=10)
    grads = []
    # batching._SVD_UV_OVERHEAD: the private memory model of an SVD with singular vectors; here H_8's.
    largest = 8 * 8 * 8 * batching._SVD_UV_OVERHEAD
    for budget in (None, length**2 * 8 + largest + 100):  # one row block; one channel, one row at a time
        leaves = [t.detach().clone().requires_grad_() for t in (op.log_decay, op.B, op.C)]
        ess = entropy_ess(StateSpaceOperator(*leaves), method="dense", memory_budget=budget)
        ess.sum().backward()
        grads.append((ess.detach(), [leaf.grad for leaf in leaves]))
    (ess_a, grad_a), (ess_b, grad_b) = grads
    assert torch.allclose(ess_a, ess_b, atol=1e-12)
    for a, b in zip(grad_a, grad_b):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


def test_grouped_and_gathered_blocks_keep_gradients():
    # Zero-padded groups are filled by copies, blocks of a non-mergeable T are gathered: both
    # differentiable, with the gradient of the one-SVD-per-index reference.
    base = random_causal(3, 2, 20, 20, seed=11)
    idx = torch.tensor([3, 9, 4, 15, 10])
    reference_leaf = base.clone().requires_grad_()
    hankel_svdvals(reference_leaf, idx, method="loop").sum().backward()
    for span, permute in [(3, False), (100, False), (0, True), (3, True)]:
        leaf = base.clone().requires_grad_()
        T = leaf.transpose(0, 1) if permute else leaf  # (2, 3, L, L): batch dims that do not merge
        # Pins dense._dense_svdvals's `span` (the CUDA grouping), set by the device, not public.
        sigma = dense._dense_svdvals(T, idx, 2**28, span=span)
        expected = hankel_svdvals(reference_leaf.detach().transpose(0, 1) if permute else reference_leaf.detach(),
                                  idx, method="loop")
        assert torch.allclose(sigma, expected, atol=1e-12)
        sigma.sum().backward()
        assert torch.allclose(leaf.grad, reference_leaf.grad, atol=1e-10), (span, permute)
