import pytest
import torch
from torch import nn

from ess_reg import DenseOperator, LayerESS, StateSpaceOperator
from ess_reg.layer_report import FailureThresholds, LayerReport, model_summary
from ess_reg.state_size import reachable_state, tss_at
from ess_reg.verdict import (COLLAPSE, HEALTHY, INCONCLUSIVE, NEAR_COLLAPSE, NEAR_SATURATION, SATURATION,
                             STILL_TRAINING, diagnose)
from ess_reg.contract import capturing
from ess_reg.probe import Adapter, capture_operators, ess_layers, measure, register_adapter

from factories import lm, tokens


class DelayLine(nn.Module):
    """A user's own mixer (not from the zoo): y_i = x_{i-k}, TSS k. Implements the contract."""

    def __init__(self, k):
        super().__init__()
        self.k = k
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * torch.nn.functional.pad(x, (0, 0, self.k, 0))[:, : x.shape[1]]

    def operator(self, x):
        b, length, d = x.shape
        T = self.scale * torch.diag(torch.ones(length - self.k, dtype=x.dtype), -self.k)
        return DenseOperator(T.expand(b, d, length, length))

    def state_size(self):
        return self.k


class UserModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.first, self.second = DelayLine(2), DelayLine(5)

    def forward(self, tokens):
        return self.second(self.first(self.embed(tokens)))


def test_user_model_with_the_contract_is_measured():
    model = UserModel()
    reports = measure(model, torch.randint(0, 10, (3, 24)), [3, 12, 20])
    assert list(reports) == ["first", "second"]
    first, second = reports["first"], reports["second"]
    assert torch.allclose(first.ess.values, torch.full((3, 4, 3), 2.0, dtype=torch.float32))
    # rank H_i = min(k, i, L - i): 3, 5 and 4 at indices 3, 12 and 20 of L = 24
    assert torch.allclose(second.ess.values, torch.tensor([3.0, 5.0, 4.0]).expand(3, 4, 3), atol=1e-5)
    assert first.utilization == pytest.approx(1.0) and first.state_use() == "full"
    assert second.utilization == pytest.approx(1.0)  # reach min(5, i, L - i) = 3, 5, 4: all of it used
    assert diagnose(reports).mode == SATURATION
    assert first.value_channels == 4 and first.tss_total == 8


def test_capture_builds_operators_from_one_forward_pass():
    model = UserModel()
    calls = []
    model.first.register_forward_hook(lambda *a: calls.append(1))
    with capture_operators(model) as capture:
        model(torch.randint(0, 10, (2, 8)))
    ops = capture.operators()
    assert len(calls) == 1 and set(ops) == {"first", "second"}
    assert ops["first"].T.shape == (2, 4, 8, 8)


def test_adapter_for_a_class_we_do_not_own():
    class Foreign(nn.Module):  # e.g. from another library: no operator() method
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    register_adapter(Foreign, Adapter(
        operator=lambda m, x: StateSpaceOperator(
            torch.zeros(x.shape[0], x.shape[2], x.shape[1], 1), torch.ones(x.shape[0], x.shape[2], x.shape[1], 1),
            torch.ones(x.shape[0], x.shape[2], x.shape[1], 1)),
        state_size=lambda m: 1))
    model = nn.Sequential(Foreign())
    report = measure(model, torch.randn(2, 10, 3))["0"]
    assert torch.allclose(report.ess.values, torch.ones(2, 3, 9))  # a running sum has a state of 1


def test_no_ess_layers_and_unknown_names_are_errors():
    with pytest.raises(ValueError, match="no ESS-capable layer"):
        ess_layers(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no ESS-capable layer named"):
        ess_layers(UserModel(), ["third"])
    with pytest.raises(ValueError, match="unknown ESS kind"):
        measure(UserModel(), torch.randint(0, 10, (1, 8)), kind="renyi")
    from ess_reg import analyze

    for empty in (torch.zeros(0, 8, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)):
        with pytest.raises(ValueError, match=rf"at least one sequence of at least 2 positions.*{tuple(empty.shape)}"):
            analyze(UserModel(), empty)


def test_a_padded_batch_is_measured_on_each_example_s_real_tokens_only():
    from ess_reg import analyze
    from ess_reg.models.lm import LanguageModel

    torch.manual_seed(0)
    model = LanguageModel(vocab_size=16, d_model=16, n_layers=1, mixer="gla", state_size=4).double()
    a, b = torch.randint(1, 16, (1, 8)), torch.randint(1, 16, (1, 6))
    padded = torch.zeros(3, 10, dtype=torch.long)
    padded[0, 2:], padded[1, :6], padded[2, 1:9] = a[0], b[0], a[0]  # left, right and both sides padded
    mask = padded != 0
    result = analyze(model, padded, attention_mask=mask)
    alone_a, alone_b = analyze(model, a), analyze(model, b)
    (name,) = result.per_head
    expected = (2 * 7 * alone_a.per_head[name] + 5 * alone_b.per_head[name]) / (2 * 7 + 5)
    torch.testing.assert_close(result.per_head[name], expected)
    assert sorted(result.by_length) == [6, 8] and result.reports is result.by_length[8]  # the larger group
    with pytest.raises(ValueError, match=r"example 1's real tokens are not one run \(a hole in attention_mask at 2\)"):
        analyze(model, padded, attention_mask=torch.tensor([[1] * 10, [1, 1, 0, 1] + [0] * 6, [1] * 10]))
    with pytest.raises(ValueError, match="example 0 has 1 real token"):
        analyze(model, padded, attention_mask=torch.tensor([[1] + [0] * 9, [1] * 10, [1] * 10]))
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, L\) = \(3, 10\) like the inputs, got \(3, 9\)"):
        analyze(model, padded, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError, match="0 \\(padding\\) and 1"):
        analyze(model, padded, attention_mask=mask.long() * 2)


