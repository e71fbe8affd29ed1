"""The statistics of ess-report against hand computations, and their degenerate cases."""

import math
from types import SimpleNamespace as NS

import numpy as np
import pytest

from ess_reg.harness.comparison import compare_to_baseline
from ess_reg.harness.stats import (MIN_POINTS, accuracy_noise, auc_test, correlation_test, holm, paired_test, sign_test,
                                   smallest_paired_p, spearman_permutation_p, t_interval, unpaired_test)


def test_sign_test_is_the_exact_binomial_with_ties_dropped():
    assert sign_test([1, 2, 3, -1, -2]) == (3, 2, 0, 1.0)          # 3 of 5: nothing to see
    assert sign_test([0.1] * 5)[3] == pytest.approx(2 / 32)        # 5 of 5: 2 * (1/2)^5
    # 8 of 9 higher: 2 * (C(9,8) + C(9,9)) / 2^9 = 20 / 512
    assert sign_test([1] * 8 + [-1])[3] == pytest.approx(20 / 512)
    assert sign_test([1, 1, 0, -1]) == (2, 1, 1, 1.0)              # the tie is dropped, not counted
    assert sign_test([0, 0]) == (0, 0, 2, 1.0)                     # no untied pair: no evidence
    assert smallest_paired_p(5) == pytest.approx(0.0625) and smallest_paired_p(6) == pytest.approx(1 / 32)


def test_paired_permutation_test_enumerates_every_sign_pattern():
    everywhere = paired_test([1, 2, 3, 4, 5])
    assert everywhere.exact and everywhere.permutation_p == pytest.approx(2 / 32)  # only all-+ and all-- reach 15
    # d = (1, -2, 3, 4, 5), sum 11: the patterns whose |sum| >= 11 flip a subset of sum <= 2 of
    # (1, 2, 3, 4, 5) -- {}, {1}, {2} -- or their mirror images: 6 of 32.
    one_down = paired_test([1, -2, 3, 4, 5])
    assert one_down.permutation_p == pytest.approx(6 / 32)
    assert (one_down.higher, one_down.lower, one_down.ties, one_down.n) == (4, 1, 0, 5)
    assert one_down.sign_p == pytest.approx(12 / 32)  # 2 * (C(5,4) + C(5,5)) / 32
    assert not one_down.reliable  # 5 pairs: below MIN_PAIRS
    assert paired_test([0, 0, 0]).permutation_p == 1.0
    huge = paired_test([0.01 * (i % 7) - 0.02 for i in range(51)], resamples=4000)  # 2^51 patterns: sampled
    assert not huge.exact and 0 < huge.permutation_p <= 1


def exact_sign_flip_p(d: list[int]) -> float:
    """The sign-flip p of integer differences from the null's whole distribution: the counts of
    each signed sum are the coefficients of prod_i (x^-d_i + x^d_i), built one pair at a time."""
    offset = sum(abs(v) for v in d)
    counts = np.zeros(2 * offset + 1, dtype=np.int64)
    counts[offset] = 1
    for v in d:
        counts = np.roll(counts, v) + np.roll(counts, -v)  # no wrap: |sum| never exceeds offset
    observed = abs(sum(d))
    return counts[np.abs(np.arange(-offset, offset + 1)) >= observed].sum() / 2.0 ** len(d)


@pytest.mark.parametrize("n", [17, 30, 41])
def test_the_sign_flip_p_past_enumeration_is_exact(n):
    # Past 2^16 patterns the halves are counted: the p equals the null's exact distribution (ties at
    # the observed sum count), not a sample of it.
    rng = np.random.default_rng(n)
    d = [int(v) for v in rng.integers(-3, 5, size=n)]
    test = paired_test(d)
    assert test.exact and test.permutation_p == exact_sign_flip_p(d)
    # every pair up by 1: only the all-up and all-down patterns reach the observed sum
    assert paired_test([1.0] * n).permutation_p == 2 / 2 ** n


