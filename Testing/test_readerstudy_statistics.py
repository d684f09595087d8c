"""Reader-study statistics against scipy (the oracle), brute force and closed forms."""

import itertools
import json
import math

import numpy as np
import pytest
import scipy.special
import scipy.stats

from breasttumorseg.readerstudy import statistics

ALTERNATIVES = ("two-sided", "greater", "less")


def scipy_wilcoxon(x, y, alternative, method):
    return scipy.stats.wilcoxon(x, y, zero_method="wilcox", correction=False,
                                alternative=alternative, method=method)


def assert_matches_scipy_wilcoxon(x, y, expected_method):
    for alternative in ALTERNATIVES:
        ours = statistics.wilcoxon_signed_rank(x, y, alternative=alternative)
        assert ours["method"] == expected_method
        theirs = scipy_wilcoxon(x, y, alternative, expected_method)
        assert ours["statistic"] == pytest.approx(float(theirs.statistic), abs=1e-10)
        assert ours["p_value"] == pytest.approx(float(theirs.pvalue), abs=1e-10)


def assert_plain_json(result: dict):
    """Results are plain Python values (not numpy scalars) and serialise to JSON."""
    for value in result.values():
        values = value if isinstance(value, tuple) else (value,)
        assert all(type(v) in (int, float, bool, str) for v in values), result
    json.dumps(result)


# --- Wilcoxon signed-rank ----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_wilcoxon_exact_small_samples_match_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 26))
    x = rng.normal(0.4, 1.0, n)
    y = rng.normal(0.0, 1.0, n)
    assert_matches_scipy_wilcoxon(x, y, "exact")


@pytest.mark.parametrize("seed", range(20))
def test_wilcoxon_large_samples_use_normal_approximation(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(51, 160))
    x = rng.normal(0.2, 1.0, n)
    y = rng.normal(0.0, 1.0, n)
    assert_matches_scipy_wilcoxon(x, y, "approx")


@pytest.mark.parametrize("seed", range(20))
def test_wilcoxon_ties_use_tie_corrected_approximation(seed):
    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(4, 80))
    x = np.round(rng.normal(0.3, 1.0, n), 1)  # reading scores on a coarse scale: ties
    y = np.round(rng.normal(0.0, 1.0, n), 1)
    d = x - y
    nonzero = np.abs(d[d != 0])
    has_ties = len(np.unique(nonzero)) < len(nonzero)
    expected = "approx" if has_ties or len(nonzero) > 50 else "exact"
    assert_matches_scipy_wilcoxon(x, y, expected)


@pytest.mark.parametrize("seed", range(15))
def test_wilcoxon_zero_differences_are_dropped(seed):
    rng = np.random.default_rng(300 + seed)
    n = int(rng.integers(3, 70))
    x = rng.normal(0.3, 1.0, n)
    y = rng.normal(0.0, 1.0, n)
    zeros = rng.choice(n, size=int(rng.integers(1, n)), replace=False)
    y[zeros] = x[zeros]
    result = statistics.wilcoxon_signed_rank(x, y)
    assert result["n_zero"] == len(zeros) and result["n"] == n - len(zeros)
    assert_matches_scipy_wilcoxon(x, y, "exact" if result["n"] <= 50 else "approx")


def test_wilcoxon_exact_cutoff_counts_nonzero_differences():
    rng = np.random.default_rng(7)
    x = rng.normal(size=53)
    y = rng.normal(size=53)
    assert statistics.wilcoxon_signed_rank(x[:50], y[:50])["method"] == "exact"
    assert statistics.wilcoxon_signed_rank(x[:51], y[:51])["method"] == "approx"
    y[:3] = x[:3]  # 53 pairs, 3 zero differences: 50 left, still exact
    result = statistics.wilcoxon_signed_rank(x, y)
    assert (result["method"], result["n"], result["n_zero"]) == ("exact", 50, 3)
    assert_matches_scipy_wilcoxon(x, y, "exact")


def test_wilcoxon_one_sample_form_equals_paired_form():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=30), rng.normal(size=30)
    for alternative in ALTERNATIVES:
        assert (statistics.wilcoxon_signed_rank(x - y, alternative=alternative)
                == statistics.wilcoxon_signed_rank(x, y, alternative=alternative))


