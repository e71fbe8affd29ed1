"""Boundary modulation: a layer that resets its memory at separators is told apart from one that does not."""

import pytest
import torch
from torch import nn

import ess_reg
from ess_reg.boundaries import boundary_modulation, boundary_profile

SEP = 0


class ToyAttention(nn.Module):
    """Uniform causal attention over token embeddings; with ``resets``, a token attends only to
    positions after the last separator before it (the separator closes its segment)."""

    def __init__(self, resets: bool, vocab: int = 8, dim: int = 4):
        super().__init__()
        self.resets = resets
        self.embed = nn.Embedding(vocab, dim)
        self.tokens = None

    def operator(self, x):
        tokens = self.tokens
        b, length = tokens.shape
        allowed = torch.ones(length, length, dtype=torch.bool).tril().expand(b, length, length).clone()
        if self.resets:
            # segment id: how many separators lie strictly before each position
            segment = torch.cumsum((tokens == SEP).long(), dim=1) - (tokens == SEP).long()
            allowed &= segment[:, :, None] == segment[:, None, :]
        scores = torch.randn(b, length, length, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        return ess_reg.DenseOperator(weights.unsqueeze(1))  # (B, 1, L, L): one head

    def state_size(self):
        return ess_reg.state_size.growing_state_size

    def forward(self, tokens):
        self.tokens = tokens
        x = self.embed(tokens).double()
        return self.operator(x).materialize()[:, 0] @ x


def test_a_layer_that_resets_at_separators_is_told_apart_from_one_that_does_not():
    torch.manual_seed(0)
    tokens = torch.randint(1, 8, (3, 40))
    tokens[:, [9, 21, 30]] = SEP
    resetting, plain = ToyAttention(True), ToyAttention(False)
    reports = {name: ess_reg.measure(layer, tokens, kind="tolerance")[""]
               for name, layer in (("resets", resetting), ("plain", plain))}
    profile = boundary_profile(reports["resets"], tokens, [SEP], window=3)
    assert profile.shape == (7,) and profile[3] == pytest.approx(0.0, abs=1e-9)  # nothing crosses the boundary
    assert profile[:3].min() >= 1  # before it, the segment so far is carried
    assert boundary_modulation(reports["resets"], tokens, [SEP], window=3) > 0.6
    assert abs(boundary_modulation(reports["plain"], tokens, [SEP], window=3)) < 0.2


def test_boundaries_that_are_not_there_or_not_measured_are_named():
    tokens = torch.randint(1, 8, (2, 16))
    report = ess_reg.measure(ToyAttention(False), tokens, kind="tolerance")[""]
    with pytest.raises(ValueError, match="no measured index lies within"):
        boundary_profile(report, tokens, [SEP])
    with pytest.raises(ValueError, match="separators must be a non-empty collection"):
        boundary_profile(report, tokens, [])
    with pytest.raises(ValueError, match="token ids of shape"):
        boundary_profile(report, tokens.double(), [SEP])


def separated_tokens() -> torch.Tensor:
    """Three sequences of 40 tokens with separators at 9, 21 and 30."""
    torch.manual_seed(0)
    tokens = torch.randint(1, 8, (3, 40))
    tokens[:, [9, 21, 30]] = SEP
    return tokens


def two_layers(first: nn.Module, second: nn.Module, names=("resets", "plain")) -> nn.Module:
    """A model of two layers that both read the tokens."""
    model = nn.ModuleDict(dict(zip(names, (first, second))))
    model.forward = lambda t: [model[names[0]](t), model[names[1]](t)]
    return model


def test_analyze_reports_per_head_and_the_boundary_drop():
    tokens, model = separated_tokens(), two_layers(ToyAttention(True), ToyAttention(False))
    result = ess_reg.analyze(model, tokens, separators=[SEP], window=3, kind="tolerance")
    assert set(result.reports) == {"resets", "plain"}
    for name, report in result.reports.items():
        assert torch.allclose(result.per_head[name], report.ess.values.mean(dim=(0, 2)))
        assert len(report.ess.indices) == 39  # every index
    assert result.modulation["resets"] == pytest.approx(1.0) and abs(result.modulation["plain"]) < 0.2
    table = result.table()
    assert "boundary drop" in table and table.count("\n") == 2


def test_analyze_at_chosen_indices_averages_those_and_still_reads_the_boundary_drop_exactly():
    tokens, model = separated_tokens(), two_layers(ToyAttention(True), ToyAttention(False))
    full = ess_reg.analyze(model, tokens, separators=[SEP], window=3, kind="tolerance")
    chosen = ess_reg.analyze(model, tokens, separators=[SEP], window=3, kind="tolerance",
                             indices=ess_reg.EvenIndices(5))
    even = torch.linspace(1, 39, 5).round().long()
    for name, report in chosen.reports.items():
        assert report.ess.indices.tolist() == even.tolist()  # the means are those of the chosen indices only
        columns = full.reports[name].ess.values[:, :, even - 1]
        assert torch.allclose(chosen.per_head[name], columns.mean(dim=(0, 2)))
        # the neighbourhoods of the separators were measured apart: the same drop as with every index
        assert chosen.modulation[name] == pytest.approx(full.modulation[name], abs=1e-12)
    listed = ess_reg.analyze(model, tokens, kind="tolerance", indices=[5, 17])
    assert listed.reports["plain"].ess.indices.tolist() == [5, 17] and not listed.modulation
    assert torch.allclose(chosen.profiles["resets"], full.profiles["resets"], atol=1e-12)
    assert chosen.profiles["resets"][3] == pytest.approx(0.0, abs=1e-9)  # offset 0: nothing crosses


def test_a_padded_group_without_a_separator_leaves_the_drop_to_the_groups_that_have_one():
    torch.manual_seed(0)
    tokens = torch.randint(1, 8, (3, 40))
    tokens[:2, [9, 21, 30]] = SEP
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[2, 30:] = 0  # the third example: 30 real tokens, no separator among them
    layer = ToyAttention(True)
    padded = ess_reg.analyze(layer, tokens, attention_mask=mask, separators=[SEP], window=3, kind="tolerance")
    alone = ess_reg.analyze(layer, tokens[:2], separators=[SEP], window=3, kind="tolerance")
    assert sorted(padded.by_length) == [30, 40]
    assert padded.modulation[""] == pytest.approx(alone.modulation[""], abs=1e-12)
    assert torch.allclose(padded.profiles[""], alone.profiles[""], atol=1e-12)


def test_analyze_says_how_far_it_is_layer_by_layer(caplog):
    tokens = torch.randint(1, 8, (2, 20))
    model = two_layers(ToyAttention(False), ToyAttention(True), names=("a", "b"))
    with caplog.at_level("INFO", logger="ess_reg"):
        ess_reg.analyze(model, tokens, kind="tolerance", progress=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("analyze: layer")]
    assert [line.split(" (")[0] for line in lines] == ["analyze: layer 1/2", "analyze: layer 2/2"]
    assert "2 example(s) of 20 tokens" in lines[-1]
