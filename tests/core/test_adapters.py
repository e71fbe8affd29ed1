"""Adapters shipped with ess-reg: the captured operator reproduces the layer's output."""

import pytest
import torch
from torch import nn

import ess_reg
from ess_reg.adapters.torch_attention import attention_operator, attention_values
from ess_reg.state_size import growing_state_size


class CausalBlock(nn.Module):
    def __init__(self, dim, heads, batch_first=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=batch_first)

    def forward(self, x):
        length = x.shape[1] if self.attn.batch_first else x.shape[0]
        mask = torch.ones(length, length, dtype=torch.bool).triu(1)
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_operator_reproduces_the_layer(batch_first):
    torch.manual_seed(0)
    block = CausalBlock(12, 3, batch_first).double().eval()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    x_in = x if batch_first else x.transpose(0, 1)
    op = attention_operator(block.attn, x_in)
    assert op.batch_shape == (2, 3) and op.multiplicity == 4
    heads = op.materialize() @ attention_values(block.attn, x_in)          # (B, H, L, head_dim)
    merged = heads.transpose(1, 2).reshape(2, 9, 12)
    out = block.attn.out_proj(merged)
    expected = block(x_in) if batch_first else block(x_in).transpose(0, 1)
    assert torch.allclose(out, expected, atol=1e-10)


def test_multihead_attention_is_measured_without_an_adapter_of_ones_own():
    torch.manual_seed(1)
    model = nn.Sequential(CausalBlock(8, 2), CausalBlock(8, 2)).double().eval()
    x = torch.randn(3, 16, 8, dtype=torch.float64)
    reports = ess_reg.measure(model, x, kind="tolerance")
    assert set(reports) == {"0.attn", "1.attn"}
    for report in reports.values():
        assert report.value_channels == 8  # 2 heads x 4 value channels each
        tss = growing_state_size(report.ess.indices, 16).to(torch.float64)
        assert torch.all(report.ess.values <= tss + 1e-9)  # ESS <= TSS at every index
        assert report.ess.values.max() > 1  # attention over many keys holds more than one direction


def test_the_penalty_reaches_multihead_attention_through_its_adapter():
    torch.manual_seed(2)
    model = nn.Sequential(CausalBlock(8, 2)).double()
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    penalty = ess_reg.ESSPenalty(model, "maximize", schedule=ess_reg.Schedule(weight=1.0, ramp_steps=0))
    value = penalty(x, step=1)
    value.backward()
    grad = model[0].attn.in_proj_weight.grad
    assert torch.isfinite(value) and grad is not None and grad.abs().sum() > 0


def test_cross_attention_is_refused_with_the_reason():
    attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)
    with pytest.raises(ValueError, match="as self-attention"):
        attention_operator(attn, torch.randn(1, 5, 8))


def test_a_subclass_of_multihead_attention_in_another_package_finds_the_adapter():
    class Mine(nn.MultiheadAttention):
        __module__ = "somebody_elses_package.layers"

    class Block(CausalBlock):
        def __init__(self):
            super().__init__(8, 2)
            self.attn = Mine(8, 2, batch_first=True)

    reports = ess_reg.measure(Block().double(), torch.randn(1, 10, 8, dtype=torch.float64), kind="tolerance")
    assert set(reports) == {"attn"} and reports["attn"].value_channels == 8
