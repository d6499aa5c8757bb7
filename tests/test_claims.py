import textwrap

import pytest

import numpy as np
import pandas as pd

from audit.claims import (Claim, ClaimsError, Results, check_claims, claim_verdicts, evaluate_claims, load_claims,
                          verdict_reading)
from tests.synthetic import synthetic_results


def registry(tmp_path, body: str):
    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n" + textwrap.indent(textwrap.dedent(body), "  "))
    return load_claims(path)


CLAIM = """\
- id: {id}
  source: test
  quote: "q"
  metric: clean_accuracy
  test: {test}
  expect: {expect}
"""


def claims_for(tmp_path, *entries):
    body = ""
    for e in entries:
        extra = "".join(f"  {k}: {v}\n" for k, v in e.items() if k not in ("id", "test", "expect"))
        body += CLAIM.format(**e) + extra
    return registry(tmp_path, body)


def verdicts(tmp_path, table, *entries, **kw):
    rows = evaluate_claims(claims_for(tmp_path, *entries), Results(table, pool_depth=3), **kw)
    return dict(zip(*claim_verdicts(rows)[["id", "verdict"]].T.values)), rows


def test_a_planted_effect_is_supported_its_opposite_contradicted(tmp_path):
    table = synthetic_results(effects={"hierarchical": lambda d: -0.01, "mergemany": lambda d: -0.04,
                                       "naive": lambda d: -0.2})
    v, rows = verdicts(tmp_path, table,
                       {"id": "h-beats-mm", "test": "paired", "expect": "greater", "a": "hierarchical",
                        "b": "mergemany", "depth": "[1, 2]"},
                       {"id": "mm-beats-h", "test": "paired", "expect": "greater", "a": "mergemany",
                        "b": "hierarchical", "depth": "[1, 2]"},
                       {"id": "merging-costs", "test": "vs_base", "expect": "less", "a": "hierarchical"},
                       {"id": "naive-worse", "test": "paired", "expect": "less", "a": "naive", "b": "hierarchical"})
    assert v == {"h-beats-mm": "supported", "mm-beats-h": "contradicted", "merging-costs": "supported",
                 "naive-worse": "supported"}
    h = rows[rows.id == "h-beats-mm"]
    assert list(h.n) == [12, 6]  # 3 pools x 4 groups of 2, x 2 groups of 4: groups are the units
    assert h.effect.between(0.025, 0.035).all()
    assert ((h.ci_low < h.effect) & (h.effect < h.ci_high) & (h.ci_high - h.ci_low < 0.01)).all()
    assert (rows.p_holm >= rows.p).all()


def test_no_effect_with_few_groups_is_inconclusive_with_its_detectable_effect(tmp_path):
    table = synthetic_results(pools=1, noise=0.01)
    v, rows = verdicts(tmp_path, table, {"id": "none", "test": "paired", "expect": "greater", "a": "hierarchical",
                                         "b": "mergemany", "depth": "[2]"})
    assert v == {"none": "inconclusive"}
    assert rows.n.iloc[0] == 2 and rows.mde.iloc[0] > 0.01


def test_depth_change_and_trend(tmp_path):
    table = synthetic_results(effects={"mergemany": lambda d: -0.05 * (d >= 3), "hierarchical": lambda d: -0.01 * d})
    v, rows = verdicts(tmp_path, table,
                       {"id": "mm-drops", "test": "depth_change", "expect": "less", "a": "mergemany",
                        "from_depth": 2, "to_depth": 3},
                       {"id": "mm-drops-more", "test": "depth_change", "expect": "less", "a": "mergemany",
                        "b": "hierarchical", "from_depth": 2, "to_depth": 3},
                       {"id": "h-falls", "test": "trend", "expect": "less", "a": "hierarchical", "include_base": "true"})
    assert v == {"mm-drops": "supported", "mm-drops-more": "supported", "h-falls": "supported"}
    drop = rows[rows.id == "mm-drops"].effect.item()
    assert drop == pytest.approx(-0.05, abs=0.005)
    assert "mixedlm" in rows[rows.id == "h-falls"].model.item()


