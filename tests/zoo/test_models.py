import math

import pytest
import torch

from ess_reg import DeltaRuleOperator, DenseOperator, StateSpaceOperator, ToeplitzOperator, tolerance_ess
from ess_reg.state_size import tss_at
from ess_reg.models import MIXERS, build_mixer, init_schemes
from ess_reg.models.lm import LanguageModel
from ess_reg.models.sa import SoftmaxAttention

from factories import tokens

D, L = 8, 40
# name -> (registry name, kwargs): small instances, several chunks long (chunk sizes < L).
CASES = {
    "sa": ("sa", dict(num_heads=2)),
    "swa": ("swa", dict(num_heads=2, window=5)),
    "la": ("la", dict(num_heads=2, feature_dim=4, chunk_size=8)),
    "la_elu": ("la", dict(num_heads=2, feature_dim=4, feature_map="elu", normalize=True, chunk_size=8)),
    "la_taylor": ("la", dict(num_heads=2, feature_dim=3, feature_map="taylor", normalize=True, chunk_size=8)),
    "wla": ("wla", dict(num_heads=2, feature_dim=4, chunk_size=8)),
    "gla": ("gla", dict(num_heads=2, feature_dim=4, chunk_size=8)),
    "s6": ("s6", dict(d_state=4)),
    "s4d": ("s4d", dict(d_state=4)),
    "hyena": ("hyena", dict()),
    "hyena_explicit": ("hyena", dict(filter="explicit", max_len=64)),
    "deltanet": ("deltanet", dict(num_heads=2, feature_dim=4, chunk_size=8)),
    "gated_deltanet": ("gated_deltanet", dict(num_heads=2, feature_dim=4, chunk_size=8)),
    "mingru": ("mingru", dict()),
}
DELTA_RULE = ["deltanet", "gated_deltanet"]
STATE_SPACE = ["la", "la_elu", "la_taylor", "wla", "gla", "s6", "s4d", "mingru"]
JACOBIAN = {"gru": dict(hidden=3), "lstm": dict(hidden=2)}  # nonlinear: measured through their Jacobian
FINITE_STATE = STATE_SPACE + DELTA_RULE


def make(case, seed=0):
    torch.manual_seed(seed)
    name, kwargs = CASES[case]
    return build_mixer(name, D, **kwargs).double()


def inputs(seed=1, batch=2, length=L):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, D, generator=g, dtype=torch.float64)


def test_registry_has_the_thirteen_families():
    assert sorted(MIXERS) == sorted(["sa", "swa", "la", "wla", "gla", "s6", "s4d", "hyena", "deltanet",
                                     "gated_deltanet", "mingru", "gru", "lstm"])
    assert {CASES[c][0] for c in CASES} | set(JACOBIAN) == set(MIXERS)


@pytest.mark.parametrize("name", sorted(JACOBIAN))
def test_recurrent_mixers_rank_never_exceeds_their_state_and_reaches_it(name):
    torch.manual_seed(0)
    mixer = build_mixer(name, D, **JACOBIAN[name]).double()
    x = inputs(seed=4, length=14)
    assert mixer(x).shape == x.shape
    op = mixer.operator(x)  # the Jacobian: refused if the mixer looked ahead
    assert op.batch_shape == (2, 1) and op.J.shape == (2, 14, D, 14, D)
    ess = tolerance_ess(op, tol=1e-10)  # (2, 1, 13)
    state = mixer.state_size()
    assert state == {"gru": 3, "lstm": 4}[name]
    assert torch.all(ess <= state) and (ess == state).any()
    with pytest.raises(NotImplementedError, match="nonlinear"):
        mixer.operator_and_values(x)
    assert build_mixer(name, D, state_size=6).state_size() == 6  # the one knob: hidden (GRU), hidden / 2 (LSTM)


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_equals_operator_applied_to_values(case):
    mixer, x = make(case), inputs()
    y = mixer(x)
    assert y.shape == x.shape
    trace = mixer.operator_and_values(x)
    expected = trace.readout(trace.operator.materialize() @ trace.values)
    assert torch.allclose(y, expected, rtol=1e-6, atol=1e-9)
    kind = (StateSpaceOperator if case in STATE_SPACE else DeltaRuleOperator if case in DELTA_RULE
            else ToeplitzOperator if case.startswith("hyena") else DenseOperator)
    assert isinstance(trace.operator, kind)
    # the fast apply (FFT for a convolution, scans for recurrences) agrees with T itself
    assert torch.allclose(trace.operator.apply(trace.values), trace.operator.materialize() @ trace.values,
                          rtol=1e-6, atol=1e-9)
    batch_shape = trace.operator.batch_shape
    assert batch_shape[0] in (1, 2) and len(batch_shape) == 2  # (batch or 1 if shared, channels)


@pytest.mark.parametrize("case", sorted(CASES))
def test_causality(case):
    mixer, x = make(case), inputs()
    t = 17
    x2 = x.clone()
    x2[:, t:] = torch.randn_like(x2[:, t:])
    y, y2 = mixer(x), mixer(x2)
    assert torch.allclose(y[:, :t], y2[:, :t], atol=1e-12)
    assert not torch.allclose(y[:, t:], y2[:, t:])
    T = mixer.operator(x).materialize()
    assert torch.equal(torch.triu(T, 1), torch.zeros_like(T))


@pytest.mark.parametrize("case", FINITE_STATE + ["swa"])
def test_finite_state_rank_never_exceeds_tss_and_reaches_it(case):
    mixer = make(case)
    if case == "s4d":
        with torch.no_grad():  # well-separated modes: exp(-0.5 n), n = 1..4
            mixer.log_dt.fill_(math.log(0.5))
    x = inputs(seed=3)
    tss = tss_at(mixer.state_size(), None, L)
    # Counted on the materialized operator (the dense path), so nothing caps it at N by construction.
    ess = tolerance_ess(mixer.operator(x).materialize(), tol=1e-9)
    assert torch.all(ess <= tss + 1e-9)
    assert (ess == tss).any(), f"no index reached TSS={tss[0].item()} (max ESS {ess.max().item()})"