def test_wilcoxon_exact_distribution_by_enumeration():
    """The exact p value is the share of the 2**n sign assignments at least as extreme."""
    for n in range(1, 11):
        rng = np.random.default_rng(n)
        d = rng.permutation(np.arange(1, n + 1)) * rng.choice([-1.0, 1.0], n) * 0.37
        ranks = np.arange(1, n + 1)
        w_plus = float(ranks[np.argsort(np.argsort(np.abs(d)))][d > 0].sum())
        null = np.array([sum(r for r, s in zip(ranks, signs) if s)
                         for signs in itertools.product((0, 1), repeat=n)])
        greater = np.mean(null >= w_plus)
        less = np.mean(null <= w_plus)
        assert statistics.wilcoxon_signed_rank(d, alternative="greater")["p_value"] == greater
        assert statistics.wilcoxon_signed_rank(d, alternative="less")["p_value"] == less
        assert statistics.wilcoxon_signed_rank(d)["p_value"] == min(1.0, 2 * min(greater, less))


def test_wilcoxon_known_values():
    d = [0.5, 1.0, 1.5, 2.0, 2.5]  # all positive: W+ = 15, W- = 0
    assert statistics.wilcoxon_signed_rank(d) == {
        "statistic": 0.0, "p_value": 2 / 32, "n": 5, "n_zero": 0, "method": "exact"}
    assert statistics.wilcoxon_signed_rank(d, alternative="greater")["p_value"] == 1 / 32
    assert statistics.wilcoxon_signed_rank(d, alternative="greater")["statistic"] == 15.0
    assert statistics.wilcoxon_signed_rank(d, alternative="less")["p_value"] == 1.0