def test_equivalence_claims(tmp_path):
    table = synthetic_results(effects={"mergemany": lambda d: -0.05})
    v, _ = verdicts(tmp_path, table,
                    {"id": "sides", "test": "sides", "expect": "equivalent", "depth": "[1]"},
                    {"id": "h-zero-barrier", "test": "vs_base", "expect": "equivalent", "a": "hierarchical"},
                    {"id": "mm-zero-barrier", "test": "vs_base", "expect": "equivalent", "a": "mergemany"},
                    margin=0.01)
    assert v == {"sides": "supported", "h-zero-barrier": "supported", "mm-zero-barrier": "contradicted"}


def test_unpaired_selectors(tmp_path):
    table = synthetic_results(effects={"hierarchical": lambda d: 0.03})
    v, rows = verdicts(tmp_path, table, {"id": "h2-vs-base", "test": "unpaired", "expect": "greater",
                                         "a": "merged:hierarchical@2", "b": "base"})
    assert v == {"h2-vs-base": "supported"}
    assert rows.n.item() == 12  # 3 pools x 2 groups x 2 seeds vs 24 base models: the smaller n


def test_the_shipped_registry_loads_and_names_real_metrics():
    from audit.metrics import EvalConfig
    from tests.conftest import REPO

    claims = load_claims(REPO / "reports/claims.yaml")
    assert len(claims) >= 15 and len({c.id for c in claims}) == len(claims)
    # what evaluate() really writes, on a tiny model: the registry and claims.METRICS name exactly that
    import torch

    from audit.claims import METRICS
    from audit.metrics import evaluate
    from audit.models import MLP

    torch.manual_seed(0)
    table = evaluate({"m": MLP(6, (5,), 3).state_dict()}, torch.rand(8, 6), torch.randint(0, 3, (8,)),
                     EvalConfig(fgsm_eps=(0.01,), pgd_eps=(0.01,), deepfool_eps=(0.5,), lipschitz_points=2))
    assert set(table.metric) == set(METRICS)
    assert {c.metric for c in claims} <= set(table.metric)
    cfg = EvalConfig()
    for c in claims:
        if c.metric.startswith("fgsm") and c.test != "crossing":  # a crossing spans the whole grid
            assert c.eps in cfg.fgsm_eps, c.id
    assert any(c.control for c in claims) and any(c.source.startswith("Ainsworth") for c in claims)
    assert any(c.source.startswith("Secondary") for c in claims)


@pytest.mark.parametrize("body, message", [
    ("- id: x\n  source: s\n  quote: q\n  metric: m\n  test: anova\n  expect: greater\n", "test: unknown value 'anova'"),
    ("- id: x\n  source: s\n  quote: q\n  metric: m\n  test: paired\n", "missing key 'expect'"),
    ("- id: x\n  source: s\n  quote: q\n  metric: m\n  test: paired\n  expect: up\n  colour: red\n", "unknown key 'colour'"),
])
def test_bad_registries_are_one_line_errors(tmp_path, body, message):
    with pytest.raises(ClaimsError, match=message):
        registry(tmp_path, body)


def test_a_claim_on_an_unmeasured_metric_is_inconclusive_and_says_why(tmp_path):
    table = synthetic_results()
    entries = [{"id": "c", "test": "paired", "expect": "greater", "a": "hierarchical", "b": "mergemany"}]
    claims = claims_for(tmp_path, *entries)
    claims = [type(claims[0])(**{**claims[0].__dict__, "metric": "lipschitz_global"})]
    rows = evaluate_claims(claims, Results(table, pool_depth=3))
    assert rows.verdict.tolist() == ["inconclusive"]
    assert rows.unit.item() == "not measured: no results for 'lipschitz_global' at eps None"


# ---------------------------------------------------------------- the registry is user input

def _registry(tmp_path, **claim):
    import yaml

    entry = {"id": "X1-test", "source": "s", "quote": "q", "metric": "clean_accuracy", "test": "paired",
             "a": "hierarchical", "b": "mergemany", "depth": [2], "expect": "greater", **claim}
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"claims": [entry]}))
    return path


