# Over 500 lines: every paired test of the analysis (Wilcoxon, TOST, effect sizes, bootstrap) in numpy only.
"""Paired statistics of a reader study: two reading arms (e.g. manual vs AI-assisted) per case.

Only numpy and :mod:`math` are used (scipy is the tests' oracle, not a dependency here).
Every function takes sequences of finite floats and returns plain floats, ints, strings,
tuples and dicts, so results go straight into a JSON report. Non-finite inputs raise
``ValueError``; undefined results (too few cases) are ``nan``.

Tests and conventions:

* **Wilcoxon signed-rank test** (:func:`wilcoxon_signed_rank`) on the paired differences
  ``d = x - y``. Zero differences are dropped before ranking (Wilcoxon's convention,
  scipy's ``zero_method="wilcox"``); ``n`` counts the remaining differences. Tied ``|d|``
  get average ranks. ``W+`` is the rank sum of the positive differences. The p value is
  *exact* (null distribution of ``W+`` over the ``2**n`` sign assignments) when
  ``n <= 50`` and no ``|d|`` are tied, otherwise from the normal approximation with the tie
  correction of the variance and no continuity correction. The two-sided exact p value is
  ``min(1, 2 * min(P(W+ <= w), P(W+ >= w)))``. The reported statistic is ``min(W+, W-)``
  for the two-sided test and ``W+`` for the one-sided ones (as scipy).
  ``alternative="greater"`` means the differences ``x - y`` tend to be positive.
* **Student t distribution** (:func:`student_t_cdf`, :func:`student_t_ppf`) through the
  regularized incomplete beta function, evaluated by its continued fraction.
* **TOST equivalence test** (:func:`tost_paired`): two one-sided paired t tests,
  ``H0: mean(d) <= low`` and ``H0: mean(d) >= high``; the arms are declared equivalent
  when both are rejected, i.e. ``max(p_lower, p_upper) < alpha``. The matching interval is
  the ``1 - 2 * alpha`` confidence interval of the mean difference (90 % for the default
  ``alpha = 0.05``; reported as ``ci_90`` whatever ``alpha`` is, with ``ci_level``).
  When all differences are equal (zero variance) each one-sided p value is 0 if the mean is
  strictly on the alternative's side of its bound, else 1.
* **Vargha-Delaney A** (:func:`vargha_delaney_a`): ``P(X > Y) + 0.5 P(X = Y)`` over all
  pairs of one value of each group (independent-groups form, ``U / (n_x n_y)``), labelled
  by :func:`effect_size_label` with the thresholds of Vargha & Delaney (2000).
* **Bootstrap** (:func:`bootstrap_ci`, :func:`paired_ratio_ci`): percentile intervals from
  ``resamples`` resamples with replacement, drawn by ``numpy.random.default_rng(seed)``,
  so a seed always gives the same interval. Paired data (per-case reading times of both
  arms) are resampled by case, keeping each case's pair together.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

ALTERNATIVES = ("two-sided", "greater", "less")

# Largest number of non-zero differences for which the exact Wilcoxon distribution is used.
EXACT_WILCOXON_MAX_N = 50

# Vargha & Delaney (2000): A = 0.56 / 0.64 / 0.71 are small / medium / large effects.
EFFECT_SIZE_THRESHOLDS = (("small", 0.06), ("medium", 0.14), ("large", 0.21))

_CF_EPS = 1e-16
_CF_TINY = 1e-300
_CF_MAX_ITERATIONS = 100_000


# --- input helpers -----------------------------------------------------------------------


def _values(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a one-dimensional sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite values")
    return array


def _differences(x: Sequence[float], y: Sequence[float] | None) -> np.ndarray:
    d = _values(x, "x")
    if y is None:
        return d
    y = _values(y, "y")
    if len(y) != len(d):
        raise ValueError(f"x and y must be paired (same length), got {len(d)} and {len(y)}")
    return d - y


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


# --- normal distribution -----------------------------------------------------------------


def normal_cdf(z: float) -> float:
    """Standard normal ``P(Z <= z)`` (via ``erfc``, accurate in the lower tail)."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def normal_sf(z: float) -> float:
    """Standard normal ``P(Z > z)`` (via ``erfc``, accurate in the upper tail)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


# --- Wilcoxon signed-rank test -----------------------------------------------------------


def _average_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks with ties sharing their average rank, and the sizes of the tie groups."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    n = len(values)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    group_ranks = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(group_ranks, ends - starts)
    return ranks, ends - starts


@lru_cache(maxsize=None)
def _signed_rank_counts(n: int) -> tuple[int, ...]:
    """Number of sign assignments of ranks 1..n giving each W+ = 0 .. n(n+1)/2."""
    counts = [1]
    for rank in range(1, n + 1):
        grown = counts + [0] * rank
        for total, count in enumerate(counts):
            grown[total + rank] += count
        counts = grown
    return tuple(counts)


def _exact_signed_rank_p(w_plus: float, n: int, alternative: str) -> float:
    counts = _signed_rank_counts(n)
    w = int(round(w_plus))
    total = 2**n
    at_most = sum(counts[: w + 1]) / total  # P(W+ <= w)
    at_least = sum(counts[w:]) / total  # P(W+ >= w)
    if alternative == "greater":
        return at_least
    if alternative == "less":
        return at_most
    return min(1.0, 2.0 * min(at_most, at_least))


def wilcoxon_signed_rank(
    x: Sequence[float], y: Sequence[float] | None = None, *, alternative: str = "two-sided"
) -> dict:
    """Wilcoxon signed-rank test of the paired differences ``x - y`` (or of ``x`` alone).

    Returns ``statistic`` (``min(W+, W-)`` two-sided, ``W+`` one-sided), ``p_value``,
    ``n`` (non-zero differences), ``n_zero`` (dropped zero differences) and ``method``
    (``"exact"``, ``"approx"``, or ``"none"`` when no non-zero difference is left, in which
    case statistic and p value are ``nan``).
    """
    _check_alternative(alternative)
    d = _differences(x, y)
    n_zero = int(np.count_nonzero(d == 0))
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return {"statistic": math.nan, "p_value": math.nan, "n": 0, "n_zero": n_zero,
                "method": "none"}

    ranks, tie_sizes = _average_ranks(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    w_minus = float(ranks[d < 0].sum())
    statistic = min(w_plus, w_minus) if alternative == "two-sided" else w_plus
    has_ties = bool(np.any(tie_sizes > 1))

    if n <= EXACT_WILCOXON_MAX_N and not has_ties:
        method = "exact"
        p_value = _exact_signed_rank_p(w_plus, n, alternative)
    else:
        method = "approx"
        mean = n * (n + 1) / 4.0
        tie_term = float(np.sum(tie_sizes.astype(np.float64) ** 3 - tie_sizes))
        sd = math.sqrt((n * (n + 1) * (2 * n + 1) - tie_term / 2.0) / 24.0)
        z = (w_plus - mean) / sd
        if alternative == "greater":
            p_value = normal_sf(z)
        elif alternative == "less":
            p_value = normal_cdf(z)
        else:
            p_value = 2.0 * normal_sf(abs(z))
    return {"statistic": statistic, "p_value": float(p_value), "n": n, "n_zero": n_zero,
            "method": method}


# --- Student t distribution --------------------------------------------------------------


def _stirling_remainder(x: float) -> float:
    """lgamma(x) - ((x - 0.5) log x - x + 0.5 log(2 pi)), asymptotic series for x >= 20."""
    inverse = 1.0 / x
    inverse_squared = inverse * inverse
    return inverse * (1.0 / 12.0 - inverse_squared * (1.0 / 360.0 - inverse_squared * (
        1.0 / 1260.0 - inverse_squared / 1680.0)))


def _log_beta(a: float, b: float) -> float:
    """log B(a, b); for a large argument lgamma(L) - lgamma(L + s) is formed without the
    cancellation of two large lgamma values (t distributions with many degrees of freedom)."""
    small, large = min(a, b), max(a, b)
    if large < 20.0:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return (math.lgamma(small) - (large - 0.5) * math.log1p(small / large)
            - small * math.log(large + small) + small
            + _stirling_remainder(large) - _stirling_remainder(large + small))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) without its prefactor, by the modified Lentz method.

    The fraction is 1 / (1 + c1 / (1 + c2 / (1 + ...))) with
    c_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)) and
    c_{2m}   =  m (b - m) x / ((a + 2m - 1)(a + 2m)); it converges fast for
    x < (a + 1) / (a + b + 2).
    """
    # Lentz: value = b0 + a1/(b1 + a2/(b2 + ...)) with b0 = 0 (replaced by a tiny number),
    # every b_k = 1, a1 = 1 and a_{k+1} = c_k; value_k = value_{k-1} * C_k * D_k.
    value = _CF_TINY
    ratio_c = value  # C_k = b_k + a_k / C_{k-1}
    ratio_d = 0.0  # D_k = 1 / (b_k + a_k D_{k-1})
    for k in range(1, _CF_MAX_ITERATIONS):
        if k == 1:
            coefficient = 1.0
        else:
            m, odd = divmod(k - 1, 2)
            if odd:
                coefficient = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
            else:
                coefficient = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        ratio_d = 1.0 + coefficient * ratio_d
        ratio_d = 1.0 / (ratio_d if abs(ratio_d) >= _CF_TINY else _CF_TINY)
        ratio_c = 1.0 + coefficient / ratio_c
        if abs(ratio_c) < _CF_TINY:
            ratio_c = _CF_TINY
        step = ratio_c * ratio_d
        value *= step
        if k > 1 and abs(step - 1.0) <= _CF_EPS:
            return value
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b})")