def test_t_intervals_match_the_textbook():
    lo, hi = t_interval([1, 2, 3])  # mean 2, s 1, t(0.975, 2) = 4.302653
    assert (lo, hi) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), rel=1e-6)
    assert paired_test([1, 2, 3]).interval == pytest.approx((lo, hi))
    assert all(math.isnan(v) for v in t_interval([1.0]))
    # Welch: equal variances and sizes give df = 2 (n - 1) = 4, se = sqrt(1/3 + 1/3)
    w = unpaired_test([4, 5, 6], [1, 2, 3])
    half = 2.776445 * math.sqrt(2 / 3)
    assert w.interval == pytest.approx((3 - half, 3 + half), rel=1e-6)


def test_unpaired_permutation_test_is_exact_on_small_tables():
    # 3 vs 3 completely separated: 2 of the C(6,3) = 20 splits are as extreme.
    assert unpaired_test([4, 5, 6], [1, 2, 3]).permutation_p == pytest.approx(2 / 20)
    # 3 vs 4: of the C(7,3) = 35 splits only the observed one is as far from 0 (the mirror split,
    # three small values against the rest, gives -0.305, not -0.395): p = 1 / 35
    assert unpaired_test([0.5, 0.52, 0.51], [0.1, 0.12, 0.11, 0.13]).permutation_p == pytest.approx(1 / 35)
    assert unpaired_test([0.9], [0.5, 0.6, 0.7, 0.8, 0.85]).permutation_p == pytest.approx(2 / 6)  # a group of one
    assert unpaired_test([1, 1], [1, 1]).permutation_p == 1.0


def test_holm_adjusts_step_down_and_skips_tests_not_made():
    # sorted 0.01, 0.03, 0.04, 0.5 with m = 4: 0.04, 0.09, max(0.08, 0.09) = 0.09, 0.5
    assert holm([0.01, 0.04, 0.03, math.nan, 0.5]) == pytest.approx([0.04, 0.09, 0.09, math.nan, 0.5], nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])