@pytest.mark.parametrize("claim,message", [
    ({"metric": "clean_acuracy"}, r"claim X1-test: metric: unknown value 'clean_acuracy'; did you mean 'clean_accuracy'\?"),
    ({"a": "hierarchicl"}, r"claim X1-test: a: unknown method 'hierarchicl'; did you mean 'hierarchical'\?"),
    ({"depth": [0]}, r"claim X1-test: depth: depth must be an integer >= 1, got 0"),
    ({"depth": [5]}, r"claim X1-test: depth: depth 5 \(32 models\) exceeds zoo.depth 4; the nearest valid depth is 4"),
    ({"test": "depth_change", "from_depth": 2, "to_depth": 6}, r"claim X1-test: to_depth: depth 6"),
    ({"test": "unpaired", "a": "regularised:l2", "b": "base"}, r"claim X1-test: a: unknown selector 'regularised:l2'"),
    ({"test": "unpaired", "a": "merged:hierarchical@x", "b": "base"}, r"claim X1-test: a: bad depth in selector"),
    ({"test": "sides", "depth": [1]}, r"claim X1-test: depth: 1 is an identity"),
    ({"test": "depth_change", "from_depth": 3, "to_depth": 2}, r"needs from_depth < to_depth"),
    ({"informative": "C3-nope", "by_construction": "x"}, r"informative: no such claim 'C3-nope'"),
    ({"test": "crossing", "expect": "greater"}, r"claim X1-test: expect: test crossing is decided by its CI"),
    ({"test": "trend", "expect": "equivalent"}, r"expect: equivalent is not tested by test trend"),
    ({"test": "trend", "reference": 0.5}, r"reference: only for greater/less claims"),
])
def test_bad_registry_entries_name_the_claim_key_and_nearest_value(tmp_path, claim, message):
    path = _registry(tmp_path, **claim)
    with pytest.raises(ClaimsError, match=message):
        check_claims(load_claims(path), methods=("hierarchical", "mergemany", "naive"), depth=4, path=path)


def test_a_deeper_claim_is_not_measured_when_asked(tmp_path):
    path = _registry(tmp_path, depth=[5])
    claims = load_claims(path)
    check_claims(claims, methods=("hierarchical", "mergemany", "naive"), depth=4, path=path,
                 beyond_depth="not_measured")
    rows = evaluate_claims(claims, Results(synthetic_results(pools=3, depth=4, seeds=(0,)), pool_depth=4), n_boot=100)
    assert rows.unit.iloc[0].startswith("not measured: depth 5 (32 models) exceeds this run's zoo.depth 4")
    assert rows.verdict.iloc[0] == "inconclusive"


def test_the_shipped_registry_passes_its_own_checks():
    check_claims(load_claims("reports/claims.yaml"), methods=("hierarchical", "mergemany", "naive"), depth=4)


def test_by_construction_claims_read_as_such_and_name_the_informative_test():
    table = synthetic_results(pools=3, depth=3, seeds=(0,), effects={"hierarchical": lambda d: -0.01 * d})
    claims = [Claim("F8-x", "s", "q", "clean_accuracy", "trend", "less", a="hierarchical", include_base=True,
                    by_construction="triangle inequality", informative="C3-y"),
              Claim("C3-y", "s", "q", "clean_accuracy", "paired", "less", a="hierarchical", b="naive", depth=(1,))]
    rows = evaluate_claims(claims, Results(table, pool_depth=3), n_boot=200)
    v = claim_verdicts(rows).set_index("id")
    assert v.loc["F8-x", "verdict"] == "supported"
    assert verdict_reading("supported", v.loc["F8-x", "caveat"]) == "supported, holds by construction"
    assert "the informative test is C3-y" in v.loc["F8-x", "caveat"]
    assert verdict_reading(v.loc["C3-y", "verdict"], v.loc["C3-y", "caveat"]) == v.loc["C3-y", "verdict"]