def report(ess_per_index, tss, items=None, context_end=4, name="layer"):
    idx = torch.tensor([1, 4, 6])  # L = 8: reach min(i, L - i, TSS) = 1, 4, 2 for TSS >= 4
    values = torch.tensor(ess_per_index, dtype=torch.float32).expand(1, 2, 3)
    return LayerReport(name, LayerESS(values, idx, 1), tss_at(tss, idx, 8), 2, seq_len=8,
                       context_end=context_end, items_to_recall=items)


def test_utilization_is_ess_over_the_reachable_state():
    assert reachable_state(torch.tensor(16.0), torch.tensor([1, 4, 6]), 8).tolist() == [1, 4, 2]
    r = report([1.0, 2.0, 1.0], 16, items=4)
    assert r.utilization == pytest.approx(4 / 7)  # a ratio of sums: (1 + 2 + 1) / (1 + 4 + 2)
    assert r.ess_per_item == 0.5 and r.tss_per_item == 4.0  # read at the context end, index 4
    assert r.metrics() == pytest.approx({"ess": 4 / 3, "util": 4 / 7, "total": 8 / 3, "tss": 16.0,
                                         "per_kv": 0.5, "tss_kv": 4.0})
    # A full state of 2 is at its reach everywhere, even where TSS 16 was never reachable.
    assert report([1.0, 2.0, 2.0], 2).utilization == pytest.approx(1.0)


def test_the_verdict_is_the_model_s_and_agrees_with_the_task():
    full, unused, partial = report([1.0, 4.0, 2.0], 16), report([0.2, 0.4, 0.2], 16), report([1.0, 2.0, 1.0], 16)
    solved = diagnose({"a": unused, "b": unused}, accuracy=0.95)
    assert solved.mode == HEALTHY and "solves the task" in solved.reason  # never collapsed when it solves
    saturated = diagnose({"a": full, "b": partial}, accuracy=0.3)
    assert saturated.mode == SATURATION and "a uses ESS/reach 1.000 >= saturation 0.9" in saturated.reason
    assert saturated.layers == {"a": "full", "b": "partial"}
    collapsed = diagnose({"a": unused, "b": unused}, accuracy=0.3)
    assert collapsed.mode == COLLAPSE and "accuracy 0.300 < solved 0.9" in collapsed.reason
    assert diagnose({"a": partial}, accuracy=0.3).mode == INCONCLUSIVE
    assert diagnose({"a": partial}).mode == HEALTHY and diagnose({"a": unused}).mode == COLLAPSE
    # The configured thresholds decide, and they are quoted.
    strict = FailureThresholds(saturation=0.5, collapse=0.1, solved=0.99)
    verdict = diagnose({"a": partial}, accuracy=0.95, thresholds=strict)
    assert verdict.mode == SATURATION and ">= saturation 0.5" in verdict.reason
    assert model_summary({"a": full, "b": unused})["util"] == pytest.approx((1 + 0.8 / 7) / 2)
    with pytest.raises(ValueError, match="collapse < saturation"):
        FailureThresholds(saturation=0.2, collapse=0.5)
    with pytest.raises(ValueError, match="solved must be a number in"):
        FailureThresholds(solved=1.5)
    with pytest.raises(ValueError, match="accuracy must be"):
        diagnose({"a": partial}, accuracy=2.0)


def at_utilization(u):
    """A layer whose utilization is ``u`` (reach 1 + 4 + 2 = 7 over the three indices)."""
    return report([1.0, 7 * u - 3.0, 2.0], 16)


