"""The claims registry (reports/claims.yaml) -> statistical verdicts on the evaluated zoo.

Every claim names a metric (and eps), a test and the expected outcome. Tests (units of replication
in brackets; design §2):

* ``paired``: method a vs method b at each listed depth [merge groups: both methods merged the
  identical base models; several merge seeds are averaged within a group].
* ``depth_change``: a method's value at ``to_depth`` minus the mean of its sub-groups at
  ``from_depth`` [groups at to_depth]; with ``b``, a's change minus b's change.
* ``vs_base``: a method at ``depth`` minus the mean of the base models it merged [groups].
* ``trend``: slope of the metric over depth (base models = depth 0 if ``include_base``) for one
  method [mixed model, pool as random effect; see `audit.stats.depth_trend`].
* ``unpaired``: models selected by ``a`` vs by ``b`` (e.g. L2-regularized baselines vs merged
  models) [models; Welch's t-test].
* ``equivalence`` expectation: TOST with ``margin`` (default: audit.equivalence_margin).
* ``sides``: hierarchical with the first vs the second model of each pair permuted [group x seed].

Verdicts: a directional claim (expect greater / less) is *supported* when its Holm-adjusted p
(over all claims) is below alpha and the effect has the expected sign, *contradicted* when it is
significant with the opposite sign, otherwise *inconclusive* - reported with the minimal
detectable effect at the level Holm held that test to (alpha / (m - rank + 1), not raw alpha),
which tells "no difference" from "too few models to tell". An equivalence claim is *supported*
when TOST rejects non-equivalence, *contradicted* only when its whole t-interval at the family's
Bonferroni level (alpha / m; columns t_ci_low, t_ci_high) lies outside +-margin.
A non-inferiority claim (expect non_inferior: "the drop is at most margin") is *supported* when a
one-sided test rejects "effect <= -margin", *contradicted* when the whole CI lies below -margin. A
claim tested on several units is *mixed* when some units are supported and others contradicted.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from . import stats
from .config import UserError, read_yaml
from .methods import METHODS

TESTS = ("paired", "depth_change", "vs_base", "trend", "unpaired", "sides", "crossing", "spread_trend")
EXPECT = ("greater", "less", "equivalent", "non_inferior", "within")
VERDICTS = ("supported", "contradicted", "mixed", "inconclusive")
# Every metric `audit.metrics.evaluate` writes (the registry may name no other).
METRICS = ("clean_accuracy", "clean_loss", "fgsm_robust_accuracy", "fgsm_success_rate", "pgd_robust_accuracy",
           "pgd_success_rate", "deepfool_robust_accuracy", "deepfool_median_norm", "deepfool_unflipped_rate",
           "weight_norm", "lipschitz_global", "lipschitz_paper", "lipschitz_local_mean", "lipschitz_local_max",
           "lipschitz_am_mean", "lipschitz_am_max")
KINDS = ("base", "merged", "regularized")


class ClaimsError(UserError, ValueError):
    """A malformed claims registry or results table (one-line message naming the claim and key)."""


class NotMeasured(LookupError):
    """The results have no values for a claim's metric at its eps (the eval grid differs)."""


@dataclass(frozen=True)
class Claim:
    id: str
    source: str
    quote: str
    metric: str
    test: str
    expect: str
    eps: float | None = None
    a: str | None = None  # method (or selector "kind:method" for unpaired)
    b: str | None = None
    depth: tuple[int, ...] = ()
    from_depth: int | None = None
    to_depth: int | None = None
    margin: float | None = None
    # A number the claim is stated against: directional tests compare the effect with ``reference``
    # instead of 0 (e.g. "a bigger drop than the 0 reported"); ``within`` claims with ``interval``.
    reference: float | None = None
    interval: tuple[float, float] | None = None
    include_base: bool = False
    note: str = ""
    control: bool = False  # a control the review asked for, not a claim of a paper
    # Why the claim holds for every model whatever the data (a proof, e.g. the triangle inequality):
    # its "supported" is no evidence, and `informative` names the claim that is.
    by_construction: str = ""
    informative: str = ""

    @property
    def methods(self) -> set[str]:
        """Merge methods the claim's values come from."""
        out = {m for m in (self.a, self.b) if m and ":" not in m and m != "base"}
        for sel in (self.a, self.b):
            if sel and ":" in sel:
                kind, _, rest = sel.partition(":")
                if kind == "merged":
                    out.add(rest.partition("@")[0])
        if self.test == "sides":  # the methods that run with either side permuted
            out |= {name for name, m in METHODS.items() if m.sided}
        return out