@pytest.mark.parametrize("case", FINITE_STATE)
def test_chunked_forward_equals_sequential_reference(case):
    mixer, x = make(case), inputs().requires_grad_()
    y = mixer(x)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), [x, *mixer.parameters()])
    y_ref = mixer.forward_reference(x)
    grads_ref = torch.autograd.grad((y_ref * weights).sum(), [x, *mixer.parameters()])
    assert torch.allclose(y, y_ref, rtol=1e-8, atol=1e-10)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, rtol=1e-7, atol=1e-9)


def test_heads_share_operator_across_value_channels():
    mixer = make("gla")
    op = mixer.operator(inputs())
    assert op.multiplicity == D // 2 and op.batch_shape == (2, 2)
    assert make("s6").operator(inputs()).multiplicity == 1


def test_s4d_operator_is_shared_by_the_batch():
    op = make("s4d").operator(inputs(batch=3))
    assert op.batch_shape == (1, D)


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_backbone_trains(mixer):
    torch.manual_seed(0)
    model = LanguageModel(vocab_size=12, d_model=16, n_layers=1, mixer=mixer,
                          mixer_kwargs={"max_len": 16} if mixer == "hyena" else None, short_conv=3)
    seq = tokens(seed=1, batch=8, length=16, vocab_size=12)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits = model(seq[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 12), seq[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]


def test_backbone_reports_size_and_tss():
    model = LanguageModel(vocab_size=10, d_model=16, n_layers=3, mixer="s6", mixer_kwargs={"d_state": 4})
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) > 0
    assert list(model.mixers()) == ["blocks.0.mixer", "blocks.1.mixer", "blocks.2.mixer"]
    assert torch.equal(model.total_tss(32, [5, 10]), torch.full((2,), 3 * 32 * 4.0, dtype=torch.float64))
    sa = LanguageModel(vocab_size=10, d_model=16, n_layers=1, mixer="sa")
    assert torch.equal(sa.total_tss(32, [4, 30]), torch.tensor([16 * 4.0, 16 * 2.0], dtype=torch.float64))


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        build_mixer("sa", 10, num_heads=3)
    with pytest.raises(ValueError, match="window must be a positive int"):
        build_mixer("swa", 8, window=0)
    with pytest.raises(ValueError, match="unknown feature_map"):
        build_mixer("la", 8, feature_map="relu")
    with pytest.raises(ValueError, match="positive feature map"):
        build_mixer("la", 8, normalize=True)
    with pytest.raises(ValueError, match="unknown mixer 'mamba'"):
        build_mixer("mamba", 8)
    with pytest.raises(ValueError, match="unknown a_init"):
        build_mixer("s6", 8, a_init="hippo")
    with pytest.raises(ValueError, match="needs max_len"):
        build_mixer("hyena", 8, filter="explicit")
    with pytest.raises(ValueError, match="unknown filter"):
        build_mixer("hyena", 8, filter="fft")
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        build_mixer("gla", 0)
    with pytest.raises(ValueError, match="exceeds the explicit filter's max_len"):
        build_mixer("hyena", 8, filter="explicit", max_len=4)(torch.randn(1, 6, 8))
    with pytest.raises(ValueError, match="gate_normalizer"):
        build_mixer("gla", 8, gate_normalizer=0)


@pytest.mark.parametrize("length,window", [(40, 5), (37, 5), (9, 1), (50, 16), (20, 16)])
def test_sliding_window_blocks_match_the_banded_mask(length, window):
    # Blocked forward (2 window < L) against the full score matrix with the banded mask, and
    # against the operator; ragged last blocks (37 = 7 * 5 + 2) and window 1 included.
    torch.manual_seed(0)
    mixer = build_mixer("swa", D, num_heads=2, window=window).double()
    x = inputs(length=length).requires_grad_()
    blocked = mixer(x)
    banded = SoftmaxAttention.forward(mixer, x)
    trace = mixer.operator_and_values(x)
    assert torch.allclose(blocked, banded, atol=1e-12)
    assert torch.allclose(blocked, trace.readout(trace.operator.materialize() @ trace.values), atol=1e-12)
    grad_blocked, = torch.autograd.grad(blocked.square().sum(), x)
    grad_banded, = torch.autograd.grad(banded.square().sum(), x)
    assert torch.allclose(grad_blocked, grad_banded, atol=1e-10)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_init_schemes_build_and_the_first_is_the_constructors_default(name):
    import inspect

    schemes = init_schemes(name)
    assert schemes and all(isinstance(s, dict) for s in schemes)
    defaults = inspect.signature(MIXERS[name]).parameters
    for key, value in schemes[0].items():  # the first scheme is what the mixer builds unasked
        assert defaults[key].default == value, (name, key)
    for scheme in schemes:
        torch.manual_seed(0)
        assert build_mixer(name, 16, **scheme)(torch.randn(1, 8, 16)).shape == (1, 8, 16)
    if len(schemes) > 1:  # under one seed, each scheme is a different model: another output
        x, outputs = torch.randn(1, 8, 16), []
        for scheme in schemes:
            torch.manual_seed(0)
            outputs.append(build_mixer(name, 16, **scheme)(x))
        assert all(not torch.allclose(outputs[0], other) for other in outputs[1:])
    with pytest.raises(ValueError, match="unknown mixer 'nope'"):
        init_schemes("nope")
