"""The CUDA path: every test here is marked ``gpu`` (skipped without CUDA; bench/gpu_check.sh runs them).

Each checks a CUDA result against the same computation on the CPU, or a run that must finish.
"""

import pytest
import torch

import ess_reg
from ess_reg.models import build_mixer
from ess_reg.operators import DeltaRuleOperator

from factories import random_state_space

pytestmark = pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)


def test_state_space_spectra_on_cuda_equal_the_cpu():
    op = random_state_space((2, 3), 96, 8)
    on_gpu = ess_reg.StateSpaceOperator(op.log_decay.cuda(), op.B.cuda(), op.C.cuda())
    for method in ("state_space", "dense"):
        assert torch.allclose(ess_reg.hankel_svdvals(on_gpu, method=method).cpu(),
                              ess_reg.hankel_svdvals(op, method=method), atol=1e-8), method


def test_delta_rule_spectra_and_chunked_apply_on_cuda_equal_the_cpu():
    g = torch.Generator().manual_seed(0)
    K = torch.nn.functional.normalize(torch.randn(2, 3, 64, 8, generator=g, dtype=torch.float64), dim=-1)
    factors = (-0.3 * torch.rand(2, 3, 64, generator=g, dtype=torch.float64),
               torch.rand(2, 3, 64, generator=g, dtype=torch.float64), K,
               torch.randn(2, 3, 64, 8, generator=g, dtype=torch.float64))
    cpu, gpu = DeltaRuleOperator(*factors), DeltaRuleOperator(*(t.cuda() for t in factors))
    assert torch.allclose(ess_reg.hankel_svdvals(gpu).cpu(), ess_reg.hankel_svdvals(cpu), atol=1e-8)
    v = torch.randn(2, 3, 64, 5, dtype=torch.float64)
    assert torch.allclose(gpu.apply(v.cuda()).cpu(), cpu.apply(v), atol=1e-10)


@pytest.mark.parametrize("mixer", ["s6", "gla", "deltanet"])
def test_mixer_forward_and_backward_on_cuda_equal_the_cpu(mixer):
    torch.manual_seed(0)
    cpu = build_mixer(mixer, 32, **({"d_state": 8} if mixer == "s6" else {"num_heads": 2, "feature_dim": 8}))
    gpu = build_mixer(mixer, 32, **({"d_state": 8} if mixer == "s6" else {"num_heads": 2, "feature_dim": 8})).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(2, 128, 32)
    for module, inputs in ((cpu, x), (gpu, x.cuda())):
        module(inputs).square().mean().backward()
    assert torch.allclose(gpu(x.cuda()).cpu(), cpu(x), atol=1e-4, rtol=1e-4)
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        assert torch.allclose(p_gpu.grad.cpu(), p_cpu.grad, atol=1e-4, rtol=1e-3), name


def test_a_bf16_run_with_the_penalty_finishes_on_cuda(tmp_path):
    pytest.importorskip("hydra", reason="the harness (ess-reg[train]) is not installed here")
    pytest.importorskip("mlflow", reason="the harness (ess-reg[train]) is not installed here")
    from ess_reg.harness.ess_train import compose_config, run

    overrides = ["experiment=tiny", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                 f"tracking.artifact_location={tmp_path}/a",
                 f"trainer.checkpoint_dir={tmp_path}/c", "trainer.progress=false", "trainer.device=cuda",
                 "trainer.precision=bf16", "penalty=ess_max", "trainer.max_steps=20"]
    result = run(compose_config(overrides))
    assert result.accuracy is not None and all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())
    assert next(result.model.parameters()).is_cuda


def test_certified_ess_on_cuda_contains_the_cpu_s_exact_value():
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(2, 256, 8, generator=g, dtype=torch.float64) for _ in range(2))
    T = torch.tril(q @ k.mT)  # a linear attention: every block of rank <= 8
    idx = [64, 128, 192]
    result = ess_reg.certified_ess(T.cuda(), idx, block_size=8, min_size=0)
    exact = ess_reg.entropy_ess(T, idx)
    assert result.path == ["krylov"] * 3 and result.value.is_cuda
    assert torch.all(result.lower.cpu() <= exact + 1e-9) and torch.all(exact <= result.upper.cpu() + 1e-9)


