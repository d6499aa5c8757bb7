import pytest
from click.testing import CliRunner

from audit import __version__
from audit.cli import main


def test_version_and_help():
    runner = CliRunner()
    res = runner.invoke(main, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output and __version__ != "0+unknown"
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0 and "Usage: audit" in res.output


def test_ui_prints_the_url_and_a_lean_mlflow_command(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("tracking:\n  uri: sqlite:///runs.db\n")
    res = CliRunner().invoke(main, ["ui", "--params", str(params), "--port", "5055", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "MLflow UI: http://127.0.0.1:5055" in res.output
    cmd = res.output.strip().splitlines()[-1]
    assert cmd.split()[1:] == ["ui", "--backend-store-uri", "sqlite:///runs.db", "--host", "127.0.0.1",
                               "--port", "5055", "--workers", "1"]


def test_ui_with_bad_params_is_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("tracking:\n  url: x\n")
    res = CliRunner().invoke(main, ["ui", "--params", str(params)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [f"Error: {params}: tracking.url: unknown key (value 'x'); allowed: uri, experiment_prefix, enabled"]


def fixture_project(tmp_path):
    from tests.synthetic import synthetic_results

    (tmp_path / "results").mkdir()
    synthetic_results(effects={"hierarchical": lambda d: -0.01, "mergemany": lambda d: -0.01 - 0.02 * (d >= 2)}
                      ).to_csv(tmp_path / "results" / "evaluation.csv", index=False)
    (tmp_path / "params.yaml").write_text("zoo:\n  depth: 3\naudit:\n  bootstrap: 500\n  beyond_depth: not_measured\n")
    return tmp_path / "params.yaml"


def test_compare_prints_per_depth_differences_to_the_baseline(tmp_path):
    params = fixture_project(tmp_path)
    res = CliRunner().invoke(main, ["compare", "--baseline", "mergemany", "--params", str(params)])
    assert res.exit_code == 0, res.output
    lines = [l.split() for l in res.output.splitlines() if l.startswith("clean_accuracy")]
    assert len(lines) == 3 * 2  # depths 1..3 x {hierarchical, naive}
    res = CliRunner().invoke(main, ["compare", "--method", "hierarchical", "--format", "csv", "--params", str(params)])
    import io

    import pandas as pd

    table = pd.read_csv(io.StringIO(res.output))
    assert list(table.depth) == [1, 2, 3] and set(table.method) == {"hierarchical"}
    assert list(table.verdict) == ["n.s.", "higher", "higher"]
    assert table.loc[1, "diff"] == pytest.approx(0.02, abs=0.003)
    assert (table.p_holm >= table.p).all()
    res = CliRunner().invoke(main, ["compare", "--format", "json", "--metric", "clean_accuracy", "--params", str(params)])
    import json

    assert len(json.loads(res.output)) == 6


def test_compare_calls_a_comparison_with_an_infinite_value_undefined(tmp_path):
    """One naive group's value infinite (a DeepFool median norm where most points never flipped):
    that depth's naive row is "undefined", not "n.s.", and the other rows are tested as before."""
    import io
    import warnings

    import numpy as np
    import pandas as pd

    from audit import stats

    params = fixture_project(tmp_path)
    path = tmp_path / "results" / "evaluation.csv"
    table = pd.read_csv(path)
    first = table[(table.method == "naive") & (table.depth == 2)].index[0]
    table.loc[first, "value"] = np.inf
    table.to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = CliRunner().invoke(main, ["compare", "--format", "csv", "--params", str(params)])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(io.StringIO(res.output))
    undefined = out[out.verdict == "undefined"]
    assert list(zip(undefined.method, undefined.depth)) == [("naive", 2)]
    assert np.isnan(undefined.p.iloc[0]) and undefined["mean"].iloc[0] == np.inf
    hier = out[out.method == "hierarchical"]
    assert list(hier.verdict) == ["n.s.", "higher", "higher"]
    tested = out[out.verdict != "undefined"]  # the Holm family: the tested rows only
    np.testing.assert_allclose(tested.p_holm, stats.holm(tested.p.to_numpy()), rtol=1e-4)  # CSV: 6 digits
    res = CliRunner().invoke(main, ["compare", "--params", str(params)])
    assert f"Holm over these {len(out) - 1} comparisons" in res.output


def test_compare_calls_a_single_infinite_group_undefined_too(tmp_path):
    """At the top depth a pool has one group: with one pool, its paired test has n = 1 (p = 1,
    nothing to say). An infinite value there is undefined as well, and outside the Holm family."""
    import io

    import numpy as np
    import pandas as pd

    params = fixture_project(tmp_path)
    path = tmp_path / "results" / "evaluation.csv"
    table = pd.read_csv(path)
    table = table[table.pool == 0]
    top = table.depth.max()
    table.loc[(table.method == "naive") & (table.depth == top), "value"] = np.inf
    table.to_csv(path, index=False)
    res = CliRunner().invoke(main, ["compare", "--format", "csv", "--params", str(params)])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(io.StringIO(res.output))
    row = out[(out.method == "naive") & (out.depth == top)].iloc[0]
    assert row.n == 1 and row.verdict == "undefined" and np.isnan(row.p) and np.isnan(row.p_holm)
    assert (out[out.depth < top].verdict != "undefined").all()


def test_compare_and_claims_say_clearly_when_there_is_nothing_to_read(tmp_path):
    (tmp_path / "params.yaml").write_text("zoo:\n  depth: 3\naudit:\n  beyond_depth: not_measured\n")
    for cmd in (["compare"], ["claims"]):
        res = CliRunner().invoke(main, [*cmd, "--params", str(tmp_path / "params.yaml")])
        assert res.exit_code == 1
        assert "no evaluated results yet; run the pipeline first" in res.output and "Traceback" not in res.output
    params = fixture_project(tmp_path)
    res = CliRunner().invoke(main, ["compare", "--baseline", "git", "--params", str(params)])
    assert res.exit_code == 1 and "baseline 'git' has no merged models" in res.output
    res = CliRunner().invoke(main, ["compare", "--metric", "fgsm@x", "--params", str(params)])
    assert res.exit_code == 2 and "METRIC@EPS" in res.output


def test_claims_prints_the_verdict_table(tmp_path):
    params = fixture_project(tmp_path)
    claims = tmp_path / "claims.yaml"
    claims.write_text(
        "claims:\n"
        "  - {id: h-beats-mm, source: s, quote: q, metric: clean_accuracy, test: paired, a: hierarchical,"
        " b: mergemany, depth: [2, 3], expect: greater}\n"
        "  - {id: mm-beats-h, source: s, quote: q, metric: clean_accuracy, test: paired, a: mergemany,"
        " b: hierarchical, depth: [3], expect: greater}\n")
    res = CliRunner().invoke(main, ["claims", "--claims", str(claims), "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert "h-beats-mm" in res.output and "1 supported, 1 contradicted, 0 mixed, 0 inconclusive" in res.output
    res = CliRunner().invoke(main, ["claims", "--detail", "--format", "csv", "--claims", str(claims),
                                    "--params", str(params)])
    assert res.output.count("\n") == 1 + 3