def _incomplete_beta(
    a: float,
    b: float,
    x: float,
    x_complement: float,
    log_x: float | None = None,
    log_x_complement: float | None = None,
) -> float:
    """I_x(a, b), given x and 1 - x (and optionally their logarithms) separately so that
    neither loses digits near 0 or 1."""
    if log_x is None:
        log_x = math.log(x) if x > 0.0 else -math.inf
    if log_x_complement is None:
        log_x_complement = math.log(x_complement) if x_complement > 0.0 else -math.inf
    if log_x == -math.inf:
        return 0.0
    if log_x_complement == -math.inf:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _incomplete_beta(b, a, x_complement, x, log_x_complement, log_x)
    log_prefactor = a * log_x + b * log_x_complement - math.log(a) - _log_beta(a, b)
    return math.exp(log_prefactor) * _beta_continued_fraction(a, b, x)


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if not (a > 0.0 and b > 0.0):
        raise ValueError(f"a and b must be positive, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    return _incomplete_beta(float(a), float(b), float(x), 1.0 - float(x))


def _check_df(df: float) -> float:
    df = float(df)
    if not (df > 0.0 and math.isfinite(df)):
        raise ValueError(f"degrees of freedom must be positive and finite, got {df}")
    return df


def _t_lower_tail(t: float, df: float) -> float:
    """P(T <= t) for t <= 0: 0.5 * I_{df/(df+t^2)}(df/2, 1/2), with 1 - x formed exactly."""
    if t == 0.0:
        return 0.5
    if math.isinf(t):
        return 0.0
    t_squared = t * t
    if t_squared > df:
        r = (df / abs(t)) / abs(t)  # df / t^2 without overflow (may underflow to 0)
        log_x_complement = -math.log1p(r)
        x, x_complement = r / (1.0 + r), 1.0 / (1.0 + r)
        log_x = math.log(df) - 2.0 * math.log(abs(t)) + log_x_complement
    else:
        u = t_squared / df
        log_x = -math.log1p(u)
        x, x_complement = 1.0 / (1.0 + u), u / (1.0 + u)
        log_x_complement = math.log(u) + log_x
    return 0.5 * _incomplete_beta(0.5 * df, 0.5, x, x_complement, log_x, log_x_complement)


def student_t_cdf(t: float, df: float) -> float:
    """Student t ``P(T <= t)`` with ``df`` (> 0, possibly non-integer) degrees of freedom.

    Absolute error about 1e-14 and relative error in the tails about 1e-12 for df up to
    1e4 (beyond, the continued fraction loses digits to the rounding of ``df / (df + t^2)``).
    """
    df = _check_df(df)
    t = float(t)
    if math.isnan(t):
        return math.nan
    if t <= 0.0:
        return _t_lower_tail(t, df)
    return 1.0 - _t_lower_tail(-t, df)


def student_t_sf(t: float, df: float) -> float:
    """Student t ``P(T > t)``, accurate in the upper tail."""
    return student_t_cdf(-t, df)


def student_t_pdf(t: float, df: float) -> float:
    """Student t density."""
    df = _check_df(df)
    log_norm = math.lgamma(0.5 * (df + 1.0)) - math.lgamma(0.5 * df) - 0.5 * math.log(df * math.pi)
    scaled = abs(float(t)) / math.sqrt(df)
    # log(1 + t^2/df), without overflowing the square for huge |t|
    log_kernel = math.log1p(scaled * scaled) if scaled < 1e150 else 2.0 * math.log(scaled)
    return math.exp(log_norm - 0.5 * (df + 1.0) * log_kernel)


def _t_lower_quantile(q: float, df: float) -> float:
    """t < 0 with P(T <= t) = q for 0 < q < 0.5: safeguarded Newton inside a bracket."""
    high = 0.0  # P(T <= 0) = 0.5 > q
    low = -1.0
    while _t_lower_tail(low, df) > q:
        high = low
        low *= 2.0
    t = high if high < 0.0 else low
    for _ in range(1000):
        excess = _t_lower_tail(t, df) - q
        if excess == 0.0:
            return t
        if excess > 0.0:
            high = t
        else:
            low = t
        density = student_t_pdf(t, df)
        candidate = t - excess / density if density > 0.0 else math.nan
        if not low < candidate < high:
            candidate = 0.5 * (low + high)
        if abs(candidate - t) <= 1e-15 * abs(t) or high - low <= 1e-15 * abs(low):
            return candidate
        t = candidate
    return t


def student_t_ppf(p: float, df: float) -> float:
    """Student t quantile: ``t`` with ``P(T <= t) = p`` (``-inf``/``inf`` at p = 0/1)."""
    df = _check_df(df)
    p = float(p)
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return _t_lower_quantile(p, df)
    return -_t_lower_quantile(1.0 - p, df)  # 1 - p is exact for p in [0.5, 1]


# --- TOST equivalence test ---------------------------------------------------------------


def tost_paired(
    x: Sequence[float],
    y: Sequence[float] | None = None,
    *,
    low: float,
    high: float,
    alpha: float = 0.05,
) -> dict:
    """Two one-sided paired t tests that the mean difference ``x - y`` lies in ``(low, high)``.

    ``p_lower`` tests ``H0: mean <= low`` (alternative: greater), ``p_upper`` tests
    ``H0: mean >= high`` (alternative: less); ``p_value = max(p_lower, p_upper)`` and
    ``equivalent = p_value < alpha``. ``ci_90`` is the ``1 - 2 alpha`` (``ci_level``)
    t interval of the mean difference. Fewer than 2 cases: p values and interval ``nan``,
    not equivalent. Zero variance: see the module docstring.
    """
    if not low < high:
        raise ValueError(f"equivalence bounds need low < high, got ({low}, {high})")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    d = _differences(x, y)
    n = len(d)
    result = {"mean_difference": float(d.mean()) if n else math.nan, "low": float(low),
              "high": float(high), "n": n, "ci_level": 1.0 - 2.0 * alpha}
    mean = result["mean_difference"]
    if n < 2:
        p_lower = p_upper = math.nan
        ci = (math.nan, math.nan)
    elif np.ptp(d) == 0.0:  # all differences equal: the t statistics are +-inf or undefined
        p_lower = 0.0 if mean > low else 1.0
        p_upper = 0.0 if mean < high else 1.0
        ci = (mean, mean)
    else:
        df = n - 1
        se = float(d.std(ddof=1)) / math.sqrt(n)
        p_lower = student_t_sf((mean - low) / se, df)
        p_upper = student_t_cdf((mean - high) / se, df)
        half_width = student_t_ppf(1.0 - alpha, df) * se
        ci = (mean - half_width, mean + half_width)
    p_value = max(p_lower, p_upper) if n >= 2 else math.nan
    result.update(p_lower=p_lower, p_upper=p_upper, p_value=p_value,
                  equivalent=bool(p_value < alpha), ci_90=ci)
    return result


# --- Vargha-Delaney A effect size --------------------------------------------------------


def vargha_delaney_a(x: Sequence[float], y: Sequence[float]) -> float:
    """Vargha-Delaney ``A = P(X > Y) + 0.5 P(X = Y)`` over all pairs (``nan`` if a group is empty).

    ``A = 0.5``: no effect; ``A > 0.5``: values of ``x`` tend to be larger. Computed by
    sorting (``O(n log n)``), exactly equal to the count over all ``n_x n_y`` pairs.
    """
    x = _values(x, "x")
    y = np.sort(_values(y, "y"))
    if len(x) == 0 or len(y) == 0:
        return math.nan
    below = np.searchsorted(y, x, side="left")  # y values < each x
    not_above = np.searchsorted(y, x, side="right")  # y values <= each x
    wins = float(below.sum())
    ties = float((not_above - below).sum())
    return (wins + 0.5 * ties) / (len(x) * len(y))


def effect_size_label(a: float) -> str:
    """Vargha & Delaney (2000) magnitude of ``A``: by ``|A - 0.5|`` < 0.06 "negligible",
    < 0.14 "small", < 0.21 "medium", else "large" (A = 0.56 / 0.64 / 0.71 and their mirrors
    0.44 / 0.36 / 0.29 start a category). ``nan`` -> "undefined".
    """
    a = float(a)
    if math.isnan(a):
        return "undefined"
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"A must be in [0, 1], got {a}")
    distance = abs(a - 0.5) + 1e-12  # A at a published threshold belongs to the larger class
    label = "negligible"
    for name, threshold in EFFECT_SIZE_THRESHOLDS:
        if distance >= threshold:
            label = name
    return label


