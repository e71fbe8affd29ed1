"""ESS-guided state compression: dropping the coordinates a model does not use loses nothing,
dropping one it uses loses accuracy, and the energies are the coordinates' operators' norms."""

import pytest
import torch

from ess_reg import StateSpaceOperator
from ess_reg.compression import (StateCompressible, StateMergeable, compress_state, coordinate_energy, state_energy,
                                 state_size_from_ess)
from ess_reg.models import build_mixer
from ess_reg.models.lm import LanguageModel

TOKENS = 32
ACTIVE = 5  # coordinates in use per head / channel; the others carry nothing


def _model(mixer: str, state: int = 8, **kwargs) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(vocab_size=TOKENS, d_model=16, n_layers=2, mixer=mixer, state_size=state,
                         mixer_kwargs=kwargs).double()


def _silence(mixer, active: int) -> None:
    """Make every coordinate past ``active`` contribute nothing: zero input into it."""
    with torch.no_grad():
        if hasattr(mixer, "k"):  # linear attention: the key rows of those features
            w = mixer.k.weight.view(mixer.num_heads, mixer.feature_size, -1)
            w[:, active:] = 0
            if mixer.feature_map == "elu":  # elu(x) + 1 is 0 only far below zero
                mixer.k.bias.view(mixer.num_heads, mixer.feature_size)[:, active:] = -1e4
        elif hasattr(mixer, "x_proj"):  # s6: the rows of x_proj that make B
            r, n = mixer.dt_rank, mixer.d_state
            mixer.x_proj.weight[r + active: r + n] = 0
            # at Mamba's init the skip D and small steps dt drown the state's part of the output:
            # make it the part that matters, so that losing a coordinate shows
            mixer.D.zero_()
            mixer.dt_proj.bias.add_(4.0)
            mixer.x_proj.weight[r:].mul_(4.0)
        else:  # s4d: B
            mixer.B[:, active:] = 0


def test_the_energies_are_the_norms_of_each_coordinate_s_operator():
    torch.manual_seed(1)
    log_decay = -torch.rand(2, 3, 10, 4, dtype=torch.float64)
    B, C = torch.randn(2, 3, 10, 4, dtype=torch.float64), torch.randn(2, 3, 10, 4, dtype=torch.float64)
    energy = coordinate_energy(StateSpaceOperator(log_decay, B, C))
    assert energy.shape == (2, 3, 4)
    for n in range(4):
        alone = StateSpaceOperator(log_decay[..., n:n + 1], B[..., n:n + 1], C[..., n:n + 1]).materialize()
        torch.testing.assert_close(energy[..., n], alone.square().sum((-2, -1)))


@pytest.mark.parametrize("mixer, kwargs", [("la", {"num_heads": 2}), ("gla", {"num_heads": 2}),
                                           ("wla", {"num_heads": 2}), ("la", {"feature_map": "elu", "bias": True}),
                                           ("s6", {}), ("s4d", {})])