def test_compression_on_cuda_equals_the_cpu():
    from ess_reg.compression import compress_state
    from ess_reg.models.lm import LanguageModel

    tokens = torch.randint(0, 32, (2, 24), generator=torch.Generator().manual_seed(0))
    for mixer, method in (("gla", "keep"), ("s4d", "merge")):
        torch.manual_seed(0)
        cpu = LanguageModel(vocab_size=32, d_model=16, n_layers=2, mixer=mixer, state_size=8).double()
        gpu = LanguageModel(vocab_size=32, d_model=16, n_layers=2, mixer=mixer, state_size=8).double().cuda()
        gpu.load_state_dict(cpu.state_dict())
        cuts = compress_state(cpu, tokens, 3, method=method)
        on_gpu = compress_state(gpu, tokens.cuda(), 3, method=method)
        for name, cut in cuts.items():
            assert torch.equal(on_gpu[name].kept.cpu(), cut.kept), (mixer, name)
        assert torch.allclose(gpu(tokens.cuda()).cpu(), cpu(tokens), atol=1e-9), mixer


def test_dense_spectra_on_cuda_equal_the_cpu_on_low_rank_ill_conditioned_blocks():
    # The first H200 run (docs/benchmarks_gpu.md) found cuSOLVER's default Jacobi driver off by up to
    # 0.06-0.12 in entropy-ESS on this operator's blocks (rank <= 16, up to 512 x 512, decays spread
    # over five decades), at about 1% of the values: every 8th index keeps about 9 such values.
    # bench/ess_speed.py's construction at L = 1024 (its decays rounded differently, within 1e-6)
    op = random_state_space((8,), 1024, 16, regime="mixed")
    idx = list(range(8, 1024, 8))
    exact = ess_reg.entropy_ess(op, idx, method="state_space")  # equal to the CPU's loop to 1e-13
    on_gpu = ess_reg.entropy_ess(op.materialize().cuda(), idx, method="dense").cpu()
    assert (on_gpu - exact).abs().max() < 1e-8


def test_the_gramian_route_on_cuda_contains_the_exact_values():
    # cuSOLVER's symmetric eigensolver in place of an SVD: its intervals must hold the exact values
    # on the low-rank, ill-conditioned blocks where the default SVD driver failed.
    op = random_state_space((2,), 512, 16, regime="mixed")
    idx = list(range(16, 512, 32))
    exact = ess_reg.entropy_ess(op, idx, method="state_space")
    result = ess_reg.certified_ess(op.materialize().cuda(), idx, min_size=0, max_fraction=0.01)
    assert "gram" in result.path
    assert torch.all(result.lower.cpu() <= exact + 1e-9) and torch.all(exact <= result.upper.cpu() + 1e-9)


def test_a_convolution_takes_the_gramian_route_on_cuda_in_chunks(monkeypatch):
    # the blocks built from the filter on the GPU, a few channels at a time: the intervals hold the
    # CPU's float64 exact values
    import ess_reg.matrix_free as matrix_free

    lags = torch.arange(512, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    h = torch.stack([0.99 ** lags, torch.exp(-lags / 9) * torch.cos(lags / 4), 0.95 ** lags])  # (3, L)
    q, k = (1 + 0.1 * torch.randn(3, 512, generator=g, dtype=torch.float64) for _ in range(2))
    op = ess_reg.ToeplitzOperator(h, q, k)
    idx = list(range(64, 512, 64))
    exact = ess_reg.entropy_ess(op.materialize(), idx)
    monkeypatch.setattr(matrix_free, "DEFAULT_MEMORY_BUDGET", 2 * 2**20)  # one or two channels a chunk
    on_gpu = ess_reg.ToeplitzOperator(h.cuda(), q.cuda(), k.cuda())
    result = ess_reg.certified_ess(on_gpu, idx, min_size=0, max_fraction=0.01)
    assert "gram" in result.path
    assert torch.all(result.lower.cpu() <= exact + 1e-9) and torch.all(exact <= result.upper.cpu() + 1e-9)
