"""`audit compare`: every method against a baseline method, per depth, on identical groups.

For each metric (and eps) and depth: each method's mean over groups with a bootstrap 95% CI, the
paired difference to the baseline with its CI, the paired t-test p-value Holm-adjusted over every
comparison in the table, Cohen's d_z, the minimal detectable effect, and a verdict word:
``higher`` / ``lower`` (significant after Holm), ``n.s.`` (not significant; compare the MDE) or
``undefined`` (a value is infinite, so there is no mean difference to test: a DeepFool median norm
is infinite where most points never flipped; read ``deepfool_unflipped_rate``). An undefined row is
no test, so it is not in the Holm family. Groups missing on either side are dropped (n falls).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import stats
from .claims import NotMeasured, Results, _aligned

COLUMNS = ["metric", "eps", "depth", "models", "method", "baseline", "n", "mean", "ci_low", "ci_high",
           "baseline_mean", "diff", "diff_ci_low", "diff_ci_high", "d_z", "mde", "p", "mergemany_converged",
           "p_holm", "verdict"]


def _convergence(results: Results, depth: int) -> str:
    ok, total = results.mergemany_convergence((depth,))
    return f"{ok}/{total}" if total else ""


def compare(results: Results, *, baseline: str, methods: list[str] | None = None,
            metrics: list[tuple[str, float | None]], alpha: float = 0.05, n_boot: int = 2000,
            seed: int = 0) -> pd.DataFrame:
    t = results.table
    available = sorted(t[t.kind == "merged"].method.unique())
    if baseline not in available:
        raise ValueError(f"baseline {baseline!r} has no merged models; available: {', '.join(available)}")
    methods = [m for m in (methods or available) if m != baseline]
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise ValueError(f"method {unknown[0]!r} has no merged models; available: {', '.join(available)}")
    rows = []
    for metric, eps in metrics:
        try:
            results.values(metric, eps)
        except NotMeasured as e:
            raise ValueError(str(e)) from None
        for depth in range(1, results.pool_depth + 1):
            base = results.by_group(metric, eps, baseline, depth)
            for method in methods:
                a, b = _aligned(results.by_group(metric, eps, method, depth), base)
                res = stats.paired(a, b, alpha=alpha, n_boot=n_boot, seed=seed)
                lo, hi = stats.bootstrap_ci(a, n_boot=n_boot, seed=seed)
                rows.append({"metric": metric, "eps": eps, "depth": depth, "models": 2 ** depth, "method": method,
                             "baseline": baseline, "n": res["n"], "mean": res["mean_a"], "ci_low": lo, "ci_high": hi,
                             "baseline_mean": res["mean_b"], "diff": res["effect"], "diff_ci_low": res["ci_low"],
                             "diff_ci_high": res["ci_high"], "d_z": res["d_z"], "mde": res["mde"], "p": res["p_t"],
                             # MergeMany capped before convergence is not Ainsworth et al.'s MergeMany
                             "mergemany_converged": _convergence(results, depth)
                             if "mergemany" in (method, baseline) else ""})
    out = pd.DataFrame(rows, columns=COLUMNS[:-2])
    # A single group with an infinite value is untested as well (one_sample gives n = 1 p = 1,
    # "nothing to say", which would read n.s. and enter the family)
    out.loc[(out.n >= 1) & ~np.isfinite(out["diff"].astype(float)), "p"] = np.nan
    out["p_holm"] = stats.holm(out.p.to_numpy(), alpha)
    out["verdict"] = np.where(out.p.isna(), "undefined",
                              np.where(out.p_holm < alpha, np.where(out["diff"] > 0, "higher", "lower"), "n.s."))
    return out[COLUMNS]
