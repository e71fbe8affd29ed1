"""Statistics for studies that say no more than a handful of runs can show.

- paired comparisons (a treatment and its baseline on the same seeds): the exact sign test, the
  paired permutation (sign-flip) test of the mean difference, exact up to 50 pairs (2^50 sign
  patterns, counted by splitting the pairs in two halves), and a t-interval of the mean
  difference (:func:`paired_test`);
- unpaired comparisons: the two-sample permutation test and Welch's t-interval
  (:func:`unpaired_test`);
- how well a score separates two groups of runs (e.g. the runs that learn from those that do
  not): the AUC with the permutation test of the Mann-Whitney statistic and a BCa interval
  (:func:`auc_test`);
- rank correlations: Spearman with a permutation p-value (exact up to 8 points) and a BCa
  bootstrap interval, refused with a reason where the data cannot carry one
  (:func:`correlation_test`);
- Holm's step-down correction for a family of p-values (:func:`holm`).

The binomial, t and normal distributions and the BCa bootstrap come from scipy (``binomtest``,
``bootstrap``, ``scipy.stats.t``), a dependency of the ``train`` extra. The permutation tests
are a few vectorized lines here: exact by enumeration where the table is small (every sign
pattern, every split, every ordering), which scipy's ``permutation_test`` does not do for a
group of one run; Holm's correction too (scipy has none, and statsmodels, which has, would be a
large dependency for it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations, permutations

import numpy as np
import torch

__all__ = ["ranks", "pearson", "spearman", "bootstrap_interval", "mean_spread", "MIN_PAIRS", "MIN_POINTS",
           "PairedTest", "paired_test", "sampled_sign_flip_note", "UnpairedTest", "unpaired_test", "sign_test",
           "t_interval", "holm",
           "CorrelationTest", "correlation_test", "spearman_permutation_p", "smallest_paired_p", "accuracy_noise",
           "proportion_interval", "mcnemar_exact", "AucTest", "auc_test", "pairwise_auc"]

MIN_PAIRS = 8    # below: an interval of a mean difference is printed as unreliable
MIN_POINTS = 5   # below: no correlation is reported (4 points: an exact p-value can't go below 0.083)
EXACT_SIGN_FLIPS = 16   # paired permutation test enumerated exactly up to 2^16 sign patterns
SPLIT_SIGN_FLIPS = 50   # beyond that, exact up to 50 pairs by meeting in the middle (2^25 sums a half: ~1 GiB)
EXACT_PAIRINGS = 8      # Spearman permutation test enumerated exactly up to 8! orderings


def _vector(values: Sequence[float], name: str) -> torch.Tensor:
    x = torch.as_tensor(list(values), dtype=torch.float64)
    if x.dim() != 1:
        raise ValueError(f"{name} must be a sequence of numbers")
    return x


def _array(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(list(values), dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a sequence of numbers")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has a NaN or infinite value: {x.tolist()}")
    return x


def ranks(values: Sequence[float]) -> torch.Tensor:
    """Ranks from 1, ties sharing their average rank."""
    x = _vector(values, "values")
    order = torch.argsort(x, stable=True)
    r = torch.empty_like(x)
    r[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for value in torch.unique(x):  # average ranks of ties
        tied = x == value
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Linear correlation; NaN when either side is constant or has fewer than 3 values."""
    x, y = _vector(a, "a"), _vector(b, "b")
    if len(x) != len(y):
        raise ValueError(f"a and b must have the same length, got {len(x)} and {len(y)}")
    if len(x) < 3:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    denom = (x.square().sum() * y.square().sum()).sqrt()
    return math.nan if denom == 0 else float((x * y).sum() / denom)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation (Pearson of the ranks)."""
    return pearson(ranks(a).tolist(), ranks(b).tolist())


def bootstrap_interval(statistic: Callable[[list[int]], float], n: int, *, resamples: int = 2000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over ``resamples`` resamplings (with
    replacement) of ``n`` items; resamples where the statistic is undefined (NaN) are dropped."""
    if n < 3:
        return math.nan, math.nan
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(resamples):
        value = statistic(torch.randint(n, (n,), generator=g).tolist())
        if not math.isnan(value):
            values.append(value)
    if len(values) < resamples // 2:
        return math.nan, math.nan
    v = torch.tensor(values, dtype=torch.float64)
    tail = (1 - level) / 2
    return float(torch.quantile(v, tail)), float(torch.quantile(v, 1 - tail))


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    x = _vector(values, "values")
    if len(x) == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std()) if len(x) > 1 else 0.0


