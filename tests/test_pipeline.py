"""The DVC pipeline end to end on a tiny configuration, in a scratch copy of the project."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from audit.config import load_params
from audit.ablation import merge_jobs
from tests.conftest import REPO

# The tiny preset (params/tiny.yaml) with two layers, an L2 baseline, two merge seeds and MLflow on.
TINY = {
    "zoo": {"arch": [32, 32], "regularized": {"l2": {"l2": 0.001}}, "regularized_models": 2},
    "merge": {"seeds": [0, 1], "mergemany_max_iter": 5},
    "eval": {"metrics": {"lipschitz_points": 5, "pgd_steps": 10, "deepfool_max_iter": 50}, "barrier_points": 25},
    "tracking": {"enabled": True},
}


def run(cwd, *args, check=True):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    if check and out.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr


def deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        base[k] = deep_update(base.get(k) or {}, v) if isinstance(v, dict) and k != "regularized" else v
    return base


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for name in ("stages", "audit", "reports"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    # DVC needs every param that dvc.yaml names in the file: the shipped file with tiny overrides.
    params = yaml.safe_load((REPO / "params" / "tiny.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_update(params, TINY)))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    run(root, "init", "-q")
    run(root, "config", "core.analytics", "false")
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], cwd=root, check=True)
    log = run(root, "repro")
    return root, log


@pytest.mark.slow
def test_repro_runs_every_stage_and_writes_the_tables(project):
    root, log = project
    for stage in ("data", "train", "merge@hierarchical", "merge@mergemany", "merge@naive", "evaluate", "audit",
                  "report"):
        assert f"Running stage '{stage}'" in log
    params = load_params(root / "params.yaml")
    catalog = pd.read_csv(root / "results/models.csv")
    n_merged = sum(len(merge_jobs(params, m)) for m in params.merge.methods)
    assert len(catalog) == 4 + 2 + n_merged
    table = pd.read_csv(root / "results/evaluation.csv")
    assert set(table.model) == set(catalog.model)
    per_model = table.groupby("model").size()
    assert per_model.nunique() == 1  # every model measured the same way
    # Hierarchical and MergeMany merged the identical groups.
    merged = catalog[catalog.kind == "merged"]
    groups = {m: set(zip(g.depth, g.group)) for m, g in merged.groupby("method")}
    assert groups["hierarchical"] == groups["mergemany"] == groups["naive"] == {(1, 0), (1, 1), (2, 0)}
    metrics = json.loads((root / "metrics/eval.json").read_text())
    assert "clean_accuracy" in metrics and "barrier" in metrics
    assert "clean_accuracy" in run(root, "metrics", "show")
    audit = json.loads((root / "metrics/audit.json").read_text())
    claims = pd.read_csv(root / "results/claims.csv")
    assert audit["claims"] == claims.id.nunique() >= 15
    assert audit["supported"] + audit["contradicted"] + audit["mixed"] + audit["inconclusive"] == audit["claims"]
    assert "## Summary" in (root / "reports/audit/report.md").read_text()
    assert (root / "reports/audit/report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_compare_and_claims_read_the_pipelines_results(project):
    from click.testing import CliRunner

    from audit.cli import main

    root, _ = project
    res = CliRunner().invoke(main, ["compare", "--baseline", "mergemany", "--format", "csv",
                                    "--params", str(root / "params.yaml")])
    assert res.exit_code == 0, res.output
    import io

    table = pd.read_csv(io.StringIO(res.output))
    assert set(table.method) == {"hierarchical", "naive"} and list(table.depth.unique()) == [1, 2]
    assert (table.n == [2, 2, 1, 1]).all()  # groups of the single pool: 2 pairs, 1 group of 4
    res = CliRunner().invoke(main, ["claims", "--claims", str(root / "reports/claims.yaml"),
                                    "--params", str(root / "params.yaml")])
    assert res.exit_code == 0 and "F1-hierarchical-beats-mergemany" in res.output


@pytest.mark.slow
def test_any_evaluation_table_in_the_schema_gives_the_verdicts_of_the_run_that_wrote_it(project, tmp_path):
    """`audit claims --results FILE` / `audit compare --results FILE`: the run's own table, copied
    elsewhere (as another tool's output would be), gives exactly the run's verdicts and comparison."""
    from click.testing import CliRunner

    from audit.cli import main

    root, _ = project
    table = tmp_path / "elsewhere.csv"
    shutil.copy(root / "results/evaluation.csv", table)
    common = ["--params", str(root / "params.yaml"), "--results", str(table), "--format", "json"]
    res = CliRunner().invoke(main, ["claims", "--claims", str(root / "reports/claims.yaml"), *common])
    assert res.exit_code == 0, res.output
    mine = {r["id"]: r["verdict"] for r in json.loads(res.output)}
    assert mine == {c["id"]: c["verdict"] for c in json.loads((root / "results/claims.json").read_text())}
    res = CliRunner().invoke(main, ["compare", "--baseline", "mergemany", *common])
    assert res.exit_code == 0, res.output
    run_compare = pd.read_csv(root / "results/compare.csv")
    got = pd.DataFrame(json.loads(res.output))
    clean = run_compare[run_compare.metric == "clean_accuracy"].reset_index(drop=True)
    assert list(got.verdict) == list(clean.verdict) and (got["diff"] - clean["diff"]).abs().max() < 1e-12


@pytest.mark.slow
def test_mlflow_has_a_parent_per_stage_and_a_child_per_model(project):
    from mlflow.tracking import MlflowClient

    root, _ = project
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rebasin-audit-digits")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = {r.info.run_name: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == {"data", "train", "merge-hierarchical", "merge-mergemany", "merge-naive", "evaluate",
                            "audit", "report"}
    children = {}
    for r in runs:
        if "mlflow.parentRunId" in r.data.tags:
            children.setdefault(r.data.tags["mlflow.parentRunId"], []).append(r)
    train = children[parents["train"].info.run_id]
    assert len(train) == 6
    base = next(r for r in train if r.info.run_name == "base/p0/s1")
    assert base.data.params["seed"] == "1" and base.data.params["train.epochs"] == "2"
    assert 0 < base.data.metrics["test_accuracy"] <= 1
    assert base.data.tags["weights_path"] == "models/zoo/pool-0/model-000001.safetensors"
    assert len(base.data.tags["weights_sha256"]) == 64
    assert parents["train"].inputs.dataset_inputs[0].dataset.name == "digits"
    hier = children[parents["merge-hierarchical"].info.run_id]
    run_ = next(r for r in hier if r.info.run_name == "hierarchical/p0-d2-g0-s1-second")
    assert run_.data.tags["depth"] == "2" and run_.data.tags["merge_seed"] == "1" and run_.data.tags["group"] == "0"
    evals = children[parents["evaluate"].info.run_id]
    assert len(evals) == len(pd.read_csv(root / "results/models.csv"))
    one = next(r for r in evals if r.info.run_name == "eval/mergemany/p0-d1-g1-s0")
    assert {"clean_accuracy", "fgsm_robust_accuracy/eps_0.01", "lipschitz_global"} <= set(one.data.metrics)
    assert one.data.tags["method"] == "mergemany"
    # the UI opens the experiment on its runs (MLflow 3 reads the kind tag), and each claim's run
    # carries its verdict, linked from the report
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    claims = {r.info.run_name: r for r in children[parents["audit"].info.run_id]}
    verdicts = json.loads((root / "results/claims.json").read_text())
    for v in verdicts:
        run_ = claims[f"claim/{v['id']}"]
        assert run_.data.tags["verdict"] == v["verdict"]
        assert v["mlflow_run"] == {"experiment_id": exp.experiment_id, "run_id": run_.info.run_id}
    report = (root / "reports/audit/report.html").read_text()
    assert f'<a href="http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs/{run_.info.run_id}">' in report


@pytest.mark.slow
def test_nothing_changed_runs_nothing_and_an_eval_param_reruns_only_evaluation(project):
    root, _ = project
    assert "up to date" in run(root, "status")
    again = run(root, "repro")
    assert "Running stage" not in again
    log = run(root, "exp", "run", "-S", "eval.metrics.lipschitz_radius=0.2")
    ran = [line for line in log.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'evaluate':", "Running stage 'audit':", "Running stage 'report':"], log
    table = pd.read_csv(root / "results/evaluation.csv")
    assert (table[table.metric == "lipschitz_local_mean"].eps == 0.2).all()


@pytest.mark.slow
@pytest.mark.parametrize("edited,changed", [
    ("audit/stats.py", {"audit", "report"}),
    ("audit/report.py", {"report"}),
    ("audit/attacks.py", {"evaluate"}),
    ("audit/rebasin.py", {"merge@hierarchical", "merge@mergemany", "merge@naive", "evaluate"}),
    ("audit/zoo.py", {"train"}),
    ("audit/ablation.py", {"train", "merge@hierarchical", "merge@mergemany", "merge@naive", "evaluate"}),
])
def test_editing_code_changes_exactly_the_stages_that_run_it(project, edited, changed):
    """`dvc status` after a one-line edit names the stages whose deps it touched (their downstream
    stages rerun on the changed outs); everything else stays up to date."""
    root, _ = project
    path = root / edited
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# edited\n")
        out = run(root, "status", "--json")
        status = json.loads(out[out.index("{"):out.rindex("}") + 1])
    finally:
        path.write_bytes(original)
    assert set(status) == changed, status
    assert "up to date" in run(root, "status")
