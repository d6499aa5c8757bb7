"""The confound map through the real DVC queue, in a scratch git + DVC copy of the project: a tiny
grid (the tiny preset, input normalization dataset | none) runs as two DVC experiments that keep
their metrics and verdicts, `dvc exp show` and `dvc metrics diff` read them, an interrupted call
resumes without queueing anything twice, a second call reuses them, and a changed setting reruns
only its experiment."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def env() -> dict:
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "TQDM_DISABLE": "1"}


def sh(root, *cmd, check=True, timeout=900, extra_env=None):
    out = subprocess.run(list(cmd), cwd=root, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def dvc(root, *args, **kw):
    return sh(root, sys.executable, "-m", "dvc", *args, **kw)


AUDIT = os.path.join(os.path.dirname(sys.executable), "audit")


def audit(root, *args, **kw):
    return sh(root, AUDIT, *args, **kw)


def git_project(root, *scale_overrides: dict, factors: dict | None = None):
    """A git + DVC copy of the project (its files as they are, tests aside) on the tiny preset, whose
    grid is input_norm dataset | none (or ``factors``); ``scale_overrides`` join the grid's scale."""
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, tracked):
        if rel.startswith(("tests/", "benchmarks/", "docs/")) or not (REPO / rel).is_file():
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    params = yaml.safe_load((REPO / "params" / "tiny.yaml").read_text())
    for o in scale_overrides:
        params["sensitivity"]["scale"].update(o)
    if factors is not None:
        params["sensitivity"]["factors"] = factors
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, "git", "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    sh(root, *GIT, "add", "-A")
    sh(root, *GIT, "commit", "-qm", "tiny grid")
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The grid run once, interrupted after queueing (as Ctrl-C would), then called again: the
    second call waits for the queued experiments instead of queueing them twice."""
    root = git_project(tmp_path_factory.mktemp("grid"))
    first = subprocess.Popen([AUDIT, "sensitivity"], cwd=root, env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(exp_list(root)) < 2:  # both settings queued
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(1)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    resumed = audit(root, "sensitivity", "--format", "json")
    yield root, resumed
    dvc(root, "queue", "stop", "--kill", check=False)


def exp_list(root) -> list[dict]:
    out = dvc(root, "exp", "show", "--json", "--no-pager").stdout
    return [e for b in json.loads(out) for e in (b.get("experiments") or [])]


def verdicts(claims: list[dict]) -> dict[str, str]:
    """A claims.json's verdicts as the map shows them: a claim beyond this depth-2 zoo (inconclusive,
    its unit "not measured: ...") reads "not measured"."""
    return {c["id"]: "not measured" if str(c["tests"][0].get("unit", "")).startswith("not measured") else c["verdict"]
            for c in claims}


def exp_show(root) -> dict:
    listed = exp_list(root)
    names = [e["name"] for e in listed]
    assert len(names) == len(set(names)), f"an experiment queued twice: {names}"
    return {e["name"]: e["revs"][0] for e in listed}


def test_each_setting_is_a_dvc_experiment_that_keeps_its_metrics_and_verdicts(project):
    root, first = project
    # resumed: what the interrupted call queued is waited for, nothing is queued twice
    assert re.search(r"2 settings: \d done, \d queued or running, 0 to run", first.stderr), first.stderr
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
    assert acc["old"] != acc["new"]  # the override reached training
    # the collected table is each experiment's own claims table, verdict for verdict
    rows = json.loads(first.stdout)
    for name, rev in shown.items():
        setting = "reference" if name == "sens-reference" else "input_norm=none"
        mine = {r["claim"]: r["verdict"] for r in rows if r["setting"] == setting}
        assert mine == verdicts(json.loads(sh(root, "git", "show", f"{rev['rev']}:results/claims.json").stdout))
    labels = {r["claim"]: r["label"] for r in rows}
    assert labels and labels["F8-weight-norm-falls-with-stage"] == "by construction"
    # an absent setting makes no claim stable: every label is over both experiments' verdicts
    for claim, label in labels.items():
        pair = {r["verdict"] for r in rows if r["claim"] == claim}
        if label == "stable":
            assert len(pair) == 1 and pair <= {"supported", "contradicted", "mixed"}
    assert (root / "reports/sensitivity/report.html").exists() and (root / "results/sensitivity/sensitivity.csv").exists()


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
