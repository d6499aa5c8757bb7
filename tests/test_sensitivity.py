"""The confound map without DVC: the grid from params, its one-line errors, the labels on planted
dependences (synthetic results through the real claims engine), and the written outputs."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from audit.claims import Claim, Results, evaluate_claims, verdict_records
from audit.cli import main
from audit.config import ConfigError, load_params
from audit.grid import settings
from audit.sensitivity import collect, label, wide
from audit.sensitivity_report import write
from tests.conftest import REPO
from tests.synthetic import synthetic_results


def params_with(tmp_path, section: dict | None = None, **top):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    if section is not None:
        raw["sensitivity"] = section
    raw.update(top)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_default_grid_varies_one_factor_at_a_time_from_the_scaled_reference():
    params = load_params(REPO / "params.yaml")
    grid = settings(params)
    ref = grid[0]
    assert ref.name == "sens-reference" and ref.params.zoo.pools == 3 and ref.params.merge.seeds == (0,)
    assert params.zoo.pools == 4  # the scale applies to the grid, not to the run
    names = [s.name for s in grid]
    # The reference levels (dataset norm, paper-half, adam, no decay, converged, digits) run nothing.
    assert names == ["sens-reference", "sens-input_norm-none", "sens-arch-rebasin", "sens-optimizer-sgd",
                     "sens-weight_decay-5e-4", "sens-mergemany_budget-3-passes", "sens-data-mnist",
                     "sens-data-fashion-mnist"]
    sgd = grid[names.index("sens-optimizer-sgd")].params
    assert (sgd.zoo.train.optimizer, sgd.zoo.train.lr, sgd.zoo.train.schedule) == ("sgd", 0.05, "cosine")
    # one factor at a time: everything else as the reference
    assert sgd.zoo.input_norm == "dataset" and sgd.zoo.arch == "paper-half" and sgd.zoo.pools == 3


@pytest.mark.parametrize("section, message", [
    ({"scale": {}, "factors": {"optimizer": {"a": {}, "b": {"zoo.train.lrate": 0.1}}}},
     "sensitivity.factors.optimizer.b: unknown params key 'zoo.train.lrate'"),
    ({"scale": {}, "factors": {"optimizer": {"a": {}, "b": {"zoo.train.lr": "fast"}}}},
     "sensitivity.factors.optimizer.b: zoo.train.lr: expected a number, got 'fast'"),
    ({"scale": {"zoo.pools": "three"}, "factors": {}}, "sensitivity.scale: zoo.pools: expected an integer"),
    ({"scale": {}, "factors": {"norm": {"none": {"zoo.input_norm": "none"}}}},
     "sensitivity.factors.norm: expected a mapping of at least two levels"),
    ({"scale": {}, "factors": {"norm": {"a": {"zoo.input_norm": "none"}, "b": {"zoo.input_norm": "none"}}}},
     "sensitivity.factors.norm.b: the same setting as sensitivity.factors.norm.a"),
    ({"scale": {}, "factors": {"bad name": {"a": {}, "b": {}}}}, "sensitivity.factors.bad name: a factor name"),
    ({"scale": {}, "factors": {}, "job": 2}, "sensitivity.job: unknown key"),
    ({"scale": {}, "factors": {"a-b": {"c": {}, "d": {"zoo.input_norm": "none"}},
                               "a": {"x": {}, "b-d": {"zoo.pools": 2}}}},
     "sensitivity.factors.a-b.d: its experiment name sens-a-b-d is that of a=b-d too"),  # (keys sorted)
    ({"scale": {"zoo.train": {"lr": 0.1}}, "factors": {}}, "sensitivity.scale: zoo.train: set its keys one by one"),
    ({"scale": {}, "factors": {"x..y": {"a": {}, "b": {}}}}, "sensitivity.factors.x..y: a factor name"),
])
def test_a_bad_sensitivity_section_is_one_line_naming_it(tmp_path, section, message):
    path = params_with(tmp_path, section)
    with pytest.raises(ConfigError) as e:
        load_params(path)
    assert str(e.value).startswith(f"{path}: {message}"), str(e.value)
    assert "\n" not in str(e.value)
    res = CliRunner().invoke(main, ["sensitivity", "--params", str(path), "--collect-only"])
    assert res.exit_code == 1 and res.output.strip().splitlines() == [f"Error: {e.value}"], res.output


def test_labels():
    assert label(["supported", "supported"]) == "stable"
    assert label(["contradicted", "contradicted", "contradicted"]) == "stable"
    assert label(["supported", "contradicted"]) == "setting-dependent"
    assert label(["supported", "inconclusive", "mixed"]) == "setting-dependent"
    assert label(["supported", "inconclusive"]) == "unsettled"
    assert label(["inconclusive", "not measured"]) == "undecided"
    assert label(["supported", "contradicted"], by_construction=True) == "by construction"


CLAIMS = [
    # hierarchical clean accuracy falls with depth: planted to fall in some settings, rise in others
    Claim("trend-falls", "src", "accuracy falls with depth", "clean_accuracy", "trend", "less", a="hierarchical",
          include_base=True),
    # naive averaging far worse than hierarchical: planted in every setting
    Claim("naive-worse", "src", "naive is worse", "clean_accuracy", "paired", "less", a="naive", b="hierarchical",
          depth=(1, 2)),
    # MergeMany against its base models: no difference planted anywhere
    Claim("mm-vs-base", "src", "mergemany costs accuracy", "clean_accuracy", "vs_base", "less", a="mergemany",
          depth=(1,)),
]


class FakeSetting:
    def __init__(self, name):
        self.factor, self.level = ("f", name) if name != "reference" else (None, None)
        self.name, self.label = f"sens-{name}", name


def grid_claims(slopes: dict[str, float], seed: int = 0, n_boot: int = 300) -> dict[str, list]:
    """Each setting's claims records (the audit stage's results/claims.json) from a synthetic table
    whose hierarchical accuracy moves ``slope`` per merge level."""
    out = {}
    for i, (name, slope) in enumerate(slopes.items()):
        table = synthetic_results(pools=3, depth=3, seeds=(0,), seed=seed * 100 + i,
                                  effects={"hierarchical": lambda d, s=slope: s * d, "naive": lambda d: -0.2})
        rows = evaluate_claims(CLAIMS, Results(table, pool_depth=3), n_boot=n_boot, seed=0)
        out[name] = json.loads(json.dumps(verdict_records(CLAIMS, rows)))
    return out


def test_a_planted_dependence_is_setting_dependent_and_a_planted_constant_stable(tmp_path):
    by_setting = grid_claims({"reference": -0.01, "flat": 0.0, "rises": +0.01})
    frame, missing = collect([FakeSetting(n) for n in by_setting], lambda s: by_setting[s.label])
    assert missing == []
    verdict = frame.set_index(["claim", "setting"]).verdict
    assert verdict["trend-falls", "reference"] == "supported" and verdict["trend-falls", "rises"] == "contradicted"
    lab = frame.groupby("claim").label.first()
    assert lab["trend-falls"] == "setting-dependent"
    assert lab["naive-worse"] == "stable"
    assert lab["mm-vs-base"] == "undecided"
    # effects carry the planted sign, in the metric's units (slope per merge level)
    effect = frame.set_index(["claim", "setting"]).effect
    assert effect["trend-falls", "reference"] == pytest.approx(-0.01, abs=0.003)
    assert effect["trend-falls", "rises"] == pytest.approx(0.01, abs=0.003)
    table = wide(frame)
    assert list(table.columns) == ["claim", "reference", "flat", "rises", "label"]
    assert table.set_index("claim").loc["trend-falls", "reference"].startswith("S -0.0")

    page = write(tmp_path, frame, {"baseline": "abc", "scale": {"zoo.pools": 3}, "skipped": {"data=mnist": "absent"}})
    html = page.read_text()
    assert "<img" in html and "trend-falls" in html and "Not run: data=mnist (absent)" in html
    md = (tmp_path / "reports/sensitivity/report.md").read_text()
    para = [ln for ln in md.splitlines() if ln.startswith("**trend-falls**")]
    assert len(para) == 1 and "supported under reference" in para[0] and "contradicted under rises" in para[0]
    assert not any(ln.startswith("**naive-worse**") for ln in md.splitlines())  # stable: no paragraph
    saved = pd.read_csv(tmp_path / "results/sensitivity/sensitivity.csv")
    assert len(saved) == 9 and set(saved.label) == {"setting-dependent", "stable", "undecided"}
    assert json.loads((tmp_path / "results/sensitivity/sensitivity.json").read_text())["baseline"] == "abc"


def test_a_constant_effect_is_not_called_setting_dependent_across_replications():
    """Simulation: the same planted effect in four settings (independent noise each) is never
    labelled setting-dependent; a flip needs a rejection in each direction, each at <= alpha."""
    flips = 0
    for rep in range(8):
        by_setting = grid_claims({f"s{i}": -0.004 for i in range(4)}, seed=rep + 1, n_boot=200)
        frame, _ = collect([FakeSetting(n) for n in by_setting], lambda s: by_setting[s.label])
        flips += int((frame.groupby("claim").label.first() == "setting-dependent").sum())
    assert flips == 0


def test_collect_reports_settings_without_results():
    by_setting = grid_claims({"reference": -0.01})
    frame, missing = collect([FakeSetting("reference"), FakeSetting("gone")],
                             lambda s: by_setting.get(s.label))
    assert missing == ["gone"] and set(frame.setting) == {"reference"}
    assert np.isfinite(frame.effect).all()


def test_a_setting_without_a_claim_keeps_it_from_being_stable():
    by_setting = grid_claims({"reference": -0.01, "other": -0.01})
    by_setting["other"] = [c for c in by_setting["other"] if c["id"] != "naive-worse"]
    frame, _ = collect([FakeSetting(n) for n in by_setting], lambda s: by_setting[s.label])
    lab = frame.groupby("claim").label.first()
    assert lab["naive-worse"] == "unsettled" and lab["trend-falls"] == "stable"


def test_a_cell_with_half_an_interval_prints_no_interval():
    from types import SimpleNamespace

    from audit.sensitivity import cell

    assert cell(SimpleNamespace(verdict="supported", effect=0.5, ci_low=0.1, ci_high=None)) == "S +0.5"
    assert cell(SimpleNamespace(verdict="inconclusive", effect=float("nan"), ci_low=None, ci_high=None)) == "I"