def test_a_model_of_known_rank_loses_nothing_down_to_it_and_loses_accuracy_below(mixer, kwargs):
    model = _model(mixer, **kwargs)
    for block in model.blocks:
        _silence(block.mixer, ACTIVE)
    tokens = torch.randint(0, TOKENS, (8, 24))
    with torch.no_grad():
        reference = model(tokens)
    energies = state_energy(model, tokens)
    assert len(energies) == 2
    for energy in energies.values():  # the silent coordinates carry no energy, the others do
        assert torch.all(energy[:, ACTIVE:] == 0) and torch.all(energy[:, :ACTIVE].sum(0) > 0)
    worst = state_size_from_ess(model, tokens)
    typical = state_size_from_ess(model, tokens, indices=[12], measure="entropy")
    assert set(worst.values()) <= set(range(1, ACTIVE + 1))
    assert all(1 <= typical[name] <= worst[name] for name in worst)  # an entropy-ESS never exceeds the rank

    at_rank = _model(mixer, **kwargs)
    at_rank.load_state_dict(model.state_dict())
    cuts = compress_state(at_rank, tokens, ACTIVE)
    for cut in cuts.values():
        assert (cut.before, cut.after) == (8, ACTIVE) and torch.all(cut.kept == torch.arange(ACTIVE))
        torch.testing.assert_close(cut.energy_kept, torch.ones_like(cut.energy_kept))
    assert all(block.mixer.state_size() == ACTIVE for block in at_rank.blocks)
    with torch.no_grad():
        torch.testing.assert_close(at_rank(tokens), reference)  # nothing lost

    below = _model(mixer, **kwargs)
    below.load_state_dict(model.state_dict())
    cuts = compress_state(below, tokens, ACTIVE - 2)
    assert all(cut.energy_kept.min() < 1 for cut in cuts.values())
    with torch.no_grad():
        logits = below(tokens)
    # "accuracy" against the uncompressed model's own predictions: every one kept at its rank,
    # not below it
    agreement = (logits.argmax(-1) == reference.argmax(-1)).double().mean()
    assert agreement < 1 and (logits - reference).abs().max() > 1e-3


def test_the_coordinates_kept_are_the_ones_with_the_most_energy():
    model = _model("gla", num_heads=2)
    tokens = torch.randint(0, TOKENS, (4, 24))
    energies = state_energy(model, tokens)
    cuts = compress_state(model, tokens, 3)
    for name, cut in cuts.items():
        best = energies[name].topk(3, dim=-1).indices.sort(-1).values
        assert torch.equal(cut.kept, best)
        share = energies[name].gather(-1, best).sum(-1) / energies[name].sum(-1)
        torch.testing.assert_close(cut.energy_kept, share)
        assert "state 8 -> 3" in str(cut)


