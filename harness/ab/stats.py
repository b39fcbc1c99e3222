"""The statistics of an A/B comparison, by scipy: pure functions of the samples, no I/O.

A phase's samples on one kernel are summarised by their median and quartiles. Patched against base is
the ratio of the medians, with a percentile bootstrap confidence interval (scipy.stats.bootstrap, the
two kernels resampled independently); a ratio is significant only where its interval excludes 1. With
three samples a side the interval of a median ratio reaches from about min/max to max/min, so only
samples that do not overlap at all are called different, which two kernels that do not differ do by
chance one time in ten (2 of the 20 orders of six samples). Measured on 200 synthetic experiments
without a difference (tests/test_ab.py's draws): 2 a side called 69 significant (so `ab` wants 3 or
more), 3 a side 19, 4 a side 12 (`ab`'s default), 5 a side 5. Use --runs 5 or more where a false alarm
matters (a CI gate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 20190122  # fixed: the same samples always give the same interval


@dataclass(frozen=True)
class Summary:
    """Samples of one phase on one kernel at one point: median and quartiles, in the samples' unit."""

    n: int
    median: float
    q1: float
    q3: float

    def to_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "median": self.median, "q1": self.q1, "q3": self.q3}


@dataclass(frozen=True)
class Ratio:
    """median(patched) / median(base), and its CONFIDENCE interval [low, high]."""

    ratio: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """True only where the interval excludes 1."""
        return self.low > 1.0 or self.high < 1.0

    def to_dict(self) -> dict[str, float | bool]:
        return {"ratio": self.ratio, "low": self.low, "high": self.high, "significant": self.significant}


def summarize(samples: Sequence[float]) -> Summary:
    """Median and quartiles (numpy's linear interpolation) of at least one sample; ValueError if none."""
    if not samples:
        raise ValueError("no samples")
    q1, med, q3 = np.percentile(np.asarray(samples, dtype=float), [25, 50, 75])
    return Summary(len(samples), float(med), float(q1), float(q3))


def _median_ratio(patched: np.ndarray, base: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.asarray(np.median(patched, axis=axis) / np.median(base, axis=axis))


def median_ratio(base: Sequence[float], patched: Sequence[float]) -> Ratio:
    """The ratio of medians with its bootstrap interval. Needs two samples a side (ValueError otherwise)
    and positive base times. Identical samples on both sides give [r, r]."""
    if len(base) < 2 or len(patched) < 2:
        raise ValueError(f"a confidence interval needs two samples a side, not {len(base)} and {len(patched)}")
    b, p = np.asarray(base, dtype=float), np.asarray(patched, dtype=float)
    if np.any(b <= 0):
        raise ValueError("base times must be positive")
    r = float(_median_ratio(p, b))
    if np.ptp(b) == 0 and np.ptp(p) == 0:
        return Ratio(r, r, r)
    res = stats.bootstrap((p, b), _median_ratio, vectorized=True, paired=False, confidence_level=CONFIDENCE,
                          n_resamples=RESAMPLES, method="percentile", rng=np.random.default_rng(SEED))
    ci = res.confidence_interval
    return Ratio(r, float(ci.low), float(ci.high))


@dataclass(frozen=True)
class Slope:
    """A least-squares line time = intercept + slope * size (scipy.stats.linregress): seconds per GiB."""

    slope: float
    intercept: float
    stderr: float
    r2: float

    def to_dict(self) -> dict[str, float]:
        return {"s_per_gib": self.slope, "intercept_s": self.intercept, "stderr": self.stderr, "r2": self.r2}


def fit_slope(sizes_gib: Sequence[float], times_s: Sequence[float]) -> Slope:
    """Fit times against sizes (every sample, not the medians, so the spread shows in stderr). Needs two
    distinct sizes (ValueError otherwise)."""
    if len(set(sizes_gib)) < 2:
        raise ValueError("a slope needs at least two sizes")
    fit = stats.linregress(np.asarray(sizes_gib, dtype=float), np.asarray(times_s, dtype=float))
    return Slope(float(fit.slope), float(fit.intercept), float(fit.stderr), float(fit.rvalue) ** 2)
