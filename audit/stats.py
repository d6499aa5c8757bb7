"""Statistics for the audit, on scipy and statsmodels (no hand-rolled tests).

* `paired`: two methods on identical groups -> mean difference with a bootstrap 95% CI, paired
  t-test, Wilcoxon signed-rank, Cohen's d_z, and the minimal detectable effect at the achieved n.
* `one_sample`: a quantity against a fixed value (a barrier against 0, a difference against 0).
* `holm`: Holm's step-down adjustment across a family of p-values.
* `equivalence`: TOST on paired samples with a margin (for "no significant influence" claims).
* `unpaired`: two sets of different models (regularized baselines vs merged): Welch's t-test.
* `depth_trend`: metric ~ depth with a random intercept per pool (statsmodels ``mixedlm``), so
  merged models that share base models are not counted as independent; with fewer than 3 pools a
  random effect cannot be estimated and the slope comes from OLS (stated in the result).

Every function returns a plain dict (JSON-serializable) so results can be tabulated and reported.
"""

from __future__ import annotations

import functools

import warnings

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

POWER = 0.8  # power at which the minimal detectable effect is reported


def _clean(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


def _untestable(*samples: np.ndarray) -> bool:
    """Whether a test about means has nothing to test: a sample of n >= 2 holds an infinite or
    NaN value (a DeepFool median norm where most points never flipped), so there is no finite mean
    or variance. Tests return NaN p-values for it (not in a Holm family) and warn of nothing."""
    return any(len(x) >= 2 and not np.isfinite(x).all() for x in samples)


def _mean_as_is(x: np.ndarray) -> float:
    """The mean, infinite or NaN as it comes (the mean of +inf and -inf is NaN), without a
    warning; NaN for no value."""
    with np.errstate(invalid="ignore"):
        return float(x.mean()) if len(x) else float("nan")


def minimal_detectable_effect(n: int, sd: float, alpha: float = 0.05, power: float = POWER) -> float:
    """Smallest true mean difference a two-sided one-sample/paired t-test at ``alpha`` detects with
    ``power``, in the metric's units: d_z solved by statsmodels, times the sd of the differences."""
    if n < 2 or not np.isfinite(sd):
        return float("nan")
    return float(detectable_d(n, alpha, power) * sd)


def t_test_power(d: float, n: int, alpha: float) -> float:
    """Power of a two-sided one-sample t-test on n units at ``alpha`` for standardized effect d
    (noncentral t, scipy)."""
    from scipy.integrate import quad

    df, nc = n - 1, d * np.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    fast = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    if np.isfinite(fast):
        return float(min(1.0, fast))
    # T = (Z + nc) / sqrt(V / df), V ~ chi2(df): integrate the normal tail over V (scipy's nct
    # returns NaN for the large noncentralities few units need)
    def tail(v):
        s = crit * np.sqrt(v / df)
        return (stats.norm.sf(s - nc) + stats.norm.cdf(-s - nc)) * stats.chi2.pdf(v, df)

    return float(min(1.0, quad(tail, 0, np.inf, limit=200)[0]))


@functools.lru_cache(maxsize=4096)
def detectable_d(n: int, alpha: float, power: float = POWER) -> float:
    """The standardized effect (d_z) a two-sided t-test on n units detects at ``alpha`` with
    ``power``; NaN if n < 2, inf if no effect below d = 1e4 reaches that power.

    Solved here by bracketing the noncentral-t power (scipy brentq) because statsmodels'
    `TTestPower.solve_power` silently returns a wrong, too small d at the small levels Holm uses
    with few units (n = 3, alpha 0.00125: 5.5 where the power-0.8 effect is 20.8)."""
    from scipy.optimize import brentq

    if n < 2 or not 0 < alpha < 1:
        return float("nan")
    hi = 1.0
    while t_test_power(hi, n, alpha) < power:
        hi *= 2
        if hi > 1e4:
            return float("inf")
    return float(brentq(lambda d: t_test_power(d, n, alpha) - power, 1e-9, hi, xtol=1e-8, rtol=1e-10))


def non_inferiority(values, margin: float) -> dict:
    """One-sided t-test that the mean of ``values`` exceeds ``-margin`` (H0: mean <= -margin), for
    claims of the form "the drop is at most margin"."""
    d = _clean(values)
    if _untestable(d):
        return {"p_ni": float("nan")}
    if len(d) < 2 or d.std(ddof=1) == 0:
        above = len(d) >= 2 and d.mean() > -margin
        return {"p_ni": 0.0 if above else 1.0}
    return {"p_ni": float(stats.ttest_1samp(d + margin, 0.0, alternative="greater").pvalue)}


def bootstrap_ci(values, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-BCa bootstrap CI of the mean (scipy.stats.bootstrap); (mean, mean) for one value
    or no spread; NaNs if there is no value or any value is infinite or NaN."""
    v = _clean(values)
    if not np.isfinite(v).all():  # no mean to resample (see one_sample)
        return float("nan"), float("nan")
    if len(v) < 2 or np.all(v == v[0]):
        return (float(v.mean()), float(v.mean())) if len(v) else (float("nan"), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa warns on degenerate resamples; the interval is still valid
        res = stats.bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=level,
                              rng=np.random.default_rng(seed), method="BCa")
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def one_sample(values, value: float = 0.0, *, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of ``values`` against ``value``: t-test, Wilcoxon, CI, d_z and the detectable effect."""
    d = _clean(values) - value
    n = len(d)
    mean = _mean_as_is(d)
    out = {"n": n, "mean": mean + value, "effect": mean}
    if _untestable(d):
        # An infinite value (a DeepFool median norm where most points never flipped, so the
        # smallest flipping norm is unbounded) leaves no finite mean or variance, and every test
        # here is about the mean: nothing is tested (p NaN, so not in a Holm family), and the
        # caller says so (`compare`'s verdict "undefined", a claim's caveat). n < 2 is untestable
        # anyway and keeps its p = 1 below.
        nan = float("nan")
        out.update(ci_low=nan, ci_high=nan, sd=nan, t=nan, p_t=nan, p_wilcoxon=nan, d_z=nan, mde=nan)
        return out
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    out.update(ci_low=lo, ci_high=hi, sd=sd)
    if n < 2 or sd == 0:
        # No spread: a t-test is undefined; the sign of an exactly constant difference is certain
        # only if it is not zero, but with n < 2 nothing can be said.
        p = 0.0 if n >= 2 and d.mean() != 0 else 1.0
        out.update(t=float("nan"), p_t=p, p_wilcoxon=p, d_z=float("nan"), mde=float("nan"))
        return out
    t = stats.ttest_1samp(d, 0.0)
    # The t-interval too: verdicts that rest on where a CI lies (equivalence, magnitude claims) use
    # it, since a bootstrap CI of a handful of units is too narrow (n = 2: the range of two values).
    t_lo, t_hi = t.confidence_interval(0.95)
    out.update(t_ci_low=float(t_lo) + value, t_ci_high=float(t_hi) + value, se=sd / np.sqrt(n), df=float(n - 1))
    nonzero = d[d != 0]
    p_w = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) >= 1 else 1.0
    out.update(t=float(t.statistic), p_t=float(t.pvalue), p_wilcoxon=p_w, d_z=float(d.mean() / sd),
               mde=minimal_detectable_effect(n, sd, alpha))
    return out


def paired(a, b, *, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> dict:
    """a vs b on identical units (same groups): statistics of the differences a - b."""
    a, b = _clean(a), _clean(b)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    with np.errstate(invalid="ignore"):  # inf - inf is NaN: one_sample reports it untested
        d = a - b
    out = one_sample(d, 0.0, alpha=alpha, n_boot=n_boot, seed=seed)
    out.update(mean_a=_mean_as_is(a), mean_b=_mean_as_is(b))
    return out


def holm(pvalues, alpha: float = 0.05) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels multipletests); NaNs stay NaN."""
    p = _clean(pvalues)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=alpha, method="holm")[1]
    return out


def equivalence(a, b, margin: float, bounds: tuple[float, float] | None = None) -> dict:
    """Paired TOST: is the mean difference a - b within (-margin, +margin), or within ``bounds``
    (low, high) when given? (statsmodels ttost_paired)."""
    a, b = _clean(a), _clean(b)
    low, high = bounds if bounds is not None else (-margin, margin)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN: untestable below
        d = a - b
    if _untestable(d):
        return {"n": len(d), "effect": _mean_as_is(d), "margin": margin, "p_tost": float("nan")}
    if len(d) < 2 or d.std(ddof=1) == 0:
        inside = len(d) >= 2 and low < d.mean() < high
        return {"n": len(d), "effect": float(d.mean()) if len(d) else float("nan"), "margin": margin,
                "p_tost": 0.0 if inside else 1.0}
    p, _, _ = ttost_paired(a, b, low, high)
    return {"n": len(d), "effect": float(d.mean()), "margin": margin, "p_tost": float(p)}


def equivalence_unpaired(a, b, margin: float) -> dict:
    """Two-sample TOST (Welch): is mean(a) - mean(b) within (-margin, +margin)? (statsmodels)."""
    from statsmodels.stats.weightstats import ttost_ind

    a, b = _clean(a), _clean(b)
    if _untestable(a, b):
        return {"p_tost": float("nan")}
    if len(a) < 2 or len(b) < 2 or (a.std(ddof=1) == 0 and b.std(ddof=1) == 0):
        inside = len(a) >= 2 and len(b) >= 2 and abs(a.mean() - b.mean()) < margin
        return {"p_tost": 0.0 if inside else 1.0}
    p, _, _ = ttost_ind(a, b, -margin, margin, usevar="unequal")
    return {"p_tost": float(p)}


def crossing(curves: np.ndarray, eps: np.ndarray) -> float:
    """The first eps at which the mean of ``curves`` (units x eps) changes sign, linearly
    interpolated between grid points; NaN if it never does (or the mean is 0 throughout)."""
    m = np.nanmean(curves, axis=0)
    for i in range(len(eps) - 1):
        if m[i] == 0:
            return float(eps[i])
        if np.sign(m[i]) != np.sign(m[i + 1]) and m[i + 1] != 0:
            return float(eps[i] + (eps[i + 1] - eps[i]) * m[i] / (m[i] - m[i + 1]))
    return float(eps[-1]) if len(m) and m[-1] == 0 else float("nan")


# Fewer units give a percentile bootstrap that is the range of a handful of values, too narrow to
# decide on (two units: exactly their range); such a crossing is reported without a CI.
CROSSING_MIN_UNITS = 6


def crossing_ci(curves: np.ndarray, eps: np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                level: float = 0.95) -> dict:
    """`crossing` with a percentile bootstrap CI over units (rows). A resample without a crossing
    lies beyond the grid: below it if its curve has the post-crossing sign from the first eps on,
    above it otherwise; an end of the CI that falls beyond the grid is NaN (unbounded)."""
    curves = np.asarray(curves, dtype=float)
    n = len(curves)
    est = crossing(curves, eps)
    if n < CROSSING_MIN_UNITS:
        return {"n": n, "effect": est, "ci_low": float("nan"), "ci_high": float("nan")}
    pre = np.sign(np.nanmean(curves, axis=0)[0])  # the sign before the crossing
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        sample = curves[rng.integers(0, n, n)]
        c = crossing(sample, eps)
        if np.isnan(c):
            c = -np.inf if np.sign(np.nanmean(sample, axis=0)[0]) != pre else np.inf
        boots.append(c)
    tail = (1 - level) / 2
    lo, hi = (float(np.quantile(np.array(boots), q, method="lower" if q < 0.5 else "higher"))
              for q in (tail, 1 - tail))
    return {"n": n, "effect": est, "ci_low": lo if np.isfinite(lo) else float("nan"),
            "ci_high": hi if np.isfinite(hi) else float("nan")}


def unpaired(a, b, *, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> dict:
    """a vs b on different units: Welch's t-test and Mann-Whitney U (scipy), mean difference with a
    bootstrap CI, Cohen's d (pooled sd) and the detectable effect at the smaller n."""
    a, b = _clean(a), _clean(b)
    out = {"n": int(min(len(a), len(b))), "n_a": len(a), "n_b": len(b), "mean_a": _mean_as_is(a),
           "mean_b": _mean_as_is(b)}
    with np.errstate(invalid="ignore"):
        out["effect"] = out["mean_a"] - out["mean_b"]
    if _untestable(a, b):
        nan = float("nan")
        out.update(ci_low=nan, ci_high=nan, p_t=nan, p_wilcoxon=nan, d_z=nan, mde=nan)
        return out
    if len(a) < 2 or len(b) < 2:
        out.update(ci_low=float("nan"), ci_high=float("nan"), p_t=1.0, p_wilcoxon=1.0, d_z=float("nan"), mde=float("nan"))
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((a, b), lambda x, y: np.mean(x) - np.mean(y), n_resamples=n_boot,
                              rng=np.random.default_rng(seed), method="percentile")
    sd = float(np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)))
    t = stats.ttest_ind(a, b, equal_var=False)
    p_t = float(t.pvalue) if np.isfinite(t.pvalue) else (0.0 if out["effect"] != 0 else 1.0)
    t_lo, t_hi = t.confidence_interval(0.95)
    out.update(t_ci_low=float(t_lo), t_ci_high=float(t_hi), se=float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))),
               df=float(t.df))
    out.update(ci_low=float(res.confidence_interval.low), ci_high=float(res.confidence_interval.high), p_t=p_t,
               p_wilcoxon=float(stats.mannwhitneyu(a, b).pvalue), d_z=out["effect"] / sd if sd > 0 else float("nan"),
               mde=minimal_detectable_effect(out["n"], sd * np.sqrt(2), alpha))
    return out


