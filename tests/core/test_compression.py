"""ESS-guided state compression: dropping the coordinates a model does not use loses nothing,
dropping one it uses loses accuracy, and the energies are the coordinates' operators' norms."""

import pytest
import torch

from ess_reg import StateSpaceOperator
from ess_reg.compression import (StateCompressible, compress_state, coordinate_energy, state_energy,
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
