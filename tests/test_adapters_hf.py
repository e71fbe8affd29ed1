"""Adapters for ``transformers`` models (tiny random configs built here: nothing is downloaded)."""

import pytest
import torch

import ess_reg

transformers = pytest.importorskip("transformers")


def tiny_mamba(seed=0):
    torch.manual_seed(seed)
    config = transformers.MambaConfig(vocab_size=32, hidden_size=16, state_size=4, num_hidden_layers=2,
                                      expand=2, conv_kernel=4, time_step_rank=4)
    return transformers.MambaForCausalLM(config).double().eval()


def test_mamba_operator_reproduces_the_mixer():
    from ess_reg.adapters.hf_mamba import mamba_operator, mamba_readout, mamba_streams

    model = tiny_mamba()
    mixer = model.backbone.layers[0].mixer
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    op = mamba_operator(mixer, x)
    assert op.batch_shape == (2, mixer.intermediate_size) and op.state_size == 4
    u = mamba_streams(mixer, x)[0]
    y = (op.materialize() @ u.transpose(1, 2).unsqueeze(-1)).squeeze(-1)      # (B, E, L)
    # transformers computes its discretized A and B in float32: agreement to float32 precision
    assert torch.allclose(mamba_readout(mixer, x, y), mixer(x), atol=1e-5, rtol=1e-5)


def test_a_mamba_model_is_measured_as_it_is():
    model = tiny_mamba()
    ids = torch.randint(0, 32, (2, 24))
    reports = ess_reg.measure(model, ids, kind="tolerance")
    assert set(reports) == {"backbone.layers.0.mixer", "backbone.layers.1.mixer"}
    for report in reports.values():
        assert torch.all(report.ess.values <= 4 + 1e-9)  # ESS <= TSS (state_size 4)
        assert report.ess.values.max() > 0


def test_the_penalty_moves_a_mamba_models_ess_its_way():
    model = tiny_mamba(1).train()
    ids = torch.randint(0, 32, (4, 24), generator=torch.Generator().manual_seed(0))
    penalty = ess_reg.ESSPenalty(model, "maximize", measure="ess",
                                 schedule=ess_reg.Schedule(weight=1.0, ramp_steps=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = penalty(ids, step=1).item()
    for step in range(15):
        optimizer.zero_grad()
        value = penalty(ids, step=step + 1)
        value.backward()
        assert model.backbone.layers[0].mixer.A_log.grad.abs().sum() > 0  # gradients reach the layer
        optimizer.step()
    assert penalty(ids, step=16).item() < before  # maximize: the penalty (-ESS) falls, ESS rises