def test_the_verdict_holds_at_its_edges():
    # 0.899 is near saturation, and its reason never reads "0.90 >= 0.9".
    edge = diagnose({"a": at_utilization(0.899)}, accuracy=0.03)
    assert edge.mode == NEAR_SATURATION and "0.899" in edge.reason and "(0.85-0.95)" in edge.reason
    # Two equivalent runs at chance, utilization 0.905 and 0.867: the same verdict.
    assert {diagnose({"a": at_utilization(u)}, accuracy=0.03).mode for u in (0.905, 0.867)} == {NEAR_SATURATION}
    assert diagnose({"a": at_utilization(0.96)}, accuracy=0.03).mode == SATURATION
    assert diagnose({"a": at_utilization(0.22)}, accuracy=0.03).mode == NEAR_COLLAPSE
    assert diagnose({"a": at_utilization(0.14)}, accuracy=0.03).mode == COLLAPSE
    assert diagnose({"a": at_utilization(0.5)}, accuracy=0.03).mode == INCONCLUSIVE
    with pytest.raises(ValueError, match="closes the gap"):
        FailureThresholds(saturation=0.5, collapse=0.4, margin=0.06)


def test_a_run_whose_loss_still_falls_is_still_training():
    from ess_reg.verdict import loss_still_falling

    # A known curve: over the second half (steps 500-1000) the loss falls 2.0 -> 1.0 on a line: 50%.
    falling = [(0, 4.0), (250, 3.0), (500, 2.0), (750, 1.5), (1000, 1.0)]
    assert loss_still_falling(falling) == "loss still falling: 50% over steps 500-1000 (> 5%)"
    plateau = [(0, 4.8), (50, 4.18), (100, 4.175), (150, 4.173), (200, 4.172)]   # on its plateau: flat
    noisy = [(0, 4.0), (100, 1.0), (200, 1.02), (300, 0.97), (400, 1.01), (500, 0.99)]
    assert loss_still_falling(plateau) is None and loss_still_falling(noisy) is None
    assert loss_still_falling([(0, 4.0), (100, 1.0)]) is None  # too few evaluations to tell
    verdict = diagnose({"a": at_utilization(0.1)}, accuracy=0.5, loss_curve=falling)
    assert verdict.mode == STILL_TRAINING and "too early to judge" in verdict.reason
    assert diagnose({"a": at_utilization(0.1)}, accuracy=0.5, loss_curve=plateau).mode == COLLAPSE
    assert diagnose({"a": at_utilization(0.1)}, accuracy=0.95, loss_curve=falling).mode == HEALTHY  # solved wins