def test_bad_requests_are_named_and_change_nothing():
    model = _model("gla")
    tokens = torch.randint(0, TOKENS, (2, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"must be an int in 1\.\.8 \(its state\), got 9"):
        compress_state(model, tokens, 9)
    with pytest.raises(ValueError, match="size names \\['nope'\\]"):
        compress_state(model, tokens, {"nope": 2})
    taylor = _model("la", state=10, feature_map="taylor", normalize=True)
    with pytest.raises(ValueError, match="taylor feature map's features are products"):
        compress_state(taylor, tokens, 4)
    torch.manual_seed(0)
    attention = LanguageModel(vocab_size=TOKENS, d_model=16, n_layers=1, mixer="sa").double()
    with pytest.raises(ValueError, match="has no diagonal state-space layer"):
        compress_state(attention, tokens, 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_zoo_s_diagonal_mixers_follow_the_protocol():
    for name in ("la", "gla", "wla", "s6", "s4d"):
        assert isinstance(build_mixer(name, 16), StateCompressible), name
    assert not isinstance(build_mixer("sa", 16), StateCompressible)


def test_the_entropy_size_of_one_used_coordinate_is_one_and_bad_measures_are_named():
    model = _model("s4d")
    for block in model.blocks:
        _silence(block.mixer, 1)
    tokens = torch.randint(0, TOKENS, (4, 16))
    assert set(state_size_from_ess(model, tokens, measure="entropy").values()) == {1}
    assert set(state_size_from_ess(model, tokens).values()) == {1}
    with pytest.raises(ValueError, match="measure must be 'tolerance' or 'entropy', got 'median'"):
        state_size_from_ess(model, tokens, measure="median")


def _repeated_poles_s4d(distinct: int = 4, state: int = 8, dominant: bool = True) -> LanguageModel:
    """s4d whose state repeats ``distinct`` poles (each channel's operator has rank ``distinct``);
    ``dominant``: the two largest readouts on copies of one pole, so that the energy's top
    coordinates hold a pole twice and miss another; else every readout 1."""
    model = _model("s4d", state=state)
    with torch.no_grad():
        for block in model.blocks:
            m = block.mixer
            m.log_dt.zero_()  # poles 0.90, 0.61, 0.37, 0.14: far apart, so no three mimic four
            m.A_log.copy_(torch.tensor([0.1, 0.5, 1.0, 2.0]).log()[:distinct].repeat(state // distinct))
            m.B.fill_(1.0)
            if dominant:
                m.C.mul_(0.3)
                m.C[:, 0], m.C[:, distinct] = 3.0, 2.9
            else:
                m.C.fill_(1.0)
    return model


def _operators_of(model, tokens):
    from ess_reg.probe import capture_operators

    with torch.no_grad(), capture_operators(model) as capture:
        model(tokens)
    return {name: op.materialize() for name, op in capture.operators().items()}


def test_merging_a_time_invariant_state_is_exact_down_to_its_distinct_poles_where_dropping_is_not():
    tokens = torch.randint(0, TOKENS, (2, 24))
    merged, dropped = _repeated_poles_s4d(), _repeated_poles_s4d()
    before, out = _operators_of(merged, tokens), merged(tokens)
    cuts = compress_state(merged, tokens, 4, method="merge")
    after = _operators_of(merged, tokens)
    for name, cut in cuts.items():
        torch.testing.assert_close(after[name], before[name], atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(cut.energy_kept, torch.ones_like(cut.energy_kept), atol=1e-9, rtol=0)
        assert cut.method == "merge" and "energy reproduced (merged)" in str(cut)
        assert merged.get_submodule(name).state_size() == 4
    torch.testing.assert_close(merged(tokens), out, atol=1e-9, rtol=1e-9)
    compress_state(dropped, tokens, 4)  # the energy's top 4 hold pole 0 twice: one pole is lost
    lost = _operators_of(dropped, tokens)
    assert all((lost[name] - before[name]).norm() > 1e-3 * before[name].norm() for name in before)
    # one coordinate fewer than the distinct poles: the fit loses the least it can, and says so
    fewer = _repeated_poles_s4d(dominant=False)
    for cut in compress_state(fewer, tokens, 3, method="merge").values():
        assert (cut.energy_kept < 1 - 1e-5).all() and (cut.energy_kept > 0.99).all()


def test_fit_modes_refits_residues_to_the_whole_response_and_names_bad_requests():
    from ess_reg.compression import fit_modes

    torch.manual_seed(2)
    log_poles, residues = -torch.rand(3, 6, dtype=torch.float64) * 2, torch.randn(3, 6, dtype=torch.float64)
    kept, refit, fit = fit_modes(log_poles, residues, 6, 20)  # every mode kept: the same system
    assert torch.equal(kept, torch.arange(6).expand(3, 6))
    torch.testing.assert_close(refit, residues)
    kept, refit, fit = fit_modes(log_poles, residues, 2, 20)
    lags = torch.arange(20, dtype=torch.float64)[:, None, None]
    response = (residues * log_poles.mul(lags).exp()).sum(-1)  # (L, C)
    new = (refit * log_poles.gather(-1, kept).mul(lags).exp()).sum(-1)
    weights = (20 - lags[:, 0, 0])[:, None]
    torch.testing.assert_close(fit, 1 - ((response - new).square() * weights).sum(0)
                               / (response.square() * weights).sum(0))
    for args, message in (((log_poles, residues[:, :5], 2, 20), "must both be \\(C, N\\)"),
                          ((log_poles, residues, 7, 20), "size must be an int in 1..6"),
                          ((log_poles, residues, 2, 0), "length must be a positive int")):
        with pytest.raises(ValueError, match=message):
            fit_modes(*args)


def test_merging_is_refused_for_a_layer_that_is_not_time_invariant():
    model = _model("gla")
    tokens = torch.randint(0, TOKENS, (2, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="has no merge_state.*only a time-invariant layer can merge"):
        compress_state(model, tokens, 4, method="merge")
    with pytest.raises(ValueError, match="method must be one of \\('keep', 'merge'\\), got 'fold'"):
        compress_state(model, tokens, 4, method="fold")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(build_mixer("s4d", 16), StateMergeable) and not isinstance(build_mixer("s6", 16), StateMergeable)
