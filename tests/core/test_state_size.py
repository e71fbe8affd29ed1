"""One knob for state size across the zoo: ``state_size`` sets each mixer's own knob so that its
TSS is that size, and the measured rank reaches it and never exceeds it."""

import math

import pytest
import torch

from ess_reg import tolerance_ess
from ess_reg.state_size import tss_at
from ess_reg.models import MIXERS, build_mixer, state_kwargs

D, L = 8, 40
FINITE = {"la": dict(num_heads=2), "wla": dict(num_heads=2), "gla": dict(num_heads=2), "s6": {}, "s4d": {},
          "swa": dict(num_heads=2), "la_taylor": dict(num_heads=2, feature_map="taylor", normalize=True),
          "deltanet": dict(num_heads=2), "gated_deltanet": dict(num_heads=2)}


@pytest.mark.parametrize("case", sorted(FINITE))
@pytest.mark.parametrize("size", [3, 6])
def test_state_size_is_the_tss_and_the_rank_reaches_it(case, size):
    name = case if case in MIXERS else case.split("_")[0]
    torch.manual_seed(0)
    mixer = build_mixer(name, D, size, **FINITE[case]).double()
    assert mixer.state_size() == size
    if name == "s4d":
        with torch.no_grad():  # slow modes, so that every one shows in the spectrum above the tolerance
            mixer.log_dt.fill_(math.log(0.2))
    x = torch.randn(2, L, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ess = tolerance_ess(mixer.operator(x).materialize(), tol=1e-12)  # dense path: nothing caps it at TSS
    tss = tss_at(mixer.state_size(), None, L)
    assert torch.all(ess <= tss + 1e-9) and (ess == size).any()


def test_mixers_without_a_finite_state_and_bad_sizes_are_refused():
    # gru and lstm: sized in tests/zoo/test_models.py (measured through their Jacobian); mingru: 1 per channel
    assert {n for n in MIXERS if n not in FINITE} == {"sa", "hyena", "mingru", "gru", "lstm"}
    with pytest.raises(ValueError, match="MinGRU's state is 1 per channel"):
        state_kwargs("mingru", 4)
    with pytest.raises(ValueError, match="state_size must be even"):
        state_kwargs("lstm", 5)
    for name in ("sa", "hyena"):
        with pytest.raises(ValueError, match="grows with the sequence"):
            state_kwargs(name, 8)
    with pytest.raises(ValueError, match="not a feature size of the 'taylor'"):
        state_kwargs("la", 7, feature_map="taylor")  # taylor sizes are 1 + d + d(d+1)/2: 3, 6, 10...
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="state_size must be a positive int"):
            state_kwargs("gla", bad)
    with pytest.raises(ValueError,
                       match="state_size=8 sets feature_dim=8 of gla, but it is also given as feature_dim=16"):
        build_mixer("gla", D, 8, feature_dim=16)
    assert build_mixer("gla", D, 8, feature_dim=8).state_size() == 8  # agreeing is fine