def test_mergemany_claims_show_convergence_and_the_converged_only_verdict():
    """A planted collapse carried only by unconverged MergeMany models: the verdict on all models
    says "supported", the converged-only test beside it does not."""
    table = synthetic_results(pools=8, depth=3, seeds=(0,), effects={"mergemany": lambda d: -0.05 * (d == 3)},
                              noise=0.001)
    merged = table.kind == "merged"
    table["converged"] = np.where(merged, True, np.nan).astype(object)
    # at depth 3 half of MergeMany's groups did not converge: only those collapsed
    mm3 = merged & (table.method == "mergemany") & (table.depth == 3)
    unconv = mm3 & (table.pool % 2 == 0)
    table.loc[unconv, "converged"] = False
    table.loc[mm3 & ~unconv, "value"] += 0.05  # the converged ones did not collapse
    claim = Claim("F3-x", "s", "q", "clean_accuracy", "depth_change", "less", a="mergemany", from_depth=2, to_depth=3)
    rows = evaluate_claims([claim], Results(table, pool_depth=3), n_boot=200)
    assert rows.mergemany_converged.iloc[0] == "20/24"  # depth 2: 16 converged; depth 3: 4 of 8
    assert rows.verdict.iloc[0] == "supported" and rows.verdict_converged_only.iloc[0] == "inconclusive"
    caveat = claim_verdicts(rows).caveat.iloc[0]
    assert "rests on unconverged MergeMany: 20/24 models converged; on the converged ones only: inconclusive" in caveat


def test_units_that_disagree_significantly_are_mixed():
    # hierarchical beats MergeMany at depth 1 and loses at depth 2: both significant
    table = synthetic_results(pools=4, depth=3, seeds=(0,), noise=0.0005,
                              effects={"hierarchical": lambda d: {1: 0.02, 2: -0.02, 3: 0.0}[d]})
    claim = Claim("X-mixed", "s", "q", "clean_accuracy", "paired", "greater", a="hierarchical", b="mergemany",
                  depth=(1, 2))
    rows = evaluate_claims([claim], Results(table, pool_depth=3), n_boot=200)
    assert list(rows.verdict) == ["supported", "contradicted"]
    v = claim_verdicts(rows)
    assert v.verdict.iloc[0] == "mixed" and "depth 1" in v.detail.iloc[0] and "depth 2" in v.detail.iloc[0]


def test_equivalence_is_contradicted_only_when_the_whole_ci_is_outside_the_margin():
    near = synthetic_results(pools=4, depth=2, seeds=(0,), noise=0.0002,
                             effects={"hierarchical": lambda d: 0.008})  # significant, but inside 0.01
    far = synthetic_results(pools=4, depth=2, seeds=(0,), noise=0.0002,
                            effects={"hierarchical": lambda d: 0.05})
    claim = Claim("X-eq", "s", "q", "clean_accuracy", "paired", "equivalent", a="hierarchical", b="mergemany",
                  depth=(1,), margin=0.01)
    r_near = evaluate_claims([claim], Results(near, pool_depth=2), n_boot=200).iloc[0]
    r_far = evaluate_claims([claim], Results(far, pool_depth=2), n_boot=200).iloc[0]
    assert r_near.p_t < 0.01 and r_near.verdict != "contradicted"
    assert r_far.ci_low > 0.01 and r_far.verdict == "contradicted"


def test_mde_is_given_at_the_holm_level_of_its_test():
    table = synthetic_results(pools=4, depth=3, seeds=(0,), noise=0.002)
    claims = [Claim(f"X{d}", "s", "q", "clean_accuracy", "paired", "greater", a="hierarchical", b="mergemany",
                    depth=(d,)) for d in (1, 2, 3)]
    rows = evaluate_claims(claims, Results(table, pool_depth=3), n_boot=200)
    assert sorted(rows.alpha_holm.round(6)) == sorted(np.round([0.05 / 3, 0.05 / 2, 0.05], 6))
    ok = rows.n >= 2
    assert (rows.mde[ok] >= rows.mde_raw[ok] - 1e-12).all()
    strictest = rows.loc[rows.alpha_holm.idxmin()]
    assert strictest.mde > strictest.mde_raw  # held to alpha / 3, it needs a larger effect


