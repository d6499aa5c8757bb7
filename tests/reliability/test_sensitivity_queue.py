"""The confound map through the real DVC queue, in a scratch git + DVC copy of the project: a tiny
grid (the tiny preset, input normalization dataset | none) runs as two DVC experiments that keep
their metrics and verdicts, `dvc exp show` and `dvc metrics diff` read them, a second call reuses
them, and a changed setting reruns only its experiment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def env() -> dict:
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "TQDM_DISABLE": "1"}


def sh(root, *cmd, check=True, timeout=900):
    out = subprocess.run(list(cmd), cwd=root, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def dvc(root, *args, **kw):
    return sh(root, sys.executable, "-m", "dvc", *args, **kw)


def audit(root, *args, **kw):
    return sh(root, os.path.join(os.path.dirname(sys.executable), "audit"), *args, **kw)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split("\0")
    for rel in filter(None, tracked):
        if rel.startswith(("tests/", "benchmarks/", "docs/")) or not (REPO / rel).is_file():
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    shutil.copy(REPO / "params" / "tiny.yaml", root / "params.yaml")  # its grid: input_norm dataset | none
    sh(root, "git", "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    sh(root, *GIT, "add", "-A")
    sh(root, *GIT, "commit", "-qm", "tiny grid")
    first = audit(root, "sensitivity", "--format", "json")
    yield root, first
    dvc(root, "queue", "stop", "--kill", check=False)


def verdicts(claims: list[dict]) -> dict[str, str]:
    """A claims.json's verdicts as the map shows them: a claim beyond this depth-2 zoo (inconclusive,
    its unit "not measured: ...") reads "not measured"."""
    return {c["id"]: "not measured" if str(c["tests"][0].get("unit", "")).startswith("not measured") else c["verdict"]
            for c in claims}


def exp_show(root) -> dict:
    out = dvc(root, "exp", "show", "--json", "--no-pager").stdout
    return {e["name"]: e["revs"][0] for b in json.loads(out) for e in (b.get("experiments") or [])}


def test_each_setting_is_a_dvc_experiment_that_keeps_its_metrics_and_verdicts(project):
    root, first = project
    shown = exp_show(root)
    assert set(shown) == {"sens-reference", "sens-input_norm-none"}
    for name, rev in shown.items():
        counts = rev["data"]["metrics"]["metrics/audit.json"]["data"]
        assert counts["claims"] == 29 and sum(counts[v] for v in ("supported", "contradicted", "mixed", "inconclusive")) == 29
        params = rev["data"]["params"]["params.yaml"]["data"]
        assert params["zoo"]["input_norm"] == ("none" if name.endswith("none") else "dataset")
        committed = sh(root, "git", "show", f"{rev['rev']}:results/claims.json").stdout
        assert len(json.loads(committed)) == 29
    diff = dvc(root, "metrics", "diff", "sens-reference", "sens-input_norm-none", "--json").stdout
    acc = json.loads(diff)["metrics/train.json"]["base/p0.test_accuracy_mean"]  # the two zoos differ
    train = {n: shown[n]["data"]["metrics"]["metrics/train.json"]["data"]["base/p0"]["test_accuracy_mean"]
             for n in shown}
    assert (acc["old"], acc["new"]) == (train["sens-reference"], train["sens-input_norm-none"])
    # the collected table is each experiment's own claims table, verdict for verdict
    rows = json.loads(first.stdout)
    for name, rev in shown.items():
        setting = "reference" if name == "sens-reference" else "input_norm=none"
        mine = {r["claim"]: r["verdict"] for r in rows if r["setting"] == setting}
        assert mine == verdicts(json.loads(sh(root, "git", "show", f"{rev['rev']}:results/claims.json").stdout))
    assert {r["label"] for r in rows} <= {"stable", "setting-dependent", "unsettled", "undecided", "by construction"}
    assert (root / "reports/sensitivity/report.html").exists() and (root / "results/sensitivity.csv").exists()


def test_the_reference_experiment_gives_the_verdicts_of_a_plain_run(project):
    root, first = project
    dvc(root, "repro")  # the reference setting has no scale here: the plain run of the same params
    plain = verdicts(json.loads((root / "results/claims.json").read_text()))
    rows = json.loads(first.stdout)
    assert {r["claim"]: r["verdict"] for r in rows if r["setting"] == "reference"} == plain


def test_a_second_call_reuses_every_experiment_and_a_changed_level_reruns_only_its_own(project):
    root, first = project
    again = audit(root, "sensitivity", "--format", "json")
    assert "2 settings: 2 done, 0 queued or running, 0 to run" in again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)
    before = exp_show(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sensitivity"]["factors"]["input_norm"]["none"]["zoo.train.epochs"] = 1  # a changed level
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    third = audit(root, "sensitivity", "--format", "json")
    assert "sens-input_norm-none: rerun, other params (zoo.train.epochs)" in third.stderr
    assert "2 settings: 1 done, 0 queued or running, 1 to run" in third.stderr
    after = exp_show(root)
    assert after["sens-reference"]["rev"] == before["sens-reference"]["rev"]
    assert after["sens-input_norm-none"]["rev"] != before["sens-input_norm-none"]["rev"]
    assert after["sens-input_norm-none"]["data"]["params"]["params.yaml"]["data"]["zoo"]["train"]["epochs"] == 1
