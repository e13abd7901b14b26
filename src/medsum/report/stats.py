"""The statistics of the report, small and checkable against scipy.

Over seeds: the mean, the sample standard deviation (n - 1) and a t confidence interval for the mean.
Between two methods on the same test examples: a paired sign-flip permutation test on the per-example score
differences (exact for up to ``EXACT_MAX_N`` examples, else ``n_resamples`` seeded random sign flips), a paired
bootstrap percentile interval for the mean difference, and Holm's correction across the comparisons of a report.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EXACT_MAX_N = 16  # 2**16 sign patterns: enumerate them rather than sample
RESAMPLES = 10_000
SEED = 0  # a fixed seed: rebuilding the report gives the same p-values and intervals


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for fewer than 2 values)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return math.nan, math.nan
    sd = float(data.std(ddof=1)) if data.size > 1 else math.nan
    return float(data.mean()), sd


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval for the mean of ``values`` (nan for fewer than 2 values)."""
    from scipy import stats

    mean, sd = mean_sd(values)
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def sign_flip_p_value(differences: Sequence[float], n_resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Two-sided p-value of a paired permutation test of mean(differences) = 0.

    Under the null each pair's two scores are exchangeable, so each difference keeps or flips its sign with
    probability 1/2. Exact enumeration counts the observed pattern itself; the sampled version uses (1 + hits) /
    (1 + n_resamples), which never reports p = 0.
    """
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return math.nan
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, observed)
    if d.size <= EXACT_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) / d.size >= observed - tolerance))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, 1000):  # chunks keep memory flat for large test sets
        signs = rng.choice((1.0, -1.0), size=(min(1000, n_resamples - start), d.size))
        hits += int(np.sum(np.abs(signs @ d) / d.size >= observed - tolerance))
    return (1 + hits) / (1 + n_resamples)


def bootstrap_interval(differences: Sequence[float], confidence: float = 0.95, n_resamples: int = RESAMPLES,
                       seed: int = SEED) -> tuple[float, float]:
    """Percentile interval of the mean difference over examples resampled with replacement (pairs kept)."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):
        count = min(1000, n_resamples - start)
        means[start:start + count] = d[rng.integers(0, d.size, size=(count, d.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; nan stays nan)."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    m = len(indexed)
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass
class PairedResult:
    n: int
    difference: float  # mean of a - b
    low: float
    high: float
    p_value: float


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedResult:
    """Mean difference a - b over paired examples, its bootstrap interval and the permutation p-value."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    low, high = bootstrap_interval(d, confidence)
    return PairedResult(int(d.size), float(d.mean()) if d.size else math.nan, low, high, sign_flip_p_value(d))