def _crossing_table(cross_at, pools=6, noise=0.002, seed=0):
    """FGSM robust accuracy over eps: base models fall linearly from 0.9; merged models have a
    flatter curve that meets the base line at ``cross_at`` (None: merged is always above)."""
    rng = np.random.default_rng(seed)
    grid = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1]
    rows = []
    base = synthetic_results(pools=pools, depth=2, seeds=(0,), noise=0.0)
    for r in base.itertuples():
        for e in grid:
            v = 0.9 - 4 * e
            if r.kind == "merged":
                v += (0.002 if cross_at is None else (e - cross_at) * 1.0) + rng.normal(0, noise)
            rows.append({**r._asdict(), "eps": e, "value": v, "metric": "fgsm_robust_accuracy"})
    return pd.DataFrame(rows).drop(columns="Index")


def test_crossing_is_located_with_a_ci_and_decides_within_the_interval():
    claim = Claim("F13-x", "s", "q", "fgsm_robust_accuracy", "crossing", "within", a="hierarchical",
                  interval=(0.005, 0.02))
    near = evaluate_claims([claim], Results(_crossing_table(0.01, noise=0.0005), pool_depth=2), n_boot=300)
    assert (near.effect - 0.01).abs().max() < 0.002
    assert (near.ci_low <= 0.01).all() and (near.ci_high >= 0.01).all()
    assert set(near.verdict) == {"supported"}
    far = evaluate_claims([claim], Results(_crossing_table(0.07, noise=0.0005), pool_depth=2), n_boot=300)
    assert set(far.verdict) == {"contradicted"}
    never = evaluate_claims([claim], Results(_crossing_table(None, noise=0.0005), pool_depth=2), n_boot=300)
    assert never.effect.isna().all() and set(never.verdict) == {"inconclusive"}


def test_within_claims_test_a_magnitude():
    table = synthetic_results(pools=4, depth=2, seeds=(0,), noise=0.0005, effects={"hierarchical": lambda d: 0.045})
    claim = Claim("S1-x", "s", "q", "clean_accuracy", "vs_base", "within", a="hierarchical", depth=(1,),
                  interval=(0.032, 0.058))
    assert evaluate_claims([claim], Results(table, pool_depth=2), n_boot=200).verdict.iloc[0] == "supported"
    small = synthetic_results(pools=4, depth=2, seeds=(0,), noise=0.0005, effects={"hierarchical": lambda d: 0.01})
    assert evaluate_claims([claim], Results(small, pool_depth=2), n_boot=200).verdict.iloc[0] == "contradicted"


def test_a_reference_moves_what_a_directional_claim_is_tested_against():
    table = synthetic_results(pools=4, depth=2, seeds=(0,), noise=0.0005, effects={"hierarchical": lambda d: -0.004})
    base = dict(id="F11-x", source="s", quote="q", metric="clean_accuracy", test="vs_base", expect="less",
                a="hierarchical", depth=(1,))
    any_drop = evaluate_claims([Claim(**base)], Results(table, pool_depth=2), n_boot=200).iloc[0]
    big_drop = evaluate_claims([Claim(**base, reference=-0.01)], Results(table, pool_depth=2), n_boot=200).iloc[0]
    assert any_drop.verdict == "supported"  # a drop, yes
    assert big_drop.verdict == "contradicted"  # but not one 1 point bigger than the reported 0
    assert big_drop.effect == pytest.approx(any_drop.effect)


def test_spread_trend_finds_a_shrinking_spread_and_not_a_constant_one():
    rng = np.random.default_rng(0)
    rows = []
    for p in range(4):
        for d in range(0, 4):
            for i in range(8):
                rows.append({"model": f"m{p}{d}{i}", "kind": "base" if d == 0 else "merged",
                             "method": "none" if d == 0 else "hierarchical", "pool": p, "depth": d, "group": i,
                             "merge_seed": 0, "side": np.nan, "seed": i, "metric": "weight_norm", "eps": np.nan,
                             "shrink": 10 + rng.normal(0, 1.0 / 2 ** d), "flat": 10 + rng.normal(0, 1.0)})
    t = pd.DataFrame(rows)
    claim = Claim("F16-x", "s", "q", "weight_norm", "spread_trend", "less", a="hierarchical", include_base=True)
    shrink = evaluate_claims([claim], Results(t.assign(value=t.shrink), pool_depth=3), n_boot=100).iloc[0]
    flat = evaluate_claims([claim], Results(t.assign(value=t.flat), pool_depth=3), n_boot=100).iloc[0]
    assert shrink.verdict == "supported" and shrink.effect == pytest.approx(np.log(0.5), abs=0.15)
    assert flat.verdict != "supported"