# ---------------------------------------------------------------------------------------------
# Comparisons


def sign_test(differences: Sequence[float]) -> tuple[int, int, int, float]:
    """Exact two-sided sign test: ``(higher, lower, ties, p)``; ties are dropped, as usual, and
    with no untied pair p is 1."""
    from scipy.stats import binomtest

    d = _array(differences, "differences")
    higher, lower = int((d > 0).sum()), int((d < 0).sum())
    untied = higher + lower
    p = 1.0 if untied == 0 else float(binomtest(higher, untied, 0.5).pvalue)
    return higher, lower, len(d) - untied, p


def mcnemar_exact(rescued: int, lost: int) -> float:
    """Exact two-sided McNemar p of paired yes/no outcomes: the sign test on the discordant pairs
    (``rescued``: no without, yes with the treatment; ``lost``: the reverse); 1 without any."""
    return sign_test([1.0] * rescued + [-1.0] * lost)[3] if rescued + lost else 1.0


def smallest_paired_p(n: int) -> float:
    """The smallest two-sided p-value an exact sign or sign-flip test can give on ``n`` pairs:
    2 / 2^n (0.0625 for 5 pairs: five pairs can never reach p < 0.05)."""
    return min(1.0, 2.0 / 2 ** n) if n > 0 else 1.0


def _two_sided(null: np.ndarray, observed: float) -> float:
    """The share of a null distribution at least as far from 0 as ``observed`` (ties count;
    a relative tolerance absorbs float rounding in sums of the same numbers in another order)."""
    tolerance = 1e-12 * max(1.0, abs(observed))
    return float((np.abs(null) >= abs(observed) - tolerance).mean())


def _signed_sums(d: np.ndarray) -> np.ndarray:
    """Every ``sum(s * d)`` over the 2^len(d) sign patterns ``s``, sorted. The set is its own mirror
    image exactly (rounding to nearest is symmetric under negation)."""
    sums = np.zeros(1)
    for value in d:
        sums = np.concatenate([sums + value, sums - value])
    return np.sort(sums)


def _split_sign_flip_p(d: np.ndarray, chunk: int = 1 << 22) -> float:
    """The exact two-sided sign-flip p of ``d`` without listing 2^n sums: each signed sum is
    ``a + b``, ``a`` one of the first half's 2^(n/2) signed sums and ``b`` one of the second's, so
    the patterns at least as far from 0 as the observed sum are counted with one sorted search per
    ``a`` (the searches run in order, which keeps them cheap). By the null's symmetry the lower
    tail has as many as the upper. The tolerance is :func:`_two_sided`'s."""
    observed = abs(float(d.sum()))
    threshold = observed - 1e-12 * max(1.0, observed)
    if threshold <= 0:
        return 1.0  # every pattern is at least as far from 0 as a sum of 0
    half = len(d) // 2
    first, second = _signed_sums(d[:half]), _signed_sums(d[half:])
    below = sum(int(np.searchsorted(second, threshold - first[start:start + chunk], side="left").sum())
                for start in range(0, len(first), chunk))  # pairs with a + b < threshold
    upper = len(first) * len(second) - below
    return min(1.0, 2 * upper / 2.0 ** len(d))


def sampled_sign_flip_note() -> str:
    """The line a report prints under a table whose sign-flip p was sampled (``exact`` False)."""
    return (f"Sign-flip p over more than {SPLIT_SIGN_FLIPS} pairs: from 20000 random sign patterns, not every "
            "one (a Monte Carlo standard error of about 0.0015 at p = 0.05).")


def _sign_flip_p(d: np.ndarray, resamples: int, seed: int) -> tuple[float, bool]:
    """Two-sided sign-flip test of the mean of ``d``, exact up to :data:`SPLIT_SIGN_FLIPS` pairs
    (every sign pattern listed up to 2^16 of them, counted by halves beyond), else ``resamples``
    random patterns ((hits + 1) / (resamples + 1))."""
    n = len(d)
    if n <= EXACT_SIGN_FLIPS:
        patterns = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        return _two_sided(patterns @ d, float(d.sum())), True
    if n <= SPLIT_SIGN_FLIPS:
        return _split_sign_flip_p(d), True
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(resamples, n))
    hits = _two_sided(signs @ d, float(d.sum())) * resamples
    return (hits + 1) / (resamples + 1), False


