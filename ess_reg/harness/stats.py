"""Small statistics for studies: rank and linear correlation, and bootstrap intervals.

Plain torch (float64), so the harness needs no statistics package; ties get average ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["ranks", "pearson", "spearman", "bootstrap_interval", "mean_spread"]


def _vector(values: Sequence[float], name: str) -> torch.Tensor:
    x = torch.as_tensor(list(values), dtype=torch.float64)
    if x.dim() != 1:
        raise ValueError(f"{name} must be a sequence of numbers")
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