def test_numbers_in_the_registry_are_checked(tmp_path):
    assert load_claims(_registry(tmp_path, eps="1e-2", metric="fgsm_robust_accuracy"))[0].eps == 0.01
    with pytest.raises(ClaimsError, match=r"claims\[0\] \(X1-test\): margin: expected a number, got 'wide'"):
        load_claims(_registry(tmp_path, margin="wide"))
    with pytest.raises(ClaimsError, match=r"interval: expect within needs \[low, high\] with low < high"):
        load_claims(_registry(tmp_path, expect="within", interval=[0.05, 0.01]))


def test_two_units_cannot_contradict_an_equivalence_claim_by_a_narrow_bootstrap_ci():
    """With n = 2 the bootstrap CI is the range of two values; the verdict uses the t-interval."""
    table = synthetic_results(pools=2, depth=2, seeds=(0,), noise=0.004, effects={"hierarchical": lambda d: -0.02})
    claim = Claim("A2-x", "s", "q", "clean_accuracy", "vs_base", "equivalent", a="hierarchical", depth=(1,),
                  margin=0.01)
    few = evaluate_claims([claim], Results(table[~((table.depth == 1) & (table.group > 0))], pool_depth=2),
                          n_boot=200).iloc[0]
    assert few.n == 2 and few.t_ci_high - few.t_ci_low > few.ci_high - few.ci_low
    assert few.ci_high < -0.01  # the bootstrap "interval" lies wholly beyond the margin...
    assert few.verdict == "inconclusive"  # ...but two units decide nothing


def test_a_crossing_from_few_units_gets_no_ci_and_decides_nothing():
    from audit import stats

    two = np.array([[0.01, -0.01, -0.02], [0.02, 0.005, -0.03]])  # two units crossing inside the grid
    res = stats.crossing_ci(two, np.array([0.0, 0.01, 0.02]), n_boot=200)
    assert np.isfinite(res["effect"]) and np.isnan(res["ci_low"]) and np.isnan(res["ci_high"])


def test_resamples_without_a_crossing_count_below_the_grid_when_they_start_past_it():
    from audit import stats

    eps = np.array([0.0, 0.01, 0.02, 0.05])
    rng = np.random.default_rng(0)
    # most units cross near 0.005; a few are already negative at eps 0 (crossing below the grid)
    curves = np.array([[0.01, -0.01, -0.02, -0.03]] * 6 + [[-0.012, -0.02, -0.03, -0.04]] * 4)
    curves = curves + rng.normal(0, 0.0005, curves.shape)
    res = stats.crossing_ci(curves, eps, n_boot=400)
    boots_without = 0  # resamples starting below zero have no crossing: they sit below the grid
    for _ in range(200):
        sample = curves[rng.integers(0, len(curves), len(curves))]
        boots_without += np.isnan(stats.crossing(sample, eps)) and sample.mean(0)[0] < 0
    assert np.isfinite(res["effect"]) and boots_without > 10
    assert np.isnan(res["ci_low"])  # the lower end is beyond the grid, not pushed above the estimate
    assert np.isfinite(res["ci_high"]) and res["ci_high"] < 0.01


def test_spread_trend_keeps_its_level_on_a_constant_spread():
    """Planted null: iid values at every depth (group counts fall with depth as in the ablation).
    Without the small-sample bias correction of log sd this read "supported" about 27% of the time."""
    claim = Claim("F16-x", "s", "q", "clean_accuracy", "spread_trend", "less", a="hierarchical", include_base=True)
    supported = 0
    sims = 40
    for seed in range(sims):
        t = synthetic_results(pools=4, depth=4, seeds=(0,), seed=seed, noise=0.0)
        rng = np.random.default_rng(seed + 1000)
        t["value"] = 0.9 + rng.normal(0, 0.01, len(t))
        supported += evaluate_claims([claim], Results(t, pool_depth=4), n_boot=100).verdict.iloc[0] == "supported"
    assert supported / sims <= 0.1