def test_wilcoxon_edge_cases():
    for empty in ([], ([], [])):
        args = empty if isinstance(empty, tuple) else (empty,)
        result = statistics.wilcoxon_signed_rank(*args)
        assert result["n"] == 0 and result["method"] == "none" and math.isnan(result["p_value"])
    all_zero = statistics.wilcoxon_signed_rank([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (all_zero["n"], all_zero["n_zero"], all_zero["method"]) == (0, 3, "none")
    assert math.isnan(all_zero["p_value"]) and math.isnan(all_zero["statistic"])
    single = statistics.wilcoxon_signed_rank([2.0], [1.0])
    assert (single["n"], single["p_value"], single["method"]) == (1, 1.0, "exact")
    assert statistics.wilcoxon_signed_rank([2.0], [1.0], alternative="greater")["p_value"] == 0.5
    assert_plain_json(single)
    assert_plain_json(statistics.wilcoxon_signed_rank(np.arange(60.0) - 20.5))


def test_wilcoxon_rejects_bad_input():
    with pytest.raises(ValueError, match="alternative"):
        statistics.wilcoxon_signed_rank([1.0, 2.0], alternative="two_sided")
    with pytest.raises(ValueError, match="same length"):
        statistics.wilcoxon_signed_rank([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        statistics.wilcoxon_signed_rank([1.0, math.nan])


# --- normal and Student t distributions --------------------------------------------------


def test_normal_cdf_matches_scipy():
    z = np.linspace(-37.0, 8.0, 451)
    ours = np.array([statistics.normal_cdf(v) for v in z])
    np.testing.assert_allclose(ours, scipy.stats.norm.cdf(z), rtol=1e-12, atol=0)  # z/sqrt(2) rounding
    upper = np.array([statistics.normal_sf(v) for v in -z])
    np.testing.assert_allclose(upper, scipy.stats.norm.sf(-z), rtol=1e-12, atol=0)


DFS = (1, 1.5, 2, 3, 4.5, 7, 12, 29, 30, 99, 250, 1000, 1e4)
T_GRID = np.concatenate([np.linspace(-40.0, 40.0, 161), [-1e6, -1e3, -0.013, 0.013, 1e3, 1e6]])


@pytest.mark.parametrize("df", DFS)
def test_student_t_cdf_matches_scipy(df):
    ours = np.array([statistics.student_t_cdf(t, df) for t in T_GRID])
    theirs = scipy.stats.t.cdf(T_GRID, df)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    tail = theirs > 1e-300  # relative accuracy in the lower tail too (p values are tails)
    np.testing.assert_allclose(ours[tail], theirs[tail], rtol=1e-10)
    np.testing.assert_allclose(ours + np.array([statistics.student_t_cdf(-t, df) for t in T_GRID]),
                               1.0, atol=1e-15)


def test_student_t_cdf_closed_forms_near_zero():
    """df = 1 (Cauchy) and df = 2 have closed forms; scipy's own cdf is off near t = 0."""
    for t in (-1e-8, -1e-5, 1e-8, 3e-4, 0.2, -7.0):
        assert statistics.student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi,
                                                                rel=1e-14)
        assert statistics.student_t_cdf(t, 2) == pytest.approx(
            0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-14)
    assert statistics.student_t_cdf(0.0, 5) == 0.5
    assert statistics.student_t_cdf(-math.inf, 5) == 0.0 and statistics.student_t_cdf(math.inf, 5) == 1.0
    assert statistics.student_t_cdf(-1e200, 1) == pytest.approx(1 / (math.pi * 1e200), rel=1e-12)


@pytest.mark.parametrize("df", DFS)
def test_student_t_ppf_matches_scipy(df):
    probabilities = [1e-12, 1e-6, 1e-3, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.6, 0.9, 0.95, 0.975,
                     0.99, 1 - 1e-6]
    ours = np.array([statistics.student_t_ppf(p, df) for p in probabilities])
    np.testing.assert_allclose(ours, scipy.stats.t.ppf(probabilities, df), rtol=1e-10, atol=0)
    back = [statistics.student_t_cdf(t, df) for t in ours]
    np.testing.assert_allclose(back, probabilities, rtol=1e-11)


def test_student_t_ppf_bounds_and_bad_input():
    assert statistics.student_t_ppf(0.0, 3) == -math.inf and statistics.student_t_ppf(1.0, 3) == math.inf
    with pytest.raises(ValueError):
        statistics.student_t_ppf(1.5, 3)
    with pytest.raises(ValueError):
        statistics.student_t_cdf(1.0, 0)


def test_student_t_pdf_and_incomplete_beta_match_scipy():
    for df in (1, 2.5, 10, 300):
        t = np.linspace(-20, 20, 41)
        np.testing.assert_allclose([statistics.student_t_pdf(v, df) for v in t],
                                   scipy.stats.t.pdf(t, df), rtol=1e-12)
    rng = np.random.default_rng(0)
    a, b = np.exp(rng.uniform(math.log(0.05), math.log(500), (2, 300)))
    x = rng.uniform(size=300)
    ours = [statistics.regularized_incomplete_beta(*args) for args in zip(a, b, x)]
    np.testing.assert_allclose(ours, scipy.special.betainc(a, b, x), rtol=1e-11, atol=1e-13)
    assert statistics.regularized_incomplete_beta(2.0, 3.0, 0.0) == 0.0
    assert statistics.regularized_incomplete_beta(2.0, 3.0, 1.0) == 1.0


# --- TOST --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_tost_matches_two_scipy_one_sample_t_tests(seed):
    rng = np.random.default_rng(400 + seed)
    n = int(rng.integers(2, 60))
    y = rng.normal(10.0, 3.0, n)
    x = y + rng.normal(rng.uniform(-1.0, 1.0), rng.uniform(0.2, 2.0), n)
    low, high = -rng.uniform(0.1, 1.5), rng.uniform(0.1, 1.5)
    alpha = (0.05, 0.025, 0.1)[seed % 3]
    result = statistics.tost_paired(x, y, low=low, high=high, alpha=alpha)
    d = x - y
    p_lower = scipy.stats.ttest_1samp(d - low, 0.0, alternative="greater").pvalue
    p_upper = scipy.stats.ttest_1samp(d - high, 0.0, alternative="less").pvalue
    assert result["p_lower"] == pytest.approx(p_lower, rel=1e-9, abs=1e-12)
    assert result["p_upper"] == pytest.approx(p_upper, rel=1e-9, abs=1e-12)
    assert result["p_value"] == max(result["p_lower"], result["p_upper"])
    assert result["equivalent"] == (result["p_value"] < alpha)
    interval = scipy.stats.ttest_1samp(d, 0.0).confidence_interval(1 - 2 * alpha)
    assert result["ci_90"] == pytest.approx((interval.low, interval.high), rel=1e-10)
    assert result["ci_level"] == pytest.approx(1 - 2 * alpha)
    # duality: equivalent at alpha <=> the 1 - 2 alpha interval lies inside (low, high)
    assert result["equivalent"] == (low < result["ci_90"][0] and result["ci_90"][1] < high)
    assert result["n"] == n and result["mean_difference"] == pytest.approx(d.mean())
    assert_plain_json(result)


def test_tost_known_outcomes():
    rng = np.random.default_rng(1)
    d = rng.normal(0.0, 1.0, 400)
    assert statistics.tost_paired(d, low=-0.5, high=0.5)["equivalent"]
    assert not statistics.tost_paired(d + 1.0, low=-0.5, high=0.5)["equivalent"]
    assert not statistics.tost_paired(d[:5], low=-0.5, high=0.5)["equivalent"]  # too few cases


def test_tost_zero_variance_and_too_few_cases():
    inside = statistics.tost_paired([1.1, 2.1, 3.1], [1.0, 2.0, 3.0], low=-0.5, high=0.5)
    assert inside["p_lower"] == 0.0 and inside["p_upper"] == 0.0 and inside["equivalent"]
    assert inside["ci_90"] == (inside["mean_difference"], inside["mean_difference"])
    on_bound = statistics.tost_paired([0.5, 0.5, 0.5], low=-0.5, high=0.5)
    assert on_bound["p_upper"] == 1.0 and on_bound["p_value"] == 1.0 and not on_bound["equivalent"]
    outside = statistics.tost_paired([-2.0] * 4, low=-0.5, high=0.5)
    assert outside["p_lower"] == 1.0 and outside["p_upper"] == 0.0 and not outside["equivalent"]
    for values, mean in (([], math.nan), ([0.2], 0.2)):
        few = statistics.tost_paired(values, low=-0.5, high=0.5)
        assert math.isnan(few["p_value"]) and not few["equivalent"] and few["n"] == len(values)
        assert math.isnan(few["ci_90"][0]) and (math.isnan(mean) or few["mean_difference"] == mean)


def test_tost_rejects_bad_bounds():
    with pytest.raises(ValueError, match="low < high"):
        statistics.tost_paired([1.0, 2.0], low=0.5, high=-0.5)
    with pytest.raises(ValueError, match="alpha"):
        statistics.tost_paired([1.0, 2.0], low=-1.0, high=1.0, alpha=0.5)


# --- Vargha-Delaney A ----------------------------------------------------------------------


def brute_force_a(x, y):
    score = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y)
    return score / (len(x) * len(y))


@pytest.mark.parametrize("seed", range(25))
def test_vargha_delaney_matches_brute_force_and_mann_whitney(seed):
    rng = np.random.default_rng(500 + seed)
    nx, ny = rng.integers(1, 40, 2)
    if seed % 2:  # integer scores: many ties
        x, y = rng.integers(0, 6, nx).astype(float), rng.integers(1, 7, ny).astype(float)
    else:
        x, y = rng.normal(0.3, 1.0, nx), rng.normal(0.0, 1.0, ny)
    a = statistics.vargha_delaney_a(x, y)
    assert a == pytest.approx(brute_force_a(x, y), abs=1e-15)
    assert a == pytest.approx(scipy.stats.mannwhitneyu(x, y).statistic / (nx * ny), abs=1e-15)
    assert statistics.vargha_delaney_a(y, x) == pytest.approx(1.0 - a, abs=1e-15)
    assert type(a) is float


def test_vargha_delaney_known_values():
    assert statistics.vargha_delaney_a([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert statistics.vargha_delaney_a([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert statistics.vargha_delaney_a([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.5
    assert math.isnan(statistics.vargha_delaney_a([], [1.0]))
    assert math.isnan(statistics.vargha_delaney_a([1.0], []))


@pytest.mark.parametrize("a, label", [
    (0.5, "negligible"), (0.559, "negligible"), (0.441, "negligible"),
    (0.56, "small"), (14 / 25, "small"), (0.44, "small"), (0.639, "small"),
    (0.64, "medium"), (0.36, "medium"), (0.709, "medium"),
    (0.71, "large"), (0.29, "large"), (1.0, "large"), (0.0, "large"),
    (math.nan, "undefined"),
])
def test_effect_size_labels(a, label):
    assert statistics.effect_size_label(a) == label


def test_effect_size_label_rejects_out_of_range():
    with pytest.raises(ValueError):
        statistics.effect_size_label(1.2)


# --- bootstrap ---------------------------------------------------------------------------


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(600)
    values = rng.lognormal(3.0, 0.5, 40)  # reading times (s)
    for statistic, tolerance in ((np.mean, 0.02), (np.median, 0.05)):
        ours = statistics.bootstrap_ci(values, statistic, resamples=20000, seed=3)
        theirs = scipy.stats.bootstrap((values,), statistic, n_resamples=20000, method="percentile",
                                       rng=np.random.default_rng(11)).confidence_interval
        scale = statistic(values)
        assert ours[0] == pytest.approx(theirs.low, rel=tolerance)
        assert ours[1] == pytest.approx(theirs.high, rel=tolerance)
        assert ours[0] < scale < ours[1]


def test_bootstrap_ci_is_deterministic_per_seed():
    values = np.random.default_rng(601).normal(size=25)
    first = statistics.bootstrap_ci(values, resamples=2000, seed=5)
    assert statistics.bootstrap_ci(values, resamples=2000, seed=5) == first
    assert statistics.bootstrap_ci(values, resamples=2000, seed=6) != first
    assert type(first) is tuple and all(type(v) is float for v in first)
    narrower = statistics.bootstrap_ci(values, resamples=2000, seed=5, confidence=0.5)
    assert first[0] < narrower[0] <= narrower[1] < first[1]


def test_bootstrap_ci_degenerate_and_empty():
    assert statistics.bootstrap_ci([4.2] * 12, resamples=500) == (4.2, 4.2)
    assert statistics.bootstrap_ci([7.0], np.mean, resamples=100) == (7.0, 7.0)
    assert all(math.isnan(v) for v in statistics.bootstrap_ci([]))
    with pytest.raises(ValueError):
        statistics.bootstrap_ci([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError):
        statistics.bootstrap_ci([1.0, 2.0], resamples=0)


def test_paired_ratio_ci_agrees_with_scipy_paired_bootstrap():
    rng = np.random.default_rng(602)
    assisted = rng.lognormal(4.0, 0.4, 30)
    manual = assisted * rng.lognormal(0.3, 0.2, 30)
    result = statistics.paired_ratio_ci(manual, assisted, resamples=20000, seed=1)
    assert result["ratio"] == pytest.approx(manual.mean() / assisted.mean(), rel=1e-15)

    def ratio(a, b, axis=-1):
        return np.mean(a, axis=axis) / np.mean(b, axis=axis)

    theirs = scipy.stats.bootstrap((manual, assisted), ratio, paired=True, vectorized=True,
                                   n_resamples=20000, method="percentile",
                                   rng=np.random.default_rng(12)).confidence_interval
    assert result["ci"][0] == pytest.approx(theirs.low, rel=0.01)
    assert result["ci"][1] == pytest.approx(theirs.high, rel=0.01)
    assert result["ci"][0] < result["ratio"] < result["ci"][1]
    assert_plain_json(result)


def test_paired_ratio_ci_resamples_cases_jointly():
    """A constant per-case ratio survives only if each case's pair stays together."""
    assisted = np.random.default_rng(603).uniform(30.0, 200.0, 25)
    result = statistics.paired_ratio_ci(2.0 * assisted, assisted, resamples=3000, seed=0)
    assert result == {"ratio": 2.0, "ci": (2.0, 2.0)}
    again = statistics.paired_ratio_ci(2.0 * assisted, assisted[::-1], resamples=3000, seed=0)
    assert again["ci"][0] < 2.0 < again["ci"][1]  # pairs broken: the ratio varies


def test_paired_ratio_ci_edge_cases():
    assert statistics.paired_ratio_ci([], [], resamples=10, seed=0)["ci"] != (0.0, 0.0)
    assert math.isnan(statistics.paired_ratio_ci([], [], resamples=10, seed=0)["ratio"])
    with pytest.raises(ValueError, match="same length"):
        statistics.paired_ratio_ci([1.0, 2.0], [1.0], resamples=10, seed=0)
    first = statistics.paired_ratio_ci([3.0, 5.0, 4.0, 9.0], [2.0, 2.5, 3.0, 4.0], resamples=500, seed=4)
    assert first == statistics.paired_ratio_ci([3.0, 5.0, 4.0, 9.0], [2.0, 2.5, 3.0, 4.0],
                                               resamples=500, seed=4)