def load_claims(path: str | Path) -> list[Claim]:
    path = Path(path)
    raw = read_yaml(path, "claims registry", ClaimsError)
    entries = raw.get("claims") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise ClaimsError(f"{path}: expected a top-level 'claims:' list")
    fields = set(Claim.__dataclass_fields__)
    out, seen = [], set()
    for i, e in enumerate(entries):
        where = f"{path}: claims[{i}]" + (f" ({e.get('id')})" if isinstance(e, dict) and e.get("id") else "")
        if not isinstance(e, dict):
            raise ClaimsError(f"{where}: expected a mapping")
        unknown = set(e) - fields
        if unknown:
            raise ClaimsError(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(fields))}")
        missing = [k for k in ("id", "source", "quote", "metric", "test", "expect") if k not in e]
        if missing:
            raise ClaimsError(f"{where}: missing key {missing[0]!r}")
        if e["test"] not in TESTS:
            raise ClaimsError(f"{where}: test: unknown value {e['test']!r}; allowed: {', '.join(TESTS)}")
        if e["expect"] not in EXPECT:
            raise ClaimsError(f"{where}: expect: unknown value {e['expect']!r}; allowed: {', '.join(EXPECT)}")
        if e["id"] in seen:
            raise ClaimsError(f"{where}: id {e['id']!r} used twice")
        seen.add(e["id"])
        depth = e.get("depth", ())
        e = {**e, "depth": tuple(depth if isinstance(depth, list) else [depth]) if depth != () else ()}
        if e["expect"] == "within":
            iv = e.get("interval")
            if not (isinstance(iv, list) and len(iv) == 2 and all(isinstance(v, (int, float)) for v in iv)
                    and iv[0] < iv[1]):
                raise ClaimsError(f"{where}: interval: expect within needs [low, high] with low < high, got {iv!r}")
            e["interval"] = (float(iv[0]), float(iv[1]))
        for key in ("reference", "margin", "eps"):
            v = e.get(key)
            if isinstance(v, str):  # YAML 1.1 reads 1e-3 as a string
                try:
                    v = e[key] = float(v)
                except ValueError:
                    pass
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise ClaimsError(f"{where}: {key}: expected a number, got {v!r}")
        out.append(Claim(**e))
    return out


