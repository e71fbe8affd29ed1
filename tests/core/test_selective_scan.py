"""S6's factored chunk scan (ess_reg/kernels/selective_scan/) against the plain recurrence."""

import pytest
import torch
import torch.nn.functional as F

from ess_reg.kernels.selective_scan import selective_scan, selective_scan_reference
# Pins the kernel's chunk-bounds rule (the data-sized chunks, cut to whole blocks): no public route
# shows the chunks a call runs in; `bounded_chunk` (tests/core/test_kernels.py) is the bound it starts from.
from ess_reg.kernels.selective_scan.chunked import _chunk_bounds


def streams(batch=2, length=70, channels=3, state=4, dt_shift=-2.0, a_max=4.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    dt = F.softplus(torch.randn(batch, length, channels, generator=g, dtype=dtype) + dt_shift)
    A = -torch.rand(channels, state, generator=g, dtype=dtype) * a_max
    w = torch.randn(batch, length, channels, generator=g, dtype=dtype)
    B = torch.randn(batch, length, state, generator=g, dtype=dtype)
    C = torch.randn(batch, length, state, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (dt, A, w, B, C)]


# (dt_shift, max_chunk): strong decays (one-step chunks), medium, and weak decays whose long
# chunks take the blocked cumsum with several blocks and a ragged last chunk.
REGIMES = [(3.0, 64), (-2.0, 64), (-6.0, 24), (-6.0, 64), (-6.0, 5)]


@pytest.mark.parametrize("dt_shift,max_chunk", REGIMES)
def test_equals_the_recurrence_in_values_and_gradients(dt_shift, max_chunk):
    args = streams(dt_shift=dt_shift)
    bounds = _chunk_bounds(args[0].detach().transpose(0, 1), args[1].detach(), max_chunk)
    assert len(bounds) > 1 and bounds[-1][1] == 70
    y = selective_scan(*args, max_chunk=max_chunk)
    y_ref = selective_scan_reference(*args)
    assert torch.allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, args, g), torch.autograd.grad(y_ref, args, g)):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-11)


def test_chunks_follow_the_decay_strength():
    dt, A = torch.full((64, 1, 1), 0.5), -torch.ones(1, 1)
    assert _chunk_bounds(dt, A, 64) == [(0, 64)]  # exponent 0.5 * 63 <= 40
    A = -torch.full((1, 1), 10.0)
    assert [t1 - t0 for t0, t1 in _chunk_bounds(dt, A, 64)][0] == 8  # 1 + 40 / 5 = 9, cut to a block
    A = -torch.full((1, 1), 1000.0)
    assert {t1 - t0 for t0, t1 in _chunk_bounds(dt, A, 64)} == {1}


def test_gradcheck():
    args = streams(batch=1, length=19, channels=2, state=3)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, max_chunk=8), args)


@pytest.mark.parametrize("dt_shift", [4.0, -2.0, -8.0])
def test_float32_is_accurate_at_any_decay_strength(dt_shift):
    args64 = [t.detach() for t in streams(length=200, dt_shift=dt_shift, a_max=16.0)]
    y = selective_scan(*[t.float() for t in args64])
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    y_ref = selective_scan_reference(*args64)
    assert (y.double() - y_ref).abs().max() <= 1e-5 * y_ref.abs().max()


def test_half_precision_inputs_and_autocast_run_in_float32():
    args = [t.detach().bfloat16() for t in streams()]
    assert selective_scan(*args).dtype == torch.float32
    args64 = [t.detach() for t in streams(length=200, dt_shift=-4.0)]
    y_ref = selective_scan_reference(*args64)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would run the cumsum matmuls in bf16
        y = selective_scan(*[t.float() for t in args64])
    assert y.dtype == torch.float32
    assert (y.double() - y_ref).abs().max() <= 1e-5 * y_ref.abs().max()


def test_bad_inputs_are_named():
    dt, A, w, B, C = (t.detach() for t in streams())
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(dt, A[:2], w, B, C)
    with pytest.raises(ValueError, match="C must be"):
        selective_scan(dt, A, w, B, C[:, :5])
    with pytest.raises(ValueError, match="dt and w"):
        selective_scan(dt, A, w[:1], B, C)
    with pytest.raises(ValueError, match="dt must be >= 0"):
        selective_scan(-dt, A, w, B, C)
    with pytest.raises(ValueError, match="A must be <= 0"):
        selective_scan(dt, -A, w, B, C)
    dt[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        selective_scan(dt, A, w, B, C)