# The "model" a test reports where a value is infinite and nothing was tested.
INFINITE_MODEL = "none (a value is infinite)"


def depth_trend(frame: pd.DataFrame) -> dict:
    """Slope of ``value`` per merge level (``depth``), with the pool as a random effect.

    ``frame`` columns: value, depth, pool. With >= 3 pools: ``mixedlm(value ~ depth,
    groups=pool)`` (statsmodels), so models that share base models are not counted as independent
    across pools. With fewer pools a random effect cannot be estimated: OLS, and the result says
    that models sharing base models were treated as independent (its p-value is optimistic).
    """
    import statsmodels.formula.api as smf

    df = frame[["value", "depth", "pool"]].dropna().astype(float)
    n = len(df)
    if n < 3 or df.depth.nunique() < 2:
        return {"n": n, "effect": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_t": float("nan"),
                "model": "none (fewer than 2 depths)"}
    if _untestable(df.value.to_numpy()):
        return {"n": n, "effect": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_t": float("nan"),
                "model": INFINITE_MODEL}
    if df.value.std() == 0:
        return {"n": n, "effect": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_t": 1.0, "model": "none (constant values)"}
    if df.pool.nunique() >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # statsmodels convergence chatter
            fit = smf.mixedlm("value ~ depth", df, groups=df["pool"]).fit(reml=True)
        model = f"mixedlm, random intercept per pool ({df.pool.nunique()} pools)"
    else:
        fit = smf.ols("value ~ depth", df).fit()
        model = f"OLS ({df.pool.nunique()} pool(s): models sharing base models treated as independent)"
    lo, hi = fit.conf_int().loc["depth"]
    return {"n": n, "effect": float(fit.params["depth"]), "ci_low": float(lo), "ci_high": float(hi),
            "p_t": float(fit.pvalues["depth"]), "model": model}