def _nearest(value, allowed) -> str:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.0)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_claims(claims: list[Claim], *, methods, depth: int, path: str | Path = "claims registry",
                 beyond_depth: str = "error") -> None:
    """Refuse a registry that names what this run cannot have: an unknown metric, method, test or
    selector, an impossible depth or one beyond ``zoo.depth`` (unless ``beyond_depth`` is
    "not_measured") is a `ClaimsError` naming the claim, the key and the nearest valid value,
    raised before anything is computed. (An eps the run did not measure, a method or regularized
    baseline it did not make: such a claim reads "not measured" or has no units.) ``methods``:
    every merge method the tool knows."""
    methods = list(methods)
    ids = {c.id for c in claims}

    def fail(c: Claim, key: str, value, allowed, why: str = "unknown value"):
        raise ClaimsError(f"{path}: claim {c.id}: {key}: {why} {value!r}{_nearest(value, allowed)} "
                          f"(allowed: {', '.join(map(str, allowed))})")

    def check_method(c: Claim, key: str, m):
        if m not in methods:
            fail(c, key, m, methods, "unknown method")

    def check_depth(c: Claim, key: str, d):
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            fail(c, key, d, list(range(1, depth + 1)), "depth must be an integer >= 1, got")
        if d > depth and beyond_depth == "error":
            raise ClaimsError(f"{path}: claim {c.id}: {key}: depth {d} ({2 ** d} models) exceeds zoo.depth "
                              f"{depth}; the nearest valid depth is {depth} (or set audit.beyond_depth: "
                              "not_measured to report such claims as not measured)")

    def check_selector(c: Claim, key: str, sel):
        spec, at, d = str(sel).partition("@")
        kind, _, method = spec.partition(":")
        if kind not in KINDS:
            fail(c, key, sel, [f"{k}:..." for k in KINDS], "unknown selector")
        if kind == "merged" and method:
            check_method(c, key, method)
        if at:
            if not d.isdigit():
                fail(c, key, sel, [f"{spec}@{k}" for k in range(1, depth + 1)], "bad depth in selector")
            check_depth(c, key, int(d))

    for c in claims:
        if c.metric not in METRICS:
            fail(c, "metric", c.metric, METRICS)
        for key in ("a", "b"):
            v = getattr(c, key)
            if v is None:
                continue
            if c.test == "unpaired":
                check_selector(c, key, v)
            else:
                check_method(c, key, v)
        if c.test in ("paired", "depth_change", "vs_base", "trend", "crossing", "spread_trend") and c.a is None:
            raise ClaimsError(f"{path}: claim {c.id}: a: missing; test {c.test} needs a method")
        if c.test == "paired" and c.b is None:
            raise ClaimsError(f"{path}: claim {c.id}: b: missing; test paired compares a with b")
        if c.test == "unpaired" and (c.a is None or c.b is None):
            raise ClaimsError(f"{path}: claim {c.id}: a and b: both needed by test unpaired")
        for d in c.depth:
            check_depth(c, "depth", d)
        for key in ("from_depth", "to_depth"):
            if getattr(c, key) is not None:
                check_depth(c, key, getattr(c, key))
        if c.test == "depth_change" and (c.from_depth is None or c.to_depth is None or c.from_depth >= c.to_depth):
            raise ClaimsError(f"{path}: claim {c.id}: from_depth/to_depth: test depth_change needs "
                              f"from_depth < to_depth, got {c.from_depth}, {c.to_depth}")
        if c.test == "sides" and 1 in c.depth:
            raise ClaimsError(f"{path}: claim {c.id}: depth: 1 is an identity for the side test (matching B "
                              "onto A and A onto B give the same network up to a permutation); use depths >= 2")
        if c.test == "crossing" and c.expect != "within":
            raise ClaimsError(f"{path}: claim {c.id}: expect: test crossing is decided by its CI; use "
                              f"expect: within with an interval, got {c.expect!r}")
        needs_units = {"equivalent": ("paired", "depth_change", "vs_base", "sides", "unpaired"),
                       "non_inferior": ("paired", "depth_change", "vs_base", "sides"),
                       "within": ("paired", "depth_change", "vs_base", "sides", "crossing")}
        if c.expect in needs_units and c.test not in needs_units[c.expect]:
            raise ClaimsError(f"{path}: claim {c.id}: expect: {c.expect} is not tested by test {c.test}; it "
                              f"needs one of {', '.join(needs_units[c.expect])}")
        if c.reference is not None and (c.test not in ("paired", "depth_change", "vs_base")
                                        or c.expect not in ("greater", "less")):
            raise ClaimsError(f"{path}: claim {c.id}: reference: only for greater/less claims of tests paired, "
                              "depth_change, vs_base")
        if c.informative and c.informative not in ids:
            fail(c, "informative", c.informative, sorted(ids), "no such claim")
        if c.informative and not c.by_construction:
            raise ClaimsError(f"{path}: claim {c.id}: informative: only for a claim marked by_construction")


# ---------------------------------------------------------------- selecting values


@dataclass
class Results:
    """The evaluation table joined with the model catalog, plus the ablation's shape."""

    table: pd.DataFrame  # results/evaluation.csv
    pool_depth: int  # D
    main_side: str = "second"
    _cache: dict = field(default_factory=dict)

    def eps_grid(self, metric: str) -> list[float]:
        """The eps at which the run measured ``metric``."""
        t = self.table[self.table.metric == metric]
        grid = sorted(float(e) for e in t.eps.dropna().unique())
        if not grid:
            raise NotMeasured(f"no results for {metric!r} at any eps")
        return grid

    def converged_only(self) -> "Results":
        """The same results without the MergeMany models that stopped at their pass cap."""
        t = self.table
        if "converged" not in t:
            return self
        unconverged = (t.method == "mergemany") & (t.kind == "merged") & ~_truthy(t.converged)
        return Results(t[~unconverged], self.pool_depth, self.main_side)

    def mergemany_convergence(self, depths) -> tuple[int, int]:
        """(converged, all) MergeMany models at these depths (all depths if empty)."""
        t = self.table
        mm = t[(t.kind == "merged") & (t.method == "mergemany")].drop_duplicates("model")
        if depths:
            mm = mm[mm.depth.isin(list(depths))]
        if "converged" not in mm:
            return 0, 0
        return int(_truthy(mm.converged).sum()), len(mm)

    def values(self, metric: str, eps: float | None) -> pd.DataFrame:
        key = (metric, eps)
        if key not in self._cache:
            t = self.table[self.table.metric == metric]
            t = t[t.eps.isna()] if eps is None else t[np.isclose(t.eps, eps)]
            if t.empty:
                have = sorted(self.table[self.table.metric == metric].eps.dropna().unique())
                raise NotMeasured(f"no results for {metric!r} at eps {eps}"
                                  + (f" (measured at eps {', '.join(f'{e:g}' for e in have)})" if have else ""))
            self._cache[key] = t
        return self._cache[key]

    def by_group(self, metric: str, eps: float | None, method: str, depth: int) -> pd.Series:
        """Per (pool, group): the method's value at depth, averaged over merge seeds (main side)."""
        t = self.values(metric, eps)
        t = t[(t.kind == "merged") & (t.method == method) & (t.depth == depth)]
        t = t[t.side.isna() | (t.side == self.main_side)]
        return t.groupby(["pool", "group"]).value.mean()

    def base_members(self, metric: str, eps: float | None, depth: int) -> pd.Series:
        """Per (pool, group at depth): the mean over the base models the group merged."""
        t = self.values(metric, eps)
        base = t[t.kind == "base"].copy()
        size = 2 ** self.pool_depth
        base["group"] = (base.seed.astype(int) - base.pool.astype(int) * size) // 2 ** depth
        return base.groupby(["pool", "group"]).value.mean()

    def subgroup_mean(self, metric: str, eps: float | None, method: str, from_depth: int, to_depth: int) -> pd.Series:
        """Per (pool, group at to_depth): mean of the method's values over its sub-groups at from_depth."""
        sub = self.by_group(metric, eps, method, from_depth).reset_index()
        sub["group"] = sub.group.astype(int) // 2 ** (to_depth - from_depth)
        return sub.groupby(["pool", "group"]).value.mean()

    def select(self, selector: str, metric: str, eps: float | None) -> pd.Series:
        """``kind:method[@depth]`` (e.g. ``regularized:l2``, ``merged:hierarchical@4``, ``base``)."""
        t = self.values(metric, eps)
        spec, _, depth = selector.partition("@")
        kind, _, method = spec.partition(":")
        t = t[t.kind == kind]
        if method:
            t = t[t.method == method]
        if depth:
            t = t[t.depth == int(depth)]
        if kind == "merged":
            t = t[t.side.isna() | (t.side == self.main_side)]
        return t.value


