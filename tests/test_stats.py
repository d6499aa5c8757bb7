import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from audit import stats


def test_paired_t_test_against_hand_computed_values():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = np.array([0.5, 1.5, 2.0, 3.5, 4.0])
    res = stats.paired(a, b)
    # d = [0.5, 0.5, 1, 0.5, 1]: mean 0.7, sd sqrt(0.3 / 4), t = mean / (sd / sqrt(5)), df 4
    sd = math.sqrt(0.3 / 4)
    t = 0.7 / (sd / math.sqrt(5))
    assert res["n"] == 5 and res["effect"] == pytest.approx(0.7)
    assert res["t"] == pytest.approx(t) and t == pytest.approx(5.7155, abs=1e-4)
    assert res["p_t"] == pytest.approx(2 * sps.t.sf(t, 4))
    assert res["d_z"] == pytest.approx(0.7 / sd)
    assert res["ci_low"] <= 0.7 <= res["ci_high"]
    assert res["mean_a"] == 3.0 and res["mean_b"] == 2.3


def test_holm_against_hand_computed_values():
    # sorted p: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> monotone max 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    out = stats.holm([0.2, np.nan, 0.01])
    assert np.isnan(out[1]) and out[2] == pytest.approx(0.02) and out[0] == pytest.approx(0.2)


def test_minimal_detectable_effect_matches_the_textbook_value():
    # One-sample / paired t-test, n = 10, alpha 0.05 two-sided, power 0.8: d = 0.99 (Cohen 1988).
    assert stats.minimal_detectable_effect(10, 1.0) == pytest.approx(0.99, abs=0.01)
    assert stats.minimal_detectable_effect(10, 2.0) == pytest.approx(2 * stats.minimal_detectable_effect(10, 1.0))
    assert stats.minimal_detectable_effect(40, 1.0) < stats.minimal_detectable_effect(10, 1.0)


def test_tost_tells_equivalence_from_difference():
    rng = np.random.default_rng(0)
    base = rng.normal(0.9, 0.01, 30)
    same = base + rng.normal(0, 0.001, 30)
    shifted = base + 0.05 + rng.normal(0, 0.001, 30)
    assert stats.equivalence(same, base, margin=0.01)["p_tost"] < 1e-6
    assert stats.equivalence(shifted, base, margin=0.01)["p_tost"] > 0.99


def test_unpaired_is_welchs_t_test():
    a, b = np.array([1.0, 2.0, 4.0, 5.0]), np.array([2.0, 2.5, 3.0])
    res = stats.unpaired(a, b)
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 3
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)  # Welch-Satterthwaite
    assert res["p_t"] == pytest.approx(2 * sps.t.sf(abs(t), df))
    assert res["effect"] == pytest.approx(a.mean() - b.mean())


def test_depth_trend_recovers_a_planted_slope_with_pools_as_random_effect():
    rng = np.random.default_rng(1)
    rows = []
    for pool in range(6):
        offset = rng.normal(0, 0.5)
        for depth in range(5):
            for _ in range(3):
                rows.append({"pool": pool, "depth": depth, "value": 2 - 0.3 * depth + offset + rng.normal(0, 0.05)})
    res = stats.depth_trend(pd.DataFrame(rows))
    assert "mixedlm" in res["model"]
    assert res["ci_low"] < -0.3 < res["ci_high"] and res["p_t"] < 1e-6
    one_pool = stats.depth_trend(pd.DataFrame(rows).query("pool == 0"))
    assert "OLS" in one_pool["model"] and "independent" in one_pool["model"]


def test_degenerate_samples_do_not_crash():
    assert stats.paired([1.0], [0.0])["p_t"] == 1.0
    res = stats.paired([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])  # constant non-zero difference
    assert res["effect"] == 1.0 and res["p_t"] == 0.0