def _two_sample_p(x: np.ndarray, y: np.ndarray, resamples: int, seed: int) -> tuple[float, bool]:
    """Two-sided permutation test of mean(x) - mean(y): every split of the pooled values into
    groups of their sizes when there are at most ``resamples`` (exact), else random splits."""
    pooled, n = np.concatenate([x, y]), len(x)
    observed = float(x.mean() - y.mean())
    if math.comb(len(pooled), n) <= resamples:
        member = np.zeros((math.comb(len(pooled), n), len(pooled)), dtype=bool)
        for row, chosen in enumerate(combinations(range(len(pooled)), n)):
            member[row, list(chosen)] = True
        first = (member * pooled).sum(1) / n
        second = (~member * pooled).sum(1) / (len(pooled) - n)
        return _two_sided(first - second, observed), True
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((resamples, len(pooled))), axis=1)
    shuffled = pooled[order]
    null = shuffled[:, :n].mean(1) - shuffled[:, n:].mean(1)
    return (_two_sided(null, observed) * resamples + 1) / (resamples + 1), False


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student's t-interval of the mean: ``mean ± t_{n-1} s / sqrt(n)``; NaN below 2 values."""
    from scipy.stats import t

    x = _array(values, "values")
    if len(x) < 2:
        return math.nan, math.nan
    half = float(t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return float(x.mean()) - half, float(x.mean()) + half


@dataclass(frozen=True)
class PairedTest:
    """A treatment against its baseline, pair by pair (the same seed: same init and batches)."""

    n: int                            # pairs
    mean_difference: float
    higher: int                       # pairs where the treatment came out higher
    lower: int
    ties: int
    sign_p: float                     # exact two-sided sign test
    permutation_p: float              # two-sided sign-flip permutation test of the mean difference
    exact: bool                       # permutation_p enumerated every sign pattern
    interval: tuple[float, float]     # t-interval of the mean difference
    level: float = 0.95

    @property
    def reliable(self) -> bool:
        """Enough pairs for the interval to mean what it says (:data:`MIN_PAIRS`)."""
        return self.n >= MIN_PAIRS


def paired_test(differences: Sequence[float], *, level: float = 0.95, resamples: int = 20000,
                seed: int = 0) -> PairedTest:
    """Sign test, sign-flip permutation test (exact for up to :data:`SPLIT_SIGN_FLIPS` pairs, else
    ``resamples`` random sign patterns) and t-interval of the mean of per-pair ``differences``."""
    d = _array(differences, "differences")
    if len(d) < 1:
        raise ValueError("paired_test needs at least one pair")
    higher, lower, ties, sign_p = sign_test(d)
    perm_p, exact = (1.0, len(d) <= SPLIT_SIGN_FLIPS) if not d.any() else _sign_flip_p(d, resamples, seed)
    return PairedTest(len(d), float(d.mean()), higher, lower, ties, sign_p, perm_p, exact,
                      t_interval(d, level), level)


@dataclass(frozen=True)
class UnpairedTest:
    """Two groups of independent runs (different seeds, or seeds not shared)."""

    n: int
    n_baseline: int
    mean_difference: float
    permutation_p: float            # two-sample permutation test of the difference of means
    exact: bool
    interval: tuple[float, float]   # Welch's t-interval of the difference of means
    level: float = 0.95

    @property
    def reliable(self) -> bool:
        return min(self.n, self.n_baseline) >= MIN_PAIRS


def unpaired_test(a: Sequence[float], b: Sequence[float], *, level: float = 0.95, resamples: int = 20000,
                  seed: int = 0) -> UnpairedTest:
    """mean(a) - mean(b): two-sample permutation test (exact when every split of the pooled runs
    fits in ``resamples``) and Welch's t-interval (NaN when a side has fewer than 2 runs)."""
    from scipy.stats import t

    x, y = _array(a, "a"), _array(b, "b")
    if len(x) < 1 or len(y) < 1:
        raise ValueError("unpaired_test needs at least one run on each side")
    diff = float(x.mean() - y.mean())
    if np.ptp(np.concatenate([x, y])) == 0:
        p, exact = 1.0, True
    else:
        p, exact = _two_sample_p(x, y, resamples, seed)
    interval = (math.nan, math.nan)
    if len(x) >= 2 and len(y) >= 2:
        vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
        se = math.sqrt(vx + vy)
        if se == 0:
            interval = (diff, diff)
        else:  # Welch-Satterthwaite degrees of freedom
            dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
            half = float(t.ppf(0.5 + level / 2, dof)) * se
            interval = (diff - half, diff + half)
    return UnpairedTest(len(x), len(y), diff, p, exact, interval, level)


@dataclass(frozen=True)
class AucTest:
    """How well a score separates ``positive`` runs from ``negative`` ones."""

    n_positive: int
    n_negative: int
    auc: float                      # P(a positive scores above a negative), ties counting half
    p: float                        # two-sided permutation p of the Mann-Whitney statistic (AUC = 0.5)
    exact: bool
    interval: tuple[float, float]   # BCa bootstrap, each group resampled on its own
    level: float = 0.95


def pairwise_auc(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """The share of (a, b) pairs with a above b, ties counting half, along ``axis`` (batched)."""
    d = np.moveaxis(a, axis, -1)[..., :, None] - np.moveaxis(b, axis, -1)[..., None, :]
    return ((d > 0) + 0.5 * (d == 0)).mean(axis=(-1, -2))


def two_group_percentile_interval(x: np.ndarray, y: np.ndarray,
                                  statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], *, level: float = 0.95,
                                  resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(xs, ys)``, each group resampled on its own.

    ``x`` and ``y`` hold one run per row (extra columns, such as a run's two scores, stay
    together); ``statistic`` takes the ``(resamples, n, ...)`` resampled groups at once and
    returns ``(resamples,)`` values."""
    rng = np.random.default_rng(seed)
    xs = x[rng.integers(len(x), size=(resamples, len(x)))]
    ys = y[rng.integers(len(y), size=(resamples, len(y)))]
    values = statistic(xs, ys)
    tail = (1 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def auc_test(positive: Sequence[float], negative: Sequence[float], *, level: float = 0.95, resamples: int = 20000,
             bootstrap_resamples: int = 2000, seed: int = 0) -> AucTest:
    """The AUC of a score that should be higher on ``positive`` runs, its two-sided permutation p
    (the difference of mean ranks, ties at their average rank: the Mann-Whitney test, exact when
    every split of the pooled runs fits in ``resamples``, else that many random splits) and a BCa
    bootstrap interval (the percentile interval where BCa is undefined, as when the groups are
    separated in every resample; then it is [1, 1] or [0, 0] and says nothing beyond the p)."""
    import warnings

    from scipy.stats import bootstrap

    x, y = _array(positive, "positive"), _array(negative, "negative")
    if len(x) < 1 or len(y) < 1:
        raise ValueError(f"auc_test needs a run in each group, got {len(x)} positive and {len(y)} negative")
    auc = float(pairwise_auc(x, y))
    pooled = np.concatenate([x, y])
    if np.ptp(pooled) == 0:
        p, exact = 1.0, True
    else:
        r = ranks(pooled.tolist()).numpy()
        p, exact = _two_sample_p(r[:len(x)], r[len(x):], resamples, seed)
    interval = (math.nan, math.nan)
    if len(x) >= 2 and len(y) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = bootstrap((x, y), pairwise_auc, vectorized=True, n_resamples=bootstrap_resamples,
                           confidence_level=level, method="BCa", rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            interval = (float(ci.low), float(ci.high))
        else:
            interval = two_group_percentile_interval(x, y, pairwise_auc, level=level, resamples=bootstrap_resamples,
                                                     seed=seed)
    return AucTest(len(x), len(y), auc, p, exact, interval, level)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values for one family of tests, in the order given: the k-th
    smallest of m p-values is multiplied by (m - k + 1), kept monotone, capped at 1. NaN entries
    (tests not made) stay NaN and do not count in m."""
    p = [float(v) for v in pvalues]
    for v in p:
        if not (math.isnan(v) or 0 <= v <= 1):
            raise ValueError(f"p-values must lie in [0, 1], got {v}")
    made = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    m, out, running = len(made), [math.nan] * len(p), 0.0
    for k, (v, i) in enumerate(made):
        running = max(running, min(1.0, (m - k) * v))
        out[i] = running
    return out


# ---------------------------------------------------------------------------------------------
# Correlations


def spearman_permutation_p(x: Sequence[float], y: Sequence[float], *, resamples: int = 20000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's rho: the share of orderings of ``y`` whose |rho|
    reaches the observed one; every ordering for up to 8 points, else ``resamples`` random ones
    ((hits + 1) / (resamples + 1), so that p is never 0)."""
    rx, ry = ranks(x).numpy(), ranks(y).numpy()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    if denom == 0:
        return math.nan
    observed = abs(float(rx @ ry) / denom)
    tolerance = 1e-12  # orderings that tie the observed value count as reaching it
    if len(rx) <= EXACT_PAIRINGS:
        perms = np.array(list(permutations(range(len(ry)))))
        rhos = np.abs(ry[perms] @ rx) / denom
        return float((rhos >= observed - tolerance).mean())
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((resamples, len(ry))), axis=1)
    hits = int((np.abs(ry[perms] @ rx) / denom >= observed - tolerance).sum())
    return (hits + 1) / (resamples + 1)


@dataclass(frozen=True)
class CorrelationTest:
    """Spearman's rho of ``n`` points, its permutation p-value and BCa interval; or, where the
    data cannot carry a correlation, ``refused`` with the reason (and NaN numbers)."""

    n: int
    spearman: float
    pearson: float
    p: float
    interval: tuple[float, float]
    refused: str | None = None


def _bca_interval(x: np.ndarray, y: np.ndarray, resamples: int, level: float, seed: int) -> tuple[float, float]:
    """BCa bootstrap interval of Spearman's rho (pairs resampled); the percentile interval of the
    defined resamples where BCa is undefined."""
    import warnings

    from scipy.stats import bootstrap, rankdata

    def rho(a, b, axis=-1):
        ra, rb = rankdata(a, axis=axis), rankdata(b, axis=axis)
        ra = ra - ra.mean(axis=axis, keepdims=True)
        rb = rb - rb.mean(axis=axis, keepdims=True)
        den = np.sqrt((ra ** 2).sum(axis) * (rb ** 2).sum(axis))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (ra * rb).sum(axis) / np.where(den > 0, den, 1), np.nan)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = bootstrap((x, y), rho, paired=True, vectorized=True, n_resamples=resamples, confidence_level=level,
                       method="BCa", rng=np.random.default_rng(seed)).confidence_interval
    if np.isfinite(ci.low) and np.isfinite(ci.high):
        return float(ci.low), float(ci.high)
    # BCa is undefined when some resamples have no spread (a measure with few distinct values):
    # the percentile interval of the resamples where rho is defined
    return bootstrap_interval(lambda idx: spearman(y[idx].tolist(), x[idx].tolist()), len(x), resamples=resamples,
                              level=level, seed=seed)


def correlation_test(x: Sequence[float], y: Sequence[float], *, noise: float | None = None, resamples: int = 2000,
                     level: float = 0.95, seed: int = 0) -> CorrelationTest:
    """Spearman's rho of ``y`` (the target, e.g. accuracy) against ``x`` (a measure), with its
    two-sided permutation p-value and a BCa bootstrap interval. Refused, with the reason, when the
    points cannot carry a correlation: fewer than :data:`MIN_POINTS`, a side that does not vary,
    or a target whose range across the points is within its measurement ``noise`` (e.g. the
    sampling error of an accuracy measured on a finite set of answers)."""
    a, b = _array(x, "x"), _array(y, "y")
    if len(a) != len(b):
        raise ValueError(f"x and y must have the same length, got {len(a)} and {len(b)}")
    n = len(a)

    def refuse(reason: str) -> CorrelationTest:
        return CorrelationTest(n, math.nan, math.nan, math.nan, (math.nan, math.nan), reason)

    if n < MIN_POINTS:
        return refuse(f"{n} point{'s' if n != 1 else ''}, fewer than {MIN_POINTS}")
    if np.ptp(a) == 0:
        return refuse(f"the measure is the same ({a[0]:.4g}) at every point")
    if np.ptp(b) == 0:
        return refuse(f"the target is the same ({b[0]:.4g}) at every point")
    if noise is not None and np.ptp(b) <= noise:
        return refuse(f"the target varies by {np.ptp(b):.4f} across the {n} points, within its measurement "
                      f"noise ({noise:.4f})")
    rho = spearman(b.tolist(), a.tolist())
    p = spearman_permutation_p(a, b, resamples=max(resamples, 20000), seed=seed)  # p down to 5e-5: room for Holm
    return CorrelationTest(n, rho, pearson(b.tolist(), a.tolist()), p, _bca_interval(a, b, resamples, level, seed))


def accuracy_noise(accuracy: float, answers: int, level: float = 0.95) -> float:
    """The range two accuracies measured on ``answers`` answers each can differ by from sampling
    alone (the half-width of the normal interval of their difference): ``z sqrt(2 p (1 - p) / m)``,
    with p no closer to 0 or 1 than 1/m."""
    from scipy.stats import norm

    if answers < 1:
        raise ValueError(f"answers must be a positive count, got {answers}")
    p = min(max(accuracy, 1 / answers), 1 - 1 / answers)
    return float(norm.ppf(0.5 + level / 2)) * math.sqrt(2 * p * (1 - p) / answers)


def proportion_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a rate seen as ``successes`` of ``trials``: 0 of 5
    is [0, 0.52], not "never"."""
    from scipy.stats import binomtest

    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    ci = binomtest(successes, trials).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)