def _truthy(col: pd.Series) -> pd.Series:
    """A bool column as read back from CSV (True/False, 'True'/'False', 1/0, NaN as False)."""
    return col.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0")).astype(bool)


def _aligned(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    return both.a.to_numpy(), both.b.to_numpy()


# ---------------------------------------------------------------- evaluating claims


def _test_claim(c: Claim, r: Results, margin: float, alpha: float, n_boot: int, seed: int) -> list[dict]:
    """One row per tested unit of the claim (per depth for ``paired`` over several depths)."""
    deep = [d for d in (*c.depth, c.from_depth, c.to_depth) if d is not None and d > r.pool_depth]
    if deep:
        raise NotMeasured(f"depth {max(deep)} ({2 ** max(deep)} models) exceeds this run's zoo.depth {r.pool_depth}")
    kw = dict(alpha=alpha, n_boot=n_boot, seed=seed)
    rows = []

    def add(label: str, a, b=None, res: dict | None = None):
        if res is None:
            with np.errstate(invalid="ignore"):  # inf - inf is NaN: the tests below report it untested
                diff = a - b if b is not None else a
                mean_diff = float(np.mean(diff)) if len(diff) else float("nan")
            ref = c.reference or 0.0
            res = stats.one_sample(diff, ref, **kw) if ref else \
                (stats.paired(a, b, **kw) if b is not None else stats.one_sample(a, **kw))
            if ref:  # report the difference itself; the test is against the reference
                res.update(effect=mean_diff, ci_low=res["ci_low"] + ref, ci_high=res["ci_high"] + ref)
            if c.expect == "equivalent":
                res.update(stats.equivalence(diff, np.zeros_like(diff), margin))
            elif c.expect == "within":
                res.update(stats.equivalence(diff, np.zeros_like(diff), margin, bounds=c.interval))
            elif c.expect == "non_inferior":
                res.update(stats.non_inferiority(diff, margin))
            if not np.isfinite(diff).all():  # no test took place (n = 1: none either way): said in the caveat
                res["model"] = stats.INFINITE_MODEL
        rows.append({"unit": label, **res})

    if c.test == "paired":
        for d in c.depth or range(1, r.pool_depth + 1):
            a, b = _aligned(r.by_group(c.metric, c.eps, c.a, d), r.by_group(c.metric, c.eps, c.b, d))
            add(f"depth {d} ({2 ** d} models)", a, b)
    elif c.test == "depth_change":
        f, t = c.from_depth, c.to_depth
        # Groups measured at both depths (by every method compared) are aligned first and only then
        # subtracted: an infinite value at both depths gives NaN, which must reach the test (and
        # be reported untested), not be dropped as if the group were missing.
        parts = [r.by_group(c.metric, c.eps, m, t) for m in (c.a, c.b) if m] + \
            [r.subgroup_mean(c.metric, c.eps, m, f, t) for m in (c.a, c.b) if m]
        both = pd.concat(parts, axis=1, keys=range(len(parts))).dropna().to_numpy().T
        with np.errstate(invalid="ignore"):
            changes = both[:len(both) // 2] - both[len(both) // 2:]  # per method: at t minus its sub-groups at f
        if c.b:
            add(f"change {2 ** f}->{2 ** t} models, {c.a} minus {c.b}", changes[0], changes[1])
        else:
            add(f"change {2 ** f}->{2 ** t} models", changes[0])
    elif c.test == "vs_base":
        for d in c.depth or (1,):
            a, b = _aligned(r.by_group(c.metric, c.eps, c.a, d), r.base_members(c.metric, c.eps, d))
            add(f"depth {d}: {c.a} minus its base models", a, b)
    elif c.test == "trend":
        t = r.values(c.metric, c.eps)
        sel = t[(t.kind == "merged") & (t.method == c.a) & (t.side.isna() | (t.side == r.main_side))]
        if c.include_base:
            sel = pd.concat([sel, t[t.kind == "base"]])
        res = stats.depth_trend(sel[["value", "depth", "pool"]])
        res.setdefault("mde", float("nan"))
        add(f"slope per merge level ({c.a}{', base = 0' if c.include_base else ''})", None, res=res)
    elif c.test == "unpaired":
        # NaN is a value not measured (a DeepFool norm where no point is classified correctly)
        a = r.select(c.a, c.metric, c.eps).dropna().to_numpy()
        b = r.select(c.b, c.metric, c.eps).dropna().to_numpy()
        res = stats.unpaired(a, b, **kw)
        if c.expect == "equivalent":
            res.update(stats.equivalence_unpaired(a, b, margin))
        if not (np.isfinite(a).all() and np.isfinite(b).all()):  # untested (or n = 1: untestable anyway)
            res["model"] = stats.INFINITE_MODEL
        add(f"{c.a} vs {c.b}", None, res=res)
    elif c.test == "crossing":
        # Where the method's curve over eps crosses that of the base models it merged: per group,
        # merged minus the mean of its members at every eps of the grid (design: same groups).
        grid = r.eps_grid(c.metric)
        for d in c.depth or range(1, r.pool_depth + 1):
            curves = []
            for e in grid:
                a_, b_ = _aligned(r.by_group(c.metric, e, c.a, d), r.base_members(c.metric, e, d))
                curves.append(a_ - b_)
            if not curves or len({len(x) for x in curves}) != 1:
                raise NotMeasured(f"{c.metric}: groups differ across the eps grid at depth {d}")
            res = stats.crossing_ci(np.array(curves).T, np.array(grid), n_boot=n_boot, seed=seed)
            res["model"] = f"eps grid {', '.join(f'{e:g}' for e in grid)}"
            add(f"depth {d}: eps where {c.a} meets its base models", None, res=res)
    elif c.test == "spread_trend":
        # Does the spread between models shrink with depth? Per pool and depth: the log sd between
        # groups (merge seeds averaged, as in every other test; base models = depth 0; >= 2 per
        # cell), then its trend over depth with the pool as a random effect. log sd is biased low by
        # 1/2 (digamma(k/2) + ln(2/k)), k = groups - 1, and k falls with depth, so that bias is
        # removed: without it a constant spread reads as a shrinking one. Averaging shrinks spread
        # for any models, so this speaks of merging only beside naive averaging's (control C4).
        from scipy.special import digamma

        t = r.values(c.metric, c.eps)
        sel = t[(t.kind == "merged") & (t.method == c.a) & (t.side.isna() | (t.side == r.main_side))]
        units = sel.groupby(["pool", "depth", "group"]).value.mean().reset_index()
        if c.include_base:
            base = t[t.kind == "base"][["pool", "depth", "seed", "value"]].rename(columns={"seed": "group"})
            units = pd.concat([units, base])
        units = units.dropna(subset=["value"])
        units["infinite"] = np.isinf(units.value)
        spread = units.groupby(["pool", "depth"]).agg(std=("value", "std"), count=("value", "count"),
                                                      infinite=("infinite", "any")).reset_index()
        spread = spread[spread["count"] >= 2]  # a cell of one unit has no spread
        if spread.infinite.any():  # its sd would be NaN, and the cell would drop out unseen
            nan = float("nan")
            res = {"n": len(spread), "effect": nan, "ci_low": nan, "ci_high": nan, "p_t": nan,
                   "model": stats.INFINITE_MODEL}
        else:
            spread = spread[spread["std"] > 0]
            k = spread["count"] - 1
            bias = 0.5 * (digamma(k / 2) + np.log(2 / k))
            frame = pd.DataFrame({"value": np.log(spread["std"]) - bias, "depth": spread.depth, "pool": spread.pool})
            res = stats.depth_trend(frame)
        res.setdefault("mde", float("nan"))
        add(f"slope of log sd per merge level ({c.a})", None, res=res)
    elif c.test == "sides":
        t = r.values(c.metric, c.eps)
        h = t[(t.kind == "merged") & t.method.isin([name for name, m in METHODS.items() if m.sided])]
        for d in c.depth or (1,):
            hd = h[h.depth == d]
            first = hd[hd.side == "first"].set_index(["pool", "group", "merge_seed"]).value
            second = hd[hd.side == "second"].set_index(["pool", "group", "merge_seed"]).value
            a, b = _aligned(first, second)
            add(f"depth {d}: first minus second permuted", a, b)
    return rows


def evaluate_claims(claims: list[Claim], results: Results, *, alpha: float = 0.05, margin: float = 0.01,
                    n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per claim x unit: effect, CI, raw and Holm-adjusted p, n, MDE and the verdict."""
    out = _evaluate(claims, results, alpha, margin, n_boot, seed)
    if out.empty:
        return out
    # A MergeMany model that stopped at its pass cap is not what Ainsworth et al.'s algorithm
    # returns, and the cap binds harder the more models are merged: every claim on MergeMany says
    # how many of its models converged and, where some did not, stands beside the same test on the
    # converged ones only (Holm over that family alike).
    out["mergemany_converged"] = ""
    out["verdict_converged_only"] = ""
    mm_claims = [c for c in claims if "mergemany" in c.methods]
    partial = []
    for c in mm_claims:
        depths = c.depth or tuple(d for d in (c.from_depth, c.to_depth) if d is not None)
        ok, total = results.mergemany_convergence(depths)
        out.loc[out.id == c.id, "mergemany_converged"] = f"{ok}/{total}"
        if ok < total:
            partial.append(c)
    if partial:
        alt = _evaluate(claims, results.converged_only(), alpha, margin, n_boot, seed)
        for c in partial:
            mine = out.id == c.id
            theirs = alt[alt.id == c.id]
            if len(theirs) == mine.sum():
                out.loc[mine, "verdict_converged_only"] = theirs.verdict.to_numpy()
    return out


def _evaluate(claims: list[Claim], results: Results, alpha: float, margin: float, n_boot: int,
              seed: int) -> pd.DataFrame:
    rows = []
    for c in claims:
        m = c.margin if c.margin is not None else margin
        try:
            tested = _test_claim(c, results, m, alpha, n_boot, seed)
        except NotMeasured as e:
            # The run's eval grid does not include what the claim needs: reported, not fatal.
            tested = [{"unit": f"not measured: {e}", "n": 0}]
        for row in tested:
            rows.append({"id": c.id, "source": c.source, "metric": c.metric, "eps": c.eps, "test": c.test,
                         "expect": c.expect, "control": c.control,
                         "by_construction": c.by_construction, "informative": c.informative,
                         "reference": c.reference, "interval": c.interval,
                         "margin": m if c.expect in ("equivalent", "non_inferior") else np.nan,
                         **{k: row.get(k, np.nan) for k in ("unit", "n", "effect", "ci_low", "ci_high", "d_z", "mde",
                                                             "p_t", "p_tost", "p_ni", "t_ci_low", "t_ci_high", "se", "df",
                                                             "model")}})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    # One family: every claim's primary p-value (the t-test; TOST for equivalence claims, the
    # one-sided test for non-inferiority claims).
    out["p"] = np.select([out.expect.isin(["equivalent", "within"]), out.expect == "non_inferior"],
                         [out.p_tost, out.p_ni], out.p_t)
    out.loc[out.test == "crossing", "p"] = np.nan  # decided by its CI alone, outside the Holm family
    out["p_holm"] = stats.holm(out.p.to_numpy(), alpha)
    out["alpha_holm"] = _holm_levels(out.p.to_numpy(), alpha)
    # The detectable effect at the level the verdict is held to (Holm's step for this test, not
    # raw alpha): mde scales with the t-test's d at that level, sd and n unchanged.
    raw_d = np.array([stats.detectable_d(int(n), alpha) if np.isfinite(n) else np.nan for n in out.n])
    holm_d = np.array([stats.detectable_d(int(n), lv) if np.isfinite(n) else np.nan
                       for n, lv in zip(out.n, out.alpha_holm)])
    out["mde_raw"] = out.mde
    out["mde"] = out.mde * holm_d / raw_d
    # The t-interval a contradiction of an equivalence, within or non-inferiority claim rests on,
    # at the family's Bonferroni level alpha / m (a raw 95% interval over some 40 tests would
    # contradict claims by chance; Bonferroni is Holm's strictest step and needs no ranking).
    from scipy import stats as sps

    m = max(1, int(np.isfinite(out.p.to_numpy(dtype=float)).sum()))
    centre = (out.t_ci_low + out.t_ci_high) / 2
    half = sps.t.ppf(1 - alpha / m / 2, out.df) * out.se
    out["t_ci_low"], out["t_ci_high"] = centre - half, centre + half
    out["verdict"] = [_verdict(r, alpha) for r in out.itertuples()]
    out["n_to_decide"] = [_units_to_decide(r, alpha) for r in out.itertuples()]
    return out


def _units_to_decide(r, alpha: float) -> float:
    """For an inconclusive directional test: how many units (what its n counts: groups, pools)
    would detect the observed effect, taken as true, with 80% power at this test's Holm level,
    the spread per unit unchanged. A lower bound: Holm's step-down can hold the test to a stricter
    level. NaN where it does not apply: a decided test, an equivalence-type claim, an effect of the
    wrong sign or none, or one that this n already detects (held back by the step-down only)."""
    if r.verdict != "inconclusive" or r.expect not in ("greater", "less") or r.test == "crossing":
        return float("nan")
    n, mde_raw, level = float(r.n), float(r.mde_raw), float(r.alpha_holm)
    ref = 0.0 if r.reference is None or (isinstance(r.reference, float) and math.isnan(r.reference)) else r.reference
    delta = float(r.effect) - ref
    if not (np.isfinite([n, mde_raw, level, delta]).all() and n >= 2 and mde_raw > 0) or delta == 0:
        return float("nan")
    if (r.expect == "greater") != (delta > 0):
        return float("nan")
    # mde at raw alpha = d(n, alpha) * sd (finite where the Holm level's may not be, at n = 2 or 3).
    target = abs(delta) / (mde_raw / stats.detectable_d(int(n), alpha))
    lo = hi = int(n)
    if stats.detectable_d(hi, level) <= target:
        return float("nan")
    while stats.detectable_d(hi, level) > target:
        lo, hi = hi, hi * 2
        if hi > 10**6:
            return float("inf")
    while hi - lo > 1:  # detectable_d falls with n: the smallest n' that detects it
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if stats.detectable_d(mid, level) > target else (lo, mid)
    return float(hi)


def _t_ci(r) -> tuple[float, float]:
    """The test's t-interval; NaN where it has none (every comparison with NaN is False, so a
    missing interval decides nothing)."""
    return float(getattr(r, "t_ci_low", np.nan)), float(getattr(r, "t_ci_high", np.nan))


def _holm_levels(p: np.ndarray, alpha: float) -> np.ndarray:
    """The level Holm's step-down compares each p-value with: alpha / (m - rank + 1), rank by
    ascending p among the m finite p-values (NaN for the others)."""
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    for rank, i in enumerate(order, start=1):
        out[i] = alpha / (m - rank + 1)
    return out


def _verdict(r, alpha: float) -> str:
    if r.n is None or (isinstance(r.n, float) and math.isnan(r.n)) or r.n < 2:
        return "inconclusive"
    if math.isnan(r.p_holm) and r.test != "crossing":
        return "inconclusive"
    if r.expect == "equivalent":
        if r.p_holm < alpha:
            return "supported"
        # Not equivalent only when the whole CI lies outside the margin (a significant difference
        # that may still be within the margin is no contradiction). The t-interval: see stats.
        lo, hi = _t_ci(r)
        if lo > r.margin or hi < -r.margin:
            return "contradicted"
        return "inconclusive"
    if r.test == "crossing" and r.expect != "within":
        return "inconclusive"
    if r.expect == "within" and r.test == "crossing":  # a bootstrap CI, no p-value
        lo, hi = r.interval
        if np.isfinite(r.ci_low) and np.isfinite(r.ci_high) and lo <= r.ci_low and r.ci_high <= hi:
            return "supported"
        # a NaN end is beyond the grid: it can still show the crossing lies outside the interval
        if (np.isfinite(r.ci_high) and r.ci_high < lo) or (np.isfinite(r.ci_low) and r.ci_low > hi):
            return "contradicted"
        return "inconclusive"
    if r.expect == "within":
        if r.p_holm < alpha:
            return "supported"
        lo, hi = r.interval
        t_lo, t_hi = _t_ci(r)
        return "contradicted" if t_hi < lo or t_lo > hi else "inconclusive"
    if r.expect == "non_inferior":
        if r.p_holm < alpha:
            return "supported"
        return "contradicted" if _t_ci(r)[1] < -r.margin else "inconclusive"
    if r.p_holm >= alpha:
        return "inconclusive"
    ref = 0.0 if r.reference is None or (isinstance(r.reference, float) and math.isnan(r.reference)) else r.reference
    sign_ok = r.effect > ref if r.expect == "greater" else r.effect < ref
    return "supported" if sign_ok else "contradicted"


def claim_verdicts(rows: pd.DataFrame) -> pd.DataFrame:
    """One verdict per claim: supported/contradicted only if every unit agrees; "mixed" when some
    units are supported and others contradicted; else inconclusive (the detail lists each unit)."""
    out = []
    for cid, g in rows.groupby("id", sort=False):
        verdict = _combined(g.verdict)
        out.append({"id": cid, "verdict": verdict, "units": len(g),
                    "caveat": _caveat(g.iloc[0], g),
                    "detail": "; ".join(f"{u}: {v}" for u, v in zip(g.unit, g.verdict))})
    return pd.DataFrame(out)


def verdict_records(claims: list[Claim], rows: pd.DataFrame) -> list[dict]:
    """results/claims.json: per claim its verdict, caveat, source and quote, and every tested unit
    (non-finite numbers as null)."""
    by_id = {c.id: c for c in claims}
    return [{**v, "source": by_id[v["id"]].source, "quote": by_id[v["id"]].quote, "control": by_id[v["id"]].control,
             "tests": rows[rows.id == v["id"]].replace({np.nan: None, np.inf: None, -np.inf: None}).to_dict("records")}
            for v in claim_verdicts(rows).to_dict("records")]


def _combined(verdicts) -> str:
    """A claim's verdict from its units' verdicts."""
    found = set(verdicts)
    if len(found) == 1:
        return found.pop()
    if {"supported", "contradicted"} <= found:
        return "mixed"  # units disagree significantly: listed in detail, never averaged away
    return "inconclusive"


def _caveat(first, g: pd.DataFrame) -> str:
    """What a reader must know beside the verdict: a claim that holds by construction (its
    "supported" is no evidence), units not tested because a value is infinite, MergeMany models
    that did not converge."""
    notes = []
    by_construction = first.get("by_construction", "")
    if isinstance(by_construction, str) and by_construction:
        informative = first.get("informative", "")
        notes.append(f"holds by construction ({by_construction})"
                     + (f"; the informative test is {informative}" if isinstance(informative, str) and informative
                        else ""))
    if "model" in g:
        infinite = [u for u, m in zip(g.unit, g.model) if m == stats.INFINITE_MODEL]
        if infinite:
            notes.append(f"not tested where a value is infinite ({'; '.join(map(str, infinite))}): a DeepFool "
                         "median norm is infinite where most points never flipped; see deepfool_unflipped_rate")
    conv = first.get("mergemany_converged", "")
    if isinstance(conv, str) and conv and not conv.endswith("/0"):  # "0/0": nothing recorded
        ok, _, total = conv.partition("/")
        if ok == "0":
            notes.append(f"rests on unconverged MergeMany: {conv} models converged, so no test on converged "
                         "models is possible (raise merge.mergemany_max_iter)")
        elif ok != total:
            alt = [v for v in g.get("verdict_converged_only", pd.Series(dtype=str)) if isinstance(v, str) and v]
            alt_v = _combined(alt) if alt else "not computable"
            notes.append(f"rests on unconverged MergeMany: {conv} models converged; on the converged ones "
                         f"only: {alt_v}")
        else:
            notes.append(f"MergeMany converged in all {total} models")
    if "n_to_decide" in g:
        need = g[~np.isnan(g.n_to_decide.astype(float)) & (g.verdict == "inconclusive")]
        if len(need):
            parts = [f"{u}: at least ~{int(k)} (now {int(n)})" if np.isfinite(k) else f"{u}: over 10^6 (now {int(n)})"
                     for u, k, n in zip(need.unit, need.n_to_decide, need.n)]
            notes.append("units (groups or pools, as n counts them) for 80% power at the observed effect: "
                         + "; ".join(parts))
    return "; ".join(notes)


def verdict_reading(verdict: str, caveat: str) -> str:
    """The verdict as a reader should read it ("supported, holds by construction")."""
    if verdict == "supported" and caveat.startswith("holds by construction"):
        return "supported, holds by construction"
    return verdict