def test_infinite_values_are_not_tested_and_raise_no_warnings():
    """A DeepFool median norm is infinite where most points never flipped: no mean difference,
    so no t-test, interval or effect size (NaN p), and no numpy warnings on the way."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for a, b in (([1.0, np.inf, 2.0], [0.5, 0.6, 0.7]), ([np.inf, np.inf, 1.0], [np.inf, 0.5, 0.7]),
                     ([1.0, 2.0, np.nan], [0.5, 0.6, 0.7])):
            res = stats.paired(a, b)
            assert res["n"] == 3 and math.isnan(res["p_t"]) and math.isnan(res["d_z"])
            assert math.isnan(res["ci_low"]) and math.isnan(res["ci_high"])
        assert stats.paired([1.0, np.inf], [0.0, 0.0])["effect"] == np.inf
        res = stats.paired([np.inf, -np.inf, 1.0], [0.0, 0.0, 0.0])
        assert math.isnan(res["p_t"]) and math.isnan(res["mean_a"]) and math.isnan(res["effect"])
        assert stats.paired([np.inf], [0.0])["p_t"] == 1.0  # n = 1: untestable either way, as for finite values
        assert all(math.isnan(x) for x in stats.bootstrap_ci([1.0, np.inf, 2.0]))
    assert stats.paired([1.0, 3.0, 2.0], [0.5, 0.6, 0.7])["p_t"] < 1  # finite: tested as before


def test_every_test_about_means_leaves_an_infinite_value_untested_without_warnings():
    """The equivalence, non-inferiority, unpaired and trend tests too: NaN p-values where a value
    is infinite, and no numpy or statsmodels warning; the same samples made finite are tested."""
    import warnings

    a, b = [1.0, np.inf, 2.0, 1.5], [0.5, 0.6, 0.7, 0.4]
    finite = [2.0, 3.0, 2.5, 2.2]
    trend = pd.DataFrame({"value": [1.0, 2.0, np.inf, 1.1, 2.1, 3.0], "depth": [1, 2, 3, 1, 2, 3],
                          "pool": [0, 0, 0, 1, 1, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = stats.equivalence(a, b, 0.1)
        assert math.isnan(res["p_tost"]) and res["effect"] == np.inf
        assert math.isnan(stats.equivalence([np.inf, 1.0, 2.0], [np.inf, 0.0, 0.0], 0.1)["p_tost"])  # inf - inf
        assert math.isnan(stats.non_inferiority(a, 0.1)["p_ni"])
        assert math.isnan(stats.equivalence_unpaired(a, b, 0.1)["p_tost"])
        res = stats.unpaired(a, b)
        assert math.isnan(res["p_t"]) and math.isnan(res["ci_low"]) and res["effect"] == np.inf
        res = stats.depth_trend(trend)
        assert math.isnan(res["p_t"]) and res["model"] == stats.INFINITE_MODEL
    assert stats.equivalence(finite, b, 5.0)["p_tost"] < 0.05
    assert stats.non_inferiority(finite, 0.1)["p_ni"] < 0.05
    assert stats.equivalence_unpaired(finite, b, 5.0)["p_tost"] < 0.05
    assert stats.unpaired(finite, b)["p_t"] < 0.05
    assert stats.depth_trend(trend.assign(value=trend.value.replace(np.inf, 3.1)))["p_t"] < 0.05


def test_non_inferiority_rejects_a_boundary_null_at_most_alpha_and_finds_a_real_margin():
    """Planted mean exactly at -margin (the null's boundary): rejected <= alpha of the time; a
    planted mean of 0 with the same spread is found."""
    rng = np.random.default_rng(0)
    margin, n, sims = 0.004, 12, 600
    null = np.mean([stats.non_inferiority(rng.normal(-margin, 0.003, n), margin)["p_ni"] < 0.05 for _ in range(sims)])
    alt = np.mean([stats.non_inferiority(rng.normal(0.0, 0.003, n), margin)["p_ni"] < 0.05 for _ in range(sims)])
    assert null <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / sims)  # within sampling error of alpha
    assert alt >= 0.8
    # hand-computed: t = (mean + margin) / (sd / sqrt(n)), one-sided
    x = np.array([0.001, -0.002, 0.0, 0.003, -0.001])
    t = (x.mean() + margin) / (x.std(ddof=1) / np.sqrt(len(x)))
    assert stats.non_inferiority(x, margin)["p_ni"] == pytest.approx(sps.t.sf(t, len(x) - 1), rel=1e-10)


def test_detectable_d_reaches_the_power_exactly_where_statsmodels_does_not_converge():
    # reference values: the noncentral-t power-0.8 effect (statsmodels returns 5.5 for the first)
    assert stats.detectable_d(3, 0.00125) == pytest.approx(20.7, rel=0.01)
    assert stats.detectable_d(4, 0.005) == pytest.approx(4.705, rel=0.002)
    for n, a in [(2, 0.05), (3, 0.00125), (5, 0.00125), (12, 0.01)]:
        assert stats.t_test_power(stats.detectable_d(n, a), n, a) == pytest.approx(0.8, abs=1e-4)
    # and equals statsmodels where that converges
    from statsmodels.stats.power import TTestPower
    assert stats.detectable_d(10, 0.05) == pytest.approx(TTestPower().solve_power(None, nobs=10, alpha=0.05, power=0.8),
                                                         rel=1e-4)


def test_detectable_d_grows_as_the_level_tightens():
    assert stats.detectable_d(10, 0.05 / 19) > stats.detectable_d(10, 0.05) > stats.detectable_d(40, 0.05)
    assert np.isnan(stats.detectable_d(1, 0.05))


def test_unpaired_equivalence_rejects_a_boundary_null_at_most_alpha():
    rng = np.random.default_rng(1)
    margin, sims = 0.01, 500
    null = np.mean([stats.equivalence_unpaired(rng.normal(margin, 0.01, 10), rng.normal(0, 0.01, 10), margin)["p_tost"]
                    < 0.05 for _ in range(sims)])
    alt = np.mean([stats.equivalence_unpaired(rng.normal(0, 0.004, 20), rng.normal(0, 0.004, 20), margin)["p_tost"]
                   < 0.05 for _ in range(sims)])
    assert null <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / sims) and alt >= 0.8