# --- bootstrap -----------------------------------------------------------------------------


def _resample_indices(n: int, resamples: int, seed: int):
    """Case indices of the resamples, in chunks of at most ~1e6 values (memory bound)."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // max(n, 1))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def _percentile_interval(estimates: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(estimates, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[..., np.ndarray] = np.median,
    *,
    resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` of ``values``.

    ``statistic(array, axis=-1)`` must reduce the last axis (as ``np.median``, ``np.mean``).
    The same seed gives the same interval; empty ``values`` give ``(nan, nan)``.
    """
    _check_confidence(confidence)
    values = _values(values, "values")
    n = len(values)
    if n == 0:
        return (math.nan, math.nan)
    estimates = np.concatenate(
        [np.asarray(statistic(values[indices], axis=-1), dtype=np.float64)
         for indices in _resample_indices(n, resamples, seed)]
    )
    return _percentile_interval(estimates, confidence)


def paired_ratio_ci(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Ratio of means ``mean(numerator) / mean(denominator)`` with a percentile bootstrap
    interval resampling the cases (pairs) jointly, e.g. manual / assisted reading time.

    Returns ``ratio`` and ``ci = (low, high)``; empty input gives ``nan``. A resample whose
    denominator mean is 0 gives an infinite or ``nan`` ratio (avoid zero denominators).
    """
    _check_confidence(confidence)
    numerator = _values(numerator, "numerator")
    denominator = _values(denominator, "denominator")
    if len(numerator) != len(denominator):
        raise ValueError(
            f"numerator and denominator must be paired (same length), "
            f"got {len(numerator)} and {len(denominator)}"
        )
    n = len(numerator)
    if n == 0:
        return {"ratio": math.nan, "ci": (math.nan, math.nan)}
    ratio = float(numerator.mean() / denominator.mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        estimates = np.concatenate(
            [numerator[indices].mean(axis=-1) / denominator[indices].mean(axis=-1)
             for indices in _resample_indices(n, resamples, seed)]
        )
    return {"ratio": ratio, "ci": _percentile_interval(estimates, confidence)}
