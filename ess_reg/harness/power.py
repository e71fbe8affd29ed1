"""How many pairs a paired study needs: the power of the tests the studies use, by simulation.

A study decides its seeds before running; the number should come from the power of the test it
will run at the effect it hopes to see. :func:`paired_power` simulates that study many times and
counts how often the test rejects at ``alpha``: each simulated study draws ``n`` per-pair
differences, either from a normal law (``mean``, ``sd``) or by resampling a pilot's differences
(with replacement, shifted to ``mean`` when one is given). The pilot form matters for these
studies: a penalty that rescues some seeds and leaves the rest at chance gives differences that
are far from normal (a few large ones, many near zero), and a normal law of the same mean and
sd misstates the power of both tests.

Tests, as :mod:`ess_reg.harness.stats` runs them: ``"sign_flip"`` (the paired permutation test
of the mean: exact up to 2^16 sign patterns, else random ones, where a single study is exact up
to 50 pairs; at the 2000 resamples used here that changes a simulated p by a Monte Carlo error of
about 0.005 at 0.05, small beside the power's own) and ``"sign"`` (the exact sign
test, ties dropped). :func:`pairs_needed` finds the smallest ``n`` with the power asked for.
The estimate's own Monte Carlo standard error is ``sqrt(power (1 - power) / simulations)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .stats import EXACT_SIGN_FLIPS, _array

__all__ = ["TESTS", "paired_power", "pairs_needed"]

TESTS = ("sign_flip", "sign")
_CHUNK = 64  # simulated studies per block of the exact sign-flip enumeration (2^16 x 64 sums)


def _draw(rng: np.random.Generator, n: int, simulations: int, differences, mean, sd) -> np.ndarray:
    """``(n, simulations)`` per-pair differences of the simulated studies."""
    if differences is not None:
        d = _array(differences, "differences")
        if len(d) < 2:
            raise ValueError("a pilot needs at least 2 differences to resample")
        if mean is not None:
            d = d - d.mean() + mean
        return rng.choice(d, size=(n, simulations), replace=True)
    return rng.normal(mean, sd, size=(n, simulations))


def _sign_p(d: np.ndarray) -> np.ndarray:
    """Exact two-sided sign test per column (ties dropped): the null is symmetric, so its p is
    twice the smaller tail, at most 1 (what scipy's binomtest gives at 0.5)."""
    from scipy.stats import binom

    higher, lower = (d > 0).sum(0), (d < 0).sum(0)
    untied = higher + lower
    p = np.minimum(1.0, 2 * binom.cdf(np.minimum(higher, lower), untied, 0.5))
    return np.where(untied == 0, 1.0, p)


def _sign_flip_p(d: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Two-sided sign-flip p per column: every sign pattern up to 2^16 of them, as
    stats.paired_test computes it, else ``resamples`` random ones ((hits + 1) / (resamples + 1));
    stats.paired_test counts up to 50 pairs exactly, too slow to repeat for thousands of studies."""
    n, simulations = d.shape
    observed = np.abs(d.sum(0))
    tolerance = 1e-12 * np.maximum(1.0, observed)
    if n <= EXACT_SIGN_FLIPS:
        patterns = (((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1).astype(np.float64)
        p = np.empty(simulations)
        for start in range(0, simulations, _CHUNK):
            part = slice(start, start + _CHUNK)
            p[part] = (np.abs(patterns @ d[:, part]) >= observed[part] - tolerance[part]).mean(0)
        return np.where((d == 0).all(0), 1.0, p)
    signs = rng.choice([-1.0, 1.0], size=(resamples, n))
    hits = (np.abs(signs @ d) >= observed - tolerance).sum(0)
    return np.where((d == 0).all(0), 1.0, (hits + 1) / (resamples + 1))


def paired_power(n: int, *, mean: float | None = None, sd: float | None = None,
                 differences: Sequence[float] | None = None, alpha: float = 0.05, test: str = "sign_flip",
                 simulations: int = 2000, resamples: int = 2000, seed: int = 0) -> float:
    """The share of ``simulations`` studies of ``n`` pairs in which ``test`` gives p <= ``alpha``.

    Give ``mean`` and ``sd`` (a normal law of per-pair differences) or a pilot's ``differences``
    (resampled; shifted to ``mean`` when it is given: the power at another effect of the same
    shape)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive number of pairs, got {n!r}")
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose one of {TESTS}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if differences is None and (mean is None or sd is None):
        raise ValueError("give mean and sd (a normal law) or a pilot's differences")
    if differences is None and not sd >= 0:
        raise ValueError(f"sd must be >= 0, got {sd}")
    for name, value in (("simulations", simulations), ("resamples", resamples)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive count, got {value!r}")
    rng = np.random.default_rng(seed)
    d = _draw(rng, n, simulations, differences, mean, sd)
    p = _sign_p(d) if test == "sign" else _sign_flip_p(d, resamples, rng)
    return float((p <= alpha).mean())


def pairs_needed(power: float = 0.8, *, max_pairs: int = 200, **options) -> int | None:
    """The smallest number of pairs whose :func:`paired_power` (same ``options``) reaches ``power``,
    searched by doubling and then bisection (power grows with n, up to the Monte Carlo noise and the
    steps of exact tests); None when ``max_pairs`` does not reach it."""
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    reaches = {}

    def enough(n: int) -> bool:
        if n not in reaches:
            reaches[n] = paired_power(n, **options) >= power
        return reaches[n]

    high = 2
    while not enough(high):
        if high >= max_pairs:
            return None
        high = min(2 * high, max_pairs)
    low = high // 2  # not enough (or 1, never enough for a two-sided test at a usual alpha)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high