def test_units_to_decide_detect_the_observed_effect_with_the_stated_power():
    """An inconclusive paired test with a true effect of 0.5 sd: the unit count it states detects
    that effect at its Holm level in ~80% of simulated experiments (the planted effect is found),
    one unit fewer does not reach 80%; the wrong sign states nothing."""
    from types import SimpleNamespace

    from scipy import stats as sps

    from audit import stats
    from audit.claims import _units_to_decide

    alpha, level, n, sd, delta = 0.05, 0.01, 5, 1.0, 0.5
    row = SimpleNamespace(verdict="inconclusive", expect="greater", test="paired", n=n, alpha_holm=level,
                          mde_raw=stats.detectable_d(n, alpha) * sd, effect=delta, reference=None)
    need = int(_units_to_decide(row, alpha))
    assert stats.detectable_d(need, level) <= delta / sd < stats.detectable_d(need - 1, level)
    rng = np.random.default_rng(0)
    sims = rng.normal(delta, sd, size=(4000, need))
    p = sps.ttest_1samp(sims, 0.0, axis=1).pvalue
    assert 0.77 <= (p < level).mean() <= 0.83
    assert np.isnan(_units_to_decide(SimpleNamespace(**{**vars(row), "effect": -delta}), alpha))
    assert np.isnan(_units_to_decide(SimpleNamespace(**{**vars(row), "verdict": "supported"}), alpha))
    # three units at a strict Holm level (no effect below d = 1e4 detectable there): still a count
    tiny = SimpleNamespace(**{**vars(row), "n": 3, "alpha_holm": 1e-6, "mde_raw": stats.detectable_d(3, alpha)})
    assert np.isfinite(_units_to_decide(tiny, alpha)) and _units_to_decide(tiny, alpha) > 3
    # an effect this n already detects, held back by the step-down only: no count is stated
    assert np.isnan(_units_to_decide(SimpleNamespace(**{**vars(row), "effect": 10.0}), alpha))


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.drop(columns=["side"]), "missing column 'side'"),
    (lambda t: t.assign(kind=t.kind.replace({"merged": "fused"})), "kind 'fused' unknown; allowed: base, merged, regularized"),
    (lambda t: t.assign(method=t.method.replace({"mergemany": "merge_many"})), "method 'merge_many' unknown"),
    (lambda t: t.assign(depth=t.depth.where(t.kind != "merged", t.depth + 3)), "depth 4 does not fit the pool layout (zoo.depth 3"),
    (lambda t: t.assign(group=t.group.where(t.kind != "merged", t.group + 4)), "group 4 at depth 1 does not fit"),
    (lambda t: t.assign(seed=t.seed.where(t.kind != "base", t.seed + 100)), "base seed 100 is not in pool 0"),
    (lambda t: pd.concat([t, t.iloc[:1]]), "model 'base/p0/s0', metric 'clean_accuracy' at eps nan appears twice"),
])
def test_an_evaluation_table_that_does_not_fit_is_one_line_naming_it(tmp_path, edit, message):
    from audit.evaluation_table import TableError, read_evaluation

    path = tmp_path / "table.csv"
    edit(synthetic_results(pools=2, depth=3, seeds=(0,))).to_csv(path, index=False)
    with pytest.raises(TableError) as e:
        read_evaluation(path, depth=3)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_synthetic_table_fits_the_schema(tmp_path):
    from audit.evaluation_table import read_evaluation

    path = tmp_path / "table.csv"
    synthetic_results(pools=2, depth=3, seeds=(0,)).to_csv(path, index=False)
    assert len(read_evaluation(path, depth=3).table) == len(pd.read_csv(path))