def test_spearman_permutation_p_is_exact_for_few_points():
    # a perfect order among 5 points: 2 of the 5! orderings reach |rho| = 1
    assert spearman_permutation_p([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == pytest.approx(2 / 120)
    assert math.isnan(spearman_permutation_p([1, 1, 1, 1, 1], [1, 2, 3, 4, 5]))


def test_correlations_are_refused_where_the_points_cannot_carry_one():
    few = correlation_test([1, 2, 3], [0.1, 0.2, 0.3])
    assert few.refused == f"3 points, fewer than {MIN_POINTS}" and math.isnan(few.spearman)
    assert "measure is the same" in correlation_test([2] * 6, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).refused
    assert "target is the same" in correlation_test([1, 2, 3, 4, 5], [0.3] * 5).refused
    # The README's sweep: three runs at chance, accuracy 0.028-0.031 on 2048 answers each.
    noise = accuracy_noise(0.03, 2048)
    assert noise == pytest.approx(1.959964 * math.sqrt(2 * 0.03 * 0.97 / 2048), rel=1e-6)
    at_chance = correlation_test([0.5, 0.6, 0.7, 0.8, 0.9], [0.028, 0.031, 0.029, 0.030, 0.031], noise=noise)
    assert "within its measurement noise" in at_chance.refused
    real = correlation_test([1, 2, 3, 4, 5, 6], [0.1, 0.3, 0.2, 0.5, 0.6, 0.9], noise=noise)
    assert real.refused is None and real.spearman == pytest.approx(1 - 6 * 2 / (6 * 35))  # d = (0, 1, -1, 0, 0, 0)
    assert real.interval[0] <= real.spearman <= real.interval[1] and 0 < real.p < 0.05


def test_a_comparison_reads_what_its_pairs_can_say():
    def seeded(label, values):
        return NS(label=label, runs=[NS(value=v, seed=i) for i, v in enumerate(values)])

    base = seeded("none", [0.80, 0.85, 0.90, 0.70, 0.75])
    treated = seeded("pen", [0.82, 0.88, 0.91, 0.74, 0.80])   # higher on 5 of 5 seeds
    c = compare_to_baseline([base, treated], lambda g: g.label == "none", lambda g: (), lambda r: r.value,
                            pair=lambda r: r.seed)[0]
    assert c.paired and c.test.higher == 5 and c.p == pytest.approx(1 / 16)
    assert c.reading() == "no clear difference: 5 pairs cannot reach p < 0.05"
    ten_base = seeded("none", [0.5] * 10)
    ten = seeded("pen", [0.55 + 0.001 * i for i in range(10)])
    c10 = compare_to_baseline([ten_base, ten], lambda g: g.label == "none", lambda g: (), lambda r: r.value,
                              pair=lambda r: r.seed)[0]
    assert c10.p == pytest.approx(2 / 1024) and c10.reading() == "higher" and c10.test.reliable


def test_mcnemar_exact_is_the_sign_test_on_the_discordant_pairs():
    from ess_reg.harness.stats import mcnemar_exact
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 0) == pytest.approx(0.25)           # 2 * (1/2)^3
    assert mcnemar_exact(4, 1) == pytest.approx(0.375)          # 2 * P(X <= 1), X ~ B(5, 1/2)
    assert mcnemar_exact(7, 1) == pytest.approx(mcnemar_exact(1, 7))


def test_auc_test_is_the_mann_whitney_test():
    from scipy.stats import mannwhitneyu

    # Four learners all above four failures: AUC 1, and only 2 of the C(8, 4) = 70 splits of the
    # pooled ranks are as far apart (this one and its mirror).
    split = auc_test([0.5, 0.6, 0.7, 0.8], [0.1, 0.2, 0.3, 0.4])
    assert split.auc == 1.0 and split.exact and split.p == pytest.approx(2 / 70)
    assert auc_test([0.1, 0.2], [0.5, 0.6]).auc == 0.0                 # the score points the other way
    # Ties count half: one of four pairs tied, three won.
    assert auc_test([1.0, 2.0], [1.0, 0.0]).auc == pytest.approx(3.5 / 4)
    assert auc_test([1.0, 1.0], [1.0, 1.0]).p == 1.0                   # no spread: no evidence
    # Without ties it is scipy's exact Mann-Whitney test, in value and p.
    x, y = [0.9, 0.2, 1.4, 0.7, 1.1, 0.35, 0.8], [0.1, -0.3, 0.5, 0.25, 0.6]
    mine, theirs = auc_test(x, y), mannwhitneyu(x, y, method="exact")
    assert mine.auc == pytest.approx(theirs.statistic / (len(x) * len(y)))
    assert mine.p == pytest.approx(theirs.pvalue)
    low, high = mine.interval
    assert low <= mine.auc <= high and 0 <= low and high <= 1
    with pytest.raises(ValueError, match="a run in each group"):
        auc_test([0.1, 0.2], [])


def test_two_group_interval_keeps_a_run_s_columns_together_and_covers_a_clear_difference():
    import numpy as np

    from ess_reg.harness.stats import two_group_percentile_interval

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 2)), rng.normal(size=(9, 2))
    x[:, 1], y[:, 1] = x[:, 0], y[:, 0]  # each run's two scores equal: their difference is 0 in every resample

    def column_gap(a, b):
        return (a[..., 0].mean(-1) - b[..., 0].mean(-1)) - (a[..., 1].mean(-1) - b[..., 1].mean(-1))

    assert two_group_percentile_interval(x, y, column_gap) == (0.0, 0.0)
    low, high = two_group_percentile_interval(x[:, 0] + 5, y[:, 0], lambda a, b: a.mean(-1) - b.mean(-1))
    observed = (x[:, 0] + 5).mean() - y[:, 0].mean()
    assert 0 < low < observed < high
