"""The power of the paired tests, against what is known without simulating: the exact sign
test's power is a binomial sum, and no two-sided test on 5 pairs can reach p < 0.0625."""

import math

import pytest

pytest.importorskip("scipy")
from scipy.stats import binom, norm  # noqa: E402

from ess_reg.harness.power import paired_power, pairs_needed  # noqa: E402


def exact_sign_power(n: int, q: float, alpha: float) -> float:
    """P(reject) of the two-sided sign test when each pair is higher with probability q."""
    return sum(binom.pmf(k, n, q) for k in range(n + 1)
               if min(1.0, 2 * binom.cdf(min(k, n - k), n, 0.5)) <= alpha)


def test_sign_test_power_is_the_binomial_sum():
    n, mean, sd, alpha, simulations = 12, 0.3, 0.5, 0.05, 4000
    expected = exact_sign_power(n, norm.cdf(mean / sd), alpha)
    got = paired_power(n, mean=mean, sd=sd, alpha=alpha, test="sign", simulations=simulations)
    assert abs(got - expected) < 4 * math.sqrt(expected * (1 - expected) / simulations)


def test_five_pairs_never_reach_five_percent_and_six_pairs_of_one_sign_always_do():
    for test in ("sign_flip", "sign"):
        assert paired_power(5, mean=1.0, sd=0.01, test=test, simulations=200) == 0.0
        assert paired_power(6, mean=1.0, sd=0.01, test=test, simulations=200) == 1.0
        assert pairs_needed(0.8, mean=1.0, sd=0.01, test=test, simulations=200) == 6
        # a pilot of positive differences resampled: the same
        assert pairs_needed(0.8, differences=[0.2, 0.5, 0.1], test=test, simulations=200) == 6


def test_no_effect_rejects_at_most_alpha_and_a_larger_effect_more_often():
    simulations, alpha = 2000, 0.05
    for n in (10, 20):  # exact enumeration, then random sign patterns
        size = paired_power(n, mean=0.0, sd=1.0, alpha=alpha, simulations=simulations)
        assert size <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / simulations)
    small, large = (paired_power(12, mean=m, sd=1.0, simulations=simulations) for m in (0.3, 0.9))
    assert small < large


def test_a_pilot_keeps_its_shape_where_a_normal_law_does_not():
    # 3 rescued seeds of 10 (+0.6), the rest unmoved (ties): resampled, the sign test rejects when
    # the m untied pairs of a study (all higher) give 2 / 2^m <= 0.05, i.e. m >= 6: a binomial
    # sum. A normal law of the same mean and sd has no ties and another power.
    pilot = [0.6, 0.6, 0.6] + [0.0] * 7
    n, simulations = 12, 4000
    expected = sum(binom.pmf(m, n, 0.3) for m in range(6, n + 1))
    got = paired_power(n, differences=pilot, test="sign", simulations=simulations)
    assert abs(got - expected) < 4 * math.sqrt(expected * (1 - expected) / simulations)
    mean, sd = 0.18, math.sqrt(sum((x - 0.18) ** 2 for x in pilot) / 9)
    normal = exact_sign_power(n, norm.cdf(mean / sd), 0.05)
    assert abs(normal - expected) > 0.1
    # moved to mean 0 the pilot has (about) no power
    assert paired_power(16, differences=pilot, mean=0.0, simulations=500) < 0.15


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown test"):
        paired_power(8, mean=0.1, sd=1, test="t")
    with pytest.raises(ValueError, match="give mean and sd"):
        paired_power(8, mean=0.1)
    with pytest.raises(ValueError, match="positive number of pairs"):
        paired_power(0, mean=0.1, sd=1)
    with pytest.raises(ValueError, match="at least 2 differences"):
        paired_power(8, differences=[0.1])
    with pytest.raises(ValueError, match="power must lie"):
        pairs_needed(1.5, mean=0.1, sd=1)
