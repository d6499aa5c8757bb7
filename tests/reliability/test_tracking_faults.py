"""Tracking faults: an unreachable or locked MLflow store loses no result on disk, the stage says so
in one line and exits non-zero (so DVC does not record it as done), and the rerun logs exactly the
runs that are missing."""

import sqlite3

import pytest
from mlflow.tracking import MlflowClient

from audit import tracking
from audit.config import TrackingParams
from audit.tracking import Tracker
from tests.reliability.project import make_project, run_here, run_stage, snapshot, write_params

CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens on it here


def mlflow_runs(db, stage=None):
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("rebasin-audit-digits")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags
               and (stage is None or r.data.tags.get("stage") == stage)}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents]
    return parents, children


def test_unreachable_server_keeps_results_and_the_rerun_logs_them(tmp_path):
    root = make_project(tmp_path / "p", {"tracking": {"enabled": True, "uri": CLOSED_PORT}})
    for stage in ("data", "train"):  # in this process, then as DVC would start it
        out = run_here(root, stage) if stage == "data" else run_stage(root, stage, check=False)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: results are saved, but MLflow logging failed: {CLOSED_PORT}: ConnectionError")
        assert "rerun (dvc repro)" in last
    assert (root / "results/data.json").exists()
    models = snapshot(root, ("models",))
    assert len([k for k in models if k.endswith(".safetensors")]) == 4

    db = root / "mlflow.db"
    write_params(root, {"tracking": {"enabled": True, "uri": f"sqlite:///{db}"}})
    run_here(root, "train", check=True)  # the store is back: nothing is retrained, every run is logged
    assert {k: v for k, v in snapshot(root, ("models",)).items() if k.endswith(".safetensors")} == \
        {k: v for k, v in models.items() if k.endswith(".safetensors")}
    parents, children = mlflow_runs(db, "train")
    assert len(parents) == 1 and sorted(r.info.run_name for r in children) == [f"base/p0/s{i}" for i in range(4)]


def test_locked_store_keeps_results_and_the_rerun_logs_them(tmp_path):
    db = tmp_path / "p" / "mlflow.db"
    root = make_project(tmp_path / "p", {"tracking": {"enabled": True, "uri": f"sqlite:///{db}"},
                                         "merge": {"methods": ["naive"]}})
    run_here(root, "data", check=True)
    run_here(root, "train", check=True)
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another process holds the store (a long write, a stuck UI)
    try:
        out = run_stage(root, "merge", "--method", "naive", check=False)  # as DVC starts it
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "MLflow logging failed" in out.stderr and "database is locked" in out.stderr
    merged = {k: v for k, v in snapshot(root, ("models/merged",)).items() if k.endswith(".safetensors")}
    assert len(merged) == 3  # 2 pairs and the group of 4, on disk despite the fault

    run_here(root, "merge", "--method", "naive", check=True)
    assert {k: v for k, v in snapshot(root, ("models/merged",)).items() if k.endswith(".safetensors")} == merged
    parents, children = mlflow_runs(db, "merge-naive")
    assert len(parents) == 1 and len(children) == 3


@pytest.fixture
def store(tmp_path):
    tracking._FAILURES.clear()
    yield TrackingParams(uri=f"sqlite:///{tmp_path / 'm.db'}")
    tracking._FAILURES.clear()


def test_a_rerun_resumes_the_unfinished_parent_and_logs_only_missing_children(store):
    with pytest.raises(KeyboardInterrupt):
        with Tracker(store, data_name="digits", stage="merge-x", key="k1") as tr:
            for name in ("a", "b"):
                assert tr.child(name, metrics={"m": 1.0})
            first = tr.parent_id
            raise KeyboardInterrupt  # the stage died after two children
    with Tracker(store, data_name="digits", stage="merge-x", key="k1") as tr:
        assert tr.parent_id == first and tr.logged == {"a", "b"}
        assert tr.child("a") is None and tr.child("b") is None  # already there: not logged twice
        assert tr.child("c")
    client = MlflowClient(store.uri)
    parent = client.get_run(first)
    assert parent.info.status == "FINISHED"
    exp = client.get_experiment_by_name("rebasin-audit-digits")
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{first}'")
    assert sorted(r.info.run_name for r in kids) == ["a", "b", "c"]
    # A finished parent is never reopened: the same key later starts a new parent run.
    with Tracker(store, data_name="digits", stage="merge-x", key="k1") as tr:
        assert tr.parent_id != first and tr.logged == set()
    assert tracking.failures() == []


def test_a_store_failing_midway_switches_tracking_off_and_is_reported(store, monkeypatch):
    with Tracker(store, data_name="digits", stage="s", key="k2") as tr:
        assert tr.child("a")

        def broken(*args, **kwargs):
            raise OSError("disk I/O error\nsecond line")

        monkeypatch.setattr(tr.client, "create_run", broken)
        assert tr.child("b") is None and tr.client is None  # no exception reaches the stage
        assert tr.child("c") is None
    assert tracking.failures() == [f"{store.uri}: OSError: disk I/O error"]