def test_state_space_mixers_hand_over_the_operator_of_their_forward_pass(monkeypatch):
    model = lm("gla", vocab_size=16, d_model=8, feature_dim=4)
    x = tokens(batch=5, length=12, vocab_size=16)
    with capture_operators(model) as capture:
        model(x)
    calls = []
    mixer_cls = type(model.blocks[0].mixer)
    original = mixer_cls.operator_and_values
    monkeypatch.setattr(mixer_cls, "operator_and_values",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    ops = capture.operators(batch_limit=3)
    assert not calls  # nothing rebuilt: the forward pass's operators are reused
    rebuilt = model.blocks[1].mixer.operator(capture.inputs["blocks.1.mixer"][:3])
    assert ops["blocks.1.mixer"].batch_shape == (3, 2)
    assert torch.allclose(ops["blocks.1.mixer"].materialize(), rebuilt.materialize(), atol=1e-6)
    # The capture listens only while open, and leaves nothing on the layers.
    kept = dict(capture.handed)
    assert set(kept) == {"blocks.0.mixer", "blocks.1.mixer"}
    model(x)
    assert capture.handed == kept
    assert not any(capturing(block.mixer) for block in model.blocks)
    assert all(set(vars(block.mixer)) == set(vars(fresh.mixer)) for block, fresh in
               zip(model.blocks, lm("gla", vocab_size=16, d_model=8, feature_dim=4).blocks))


def test_batch_head_keeps_shared_factors():
    shared = torch.zeros(1, 3, 6, 2)
    op = StateSpaceOperator(shared, torch.ones(4, 3, 6, 2), torch.ones(4, 3, 6, 2))
    head = op.batch_head(2)
    assert head.batch_shape == (2, 3) and head.log_decay.shape[0] == 1
    assert DenseOperator(torch.eye(5).expand(4, 2, 5, 5)).batch_head(3).T.shape == (3, 2, 5, 5)
    with pytest.raises(ValueError, match="positive int"):
        op.batch_head(0)


def test_a_probe_finds_its_layers_once_and_every_capture_reuses_them():
    from ess_reg import Probe
    model = lm("gla", n_layers=2)
    probe = Probe(model, indices=[3, 7])
    first = probe(tokens())

    def walked(*args, **kwargs):
        raise AssertionError("the model was walked again")

    model.named_modules = walked  # a later capture that searched the model for layers would fail here
    again = probe(tokens())
    assert list(again) == list(first) == ["blocks.0.mixer", "blocks.1.mixer"]
    for name in first:
        torch.testing.assert_close(again[name].ess.values, first[name].ess.values)


def test_a_probe_call_validates_each_layer_s_indices_once(monkeypatch):
    import ess_reg.indices
    from ess_reg import Probe
    from ess_reg.indices import resolve_indices

    probe = Probe(lm("gla", n_layers=2), indices=[3, 7, 11])
    checked = []
    real = ess_reg.indices._index_tensor
    monkeypatch.setattr(ess_reg.indices, "_index_tensor", lambda i: checked.append(i) or real(i))
    reports = probe(tokens())
    for report in reports.values():
        _ = report.reach, report.utilization  # the reach and the TSS read the same, already valid, indices
    assert len(checked) == 2  # one per layer, not once per consumer
    # The mark is void once the tensor changes in place: it is checked again, and refused.
    idx = resolve_indices([3, 7], 24)
    assert resolve_indices(idx, 24) is idx
    idx[0] = 30
    with pytest.raises(ValueError, match="indices must lie in 1..L-1"):
        resolve_indices(idx, 24)
    with pytest.raises(ValueError, match="indices must lie in 1..L-1"):
        resolve_indices(resolve_indices([20], 24), 16)  # valid for L = 24, not for L = 16


def test_a_certified_probe_says_which_path_measured_each_layer():
    from ess_reg import Probe, analyze

    model, inputs = UserModel(), torch.randint(0, 10, (1, 1024), generator=torch.Generator().manual_seed(0))
    exact = Probe(model, indices=[256, 512, 768])
    certified = Probe(model, indices=[256, 512, 768], certified=1e-3)
    expected, reports = exact(inputs), certified(inputs)
    assert exact.paths == {"first": "dense", "second": "dense"}
    # Blocks of rank <= 5 out of a bound of 256-512: the basis's first block spans them.
    assert certified.paths == {"first": "krylov", "second": "krylov"}
    for name in expected:
        assert torch.allclose(reports[name].ess.values, expected[name].ess.values, rtol=1e-3)
    analysis = analyze(model, inputs, indices=[256, 512, 768], certified=1e-3)
    assert analysis.paths == certified.paths and "krylov" in analysis.table()


@pytest.mark.parametrize("kwargs, message", [
    (dict(certified=0.0), "certified"),
    (dict(certified=1e-3, kind="soft_tolerance"), "kinds"),
    (dict(certified=1e-3, method="loop"), "no spectra options"),
])
def test_a_certified_probe_refuses_what_it_cannot_do(kwargs, message):
    from ess_reg import Probe

    with pytest.raises(ValueError, match=message):
        Probe(UserModel(), **kwargs)


def test_analyze_with_a_channel_limit_measures_the_drawn_heads_exactly_and_the_same_ones_throughout():
    from ess_reg import analyze

    model, x = lm("s6"), tokens(length=24)  # 2 x 16 = 32 channels per layer
    full = analyze(model, x, indices=[5, 12, 19])
    drawn = analyze(model, x, indices=[5, 12, 19], channel_limit=4)
    assert sorted(drawn.channels) == sorted(full.per_head) and full.channels == {}
    for name, chosen in drawn.channels.items():
        assert len(chosen) == 4 and chosen == sorted(set(chosen))
        # the drawn heads' ESS is exactly the full analysis' at those heads
        assert torch.allclose(drawn.per_head[name], full.per_head[name][chosen], atol=1e-6)
    assert drawn.channels == analyze(model, x, indices=[5, 12, 19], channel_limit=4).channels  # repeatable
    # A padded batch: every length group measures the same heads (their means stay comparable).
    mask = torch.ones(x.shape, dtype=torch.long)
    mask[0, 20:] = 0
    padded = analyze(model, x, attention_mask=mask, indices=[5, 12], channel_limit=4)
    for reports in padded.by_length.values():
        for name, report in reports.items():
            assert report.ess.values.shape[1] == 4
    alone = analyze(model, x[1:], indices=[5, 12], channel_limit=4)
    assert padded.channels == alone.channels
    with pytest.raises(ValueError, match="channel_limit"):
        analyze(model, x, channel_limit=0)


def test_analyze_keeps_the_exact_path_within_a_memory_budget():
    from ess_reg import analyze

    model, x = UserModel(), torch.randint(0, 10, (2, 96), generator=torch.Generator().manual_seed(0))
    roomy = analyze(model, x, indices=[20, 48, 70])
    tight = analyze(model, x, indices=[20, 48, 70], memory_budget=64 * 1024)  # forces small batches of SVDs
    for name in roomy.per_head:
        assert torch.allclose(tight.per_head[name], roomy.per_head[name], atol=1e-6)
    with pytest.raises(ValueError, match="memory_budget"):
        analyze(model, x, memory_budget=-1)