def test_a_unit_with_an_infinite_value_is_not_tested_and_the_caveat_says_why(tmp_path):
    """One merged group's value infinite (a DeepFool median norm where most points never flipped):
    the paired, trend and spread units that read it are not tested (inconclusive, no warning), the
    caveat names them, and units without it are tested as before."""
    import warnings

    table = synthetic_results(effects={"hierarchical": lambda d: 0.02})
    first = table[(table.method == "hierarchical") & (table.depth == 2)].index[0]
    table.loc[first, "value"] = np.inf
    entries = ({"id": "pair", "test": "paired", "expect": "greater", "a": "hierarchical", "b": "naive",
                "depth": "[1, 2]"},
               {"id": "trend", "test": "trend", "expect": "greater", "a": "hierarchical"},
               {"id": "spread", "test": "spread_trend", "expect": "less", "a": "hierarchical"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v, rows = verdicts(tmp_path, table, *entries)
    pair = rows[rows.id == "pair"].set_index("unit")
    assert pair.verdict.to_dict() == {"depth 1 (2 models)": "supported", "depth 2 (4 models)": "inconclusive"}
    assert np.isnan(pair.p.iloc[1]) and pair.effect.iloc[1] == np.inf
    assert v == {"pair": "inconclusive", "trend": "inconclusive", "spread": "inconclusive"}
    table_v = claim_verdicts(rows).set_index("id")
    assert "not tested where a value is infinite (depth 2 (4 models))" in table_v.caveat["pair"]
    for claim in ("trend", "spread"):
        assert "not tested where a value is infinite" in table_v.caveat[claim]
    finite = table.assign(value=table.value.replace(np.inf, 0.95))
    v, rows = verdicts(tmp_path, finite, *entries)
    assert v["pair"] == "supported" and "infinite" not in " ".join(claim_verdicts(rows).caveat)


def test_infinite_values_reach_every_test_that_reads_them_and_only_those(tmp_path):
    """An infinite value at both depths of a depth change (inf - inf) is untested, not dropped as
    a missing group; the unpaired test of a selection holding it is untested; an infinite value
    in a spread cell of one unit (the top depth: one group per pool), which has no spread anyway,
    leaves the spread trend exactly as a finite value there does."""
    import warnings

    table = synthetic_results(effects={"hierarchical": lambda d: -0.01 * d})
    h = table[(table.method == "hierarchical") & (table.pool == 0) & (table.group == 0)]
    table.loc[h[h.depth.isin([1, 2])].index, "value"] = np.inf
    entries = ({"id": "change", "test": "depth_change", "expect": "less", "a": "hierarchical",
                "from_depth": 1, "to_depth": 2},
               {"id": "change-vs", "test": "depth_change", "expect": "less", "a": "hierarchical", "b": "naive",
                "from_depth": 1, "to_depth": 2},
               {"id": "unpaired", "test": "unpaired", "expect": "less", "a": "merged:hierarchical@2", "b": "base"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v, rows = verdicts(tmp_path, table, *entries)
    assert v == {"change": "inconclusive", "change-vs": "inconclusive", "unpaired": "inconclusive"}
    assert list(rows.n) == [6, 6, 12]  # no group dropped: 3 pools x 2 groups at depth 2, x 2 seeds unpaired
    caveats = claim_verdicts(rows).set_index("id").caveat
    assert all("not tested where a value is infinite" in caveats[i] for i in v)
    finite = table.assign(value=table.value.replace(np.inf, 0.85))
    assert verdicts(tmp_path, finite, *entries)[0] == {"change": "supported", "change-vs": "supported",
                                                       "unpaired": "supported"}

    spread = {"id": "spread", "test": "spread_trend", "expect": "less", "a": "hierarchical"}
    top = synthetic_results()
    last = top[(top.method == "hierarchical") & (top.depth == 3)].index[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows_inf = verdicts(tmp_path, top.assign(value=top.value.where(top.index != last, np.inf)), spread)[1]
    rows_fin = verdicts(tmp_path, top.assign(value=top.value.where(top.index != last, 0.5)), spread)[1]
    cols = ["n", "effect", "p", "verdict", "model"]
    pd.testing.assert_frame_equal(rows_inf[cols], rows_fin[cols])
    assert rows_inf.model.iloc[0] != "none (a value is infinite)"
