"""executor: ray on a real local cluster (`ray start --head`, 2 CPUs, reached at 127.0.0.1): the
pipeline's outputs are bit-identical to the local executor's; a worker killed midway is retried, or
with no retries reported by name, and the finished outputs are kept."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.reliability.project import contents, make_project, run_pipeline, run_stage, snapshot, write_params

RAY = Path(sys.executable).parent / "ray"
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
PARAMS = {"merge": {"methods": ["hierarchical", "naive"], "seeds": [0, 1]}}
COMPARED = ("models/zoo", "models/merged")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A Ray head started for this module and stopped after it (its whole process group)."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    log = open(temp / "head.log", "w")
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **RAY_ENV}, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while subprocess.run([str(RAY), "status", f"--address={address}"], capture_output=True,
                         env={**os.environ, **RAY_ENV}).returncode:
        if head.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"ray head did not start:\n{(temp / 'head.log').read_text()}")
        time.sleep(1)
    yield {**RAY_ENV, "RAY_ADDRESS": address}
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    log.close()
    time.sleep(2)
    leftovers = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True).stdout.split()
    for pid in leftovers:  # raylet children that left the group: this cluster's, by its temp dir
        os.kill(int(pid), signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("local") / "p", PARAMS)
    run_pipeline(root, methods=PARAMS["merge"]["methods"], until="evaluate", here=True)
    return root


@pytest.fixture(scope="module")
def ray_trained(cluster, tmp_path_factory):
    """Data and train stages run with executor: ray (tests continue on copies)."""
    root = make_project(tmp_path_factory.mktemp("ray") / "p", PARAMS, {"executor": "ray"})
    run_pipeline(root, methods=[], until="train", env=cluster)
    return root


def copy_of(project, tmp_path, *overrides):
    root = tmp_path / "p"
    shutil.copytree(project, root)
    write_params(root, PARAMS, {"executor": "ray"}, *overrides)
    return root


def model_bytes(root):
    return {k: v for k, v in contents(snapshot(root, COMPARED)).items() if k.endswith(".safetensors")}


def test_ray_executor_gives_the_local_executors_bytes(cluster, local_run, ray_trained, tmp_path):
    root = copy_of(ray_trained, tmp_path)
    for method in PARAMS["merge"]["methods"]:
        run_stage(root, "merge", "--method", method, env=cluster)
    run_stage(root, "evaluate", env=cluster)
    ray_models, local_models = model_bytes(root), model_bytes(local_run)
    # 4 base; hierarchical 2 seeds x (2 + 1 groups) + the other side at depth 2 (2); naive 3
    assert ray_models == local_models and len(local_models) == 4 + 8 + 3
    assert (root / "results/evaluation.csv").read_bytes() == (local_run / "results/evaluation.csv").read_bytes()


def ray_task_pids(function: str) -> list[int]:
    """Ray workers now running ``function`` (Ray titles a busy worker 'ray::<function>')."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(f"ray::{function}".encode()):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def merge_killing_a_worker(root, env):
    """Run the hierarchical merge stage and SIGKILL one Ray worker while it merges."""
    stage = subprocess.Popen([sys.executable, str(root / "stages/merge.py"), "--root", str(root), "--method",
                              "hierarchical"], cwd=root, env={**os.environ, **env, "TQDM_DISABLE": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (pids := ray_task_pids("run_tree")):  # hierarchical: one tree task per seed and side
        assert stage.poll() is None, stage.communicate()[1]
        assert time.monotonic() < deadline, "no Ray worker ever ran a merge"
        time.sleep(0.02)
    os.kill(pids[0], signal.SIGKILL)
    out, err = stage.communicate(timeout=300)
    return stage.returncode, out, err


def test_a_killed_worker_is_retried(cluster, local_run, ray_trained, tmp_path):
    root = copy_of(ray_trained, tmp_path)
    rc, _, err = merge_killing_a_worker(root, cluster)
    assert rc == 0, err
    assert model_bytes(root) == {k: v for k, v in model_bytes(local_run).items() if "naive" not in k}


def test_a_killed_worker_without_retries_is_reported_by_name_and_the_rest_kept(cluster, local_run, ray_trained,
                                                                             tmp_path):
    root = copy_of(ray_trained, tmp_path, {"ray": {"retries": 0}})
    rc, _, err = merge_killing_a_worker(root, cluster)
    assert rc == 1 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: task merge hierarchical/p0-s") and "failed on the Ray cluster after 0 retries" in line
    kept = [k for k in model_bytes(root) if k.startswith("models/merged")]
    out = run_stage(root, "merge", "--method", "hierarchical", env=cluster)  # the rerun does the rest
    assert '"reused": ' + str(len(kept)) in out.stdout
    assert model_bytes(root) == {k: v for k, v in model_bytes(local_run).items() if "naive" not in k}


def test_the_confound_map_runs_under_executor_ray(cluster, tmp_path):
    """`audit sensitivity` with executor: ray in the grid's scale: every experiment's stages run as
    Ray tasks on the cluster (the queue's worker inherits RAY_ADDRESS), and the reference's
    verdicts equal a plain local run of the same settings (the executors compute the same bytes)."""
    import json

    from tests.reliability.test_sensitivity_queue import AUDIT, dvc, git_project, sh, verdicts

    root = git_project(tmp_path / "grid", {"executor": "ray"}, factors={})  # the reference alone: one experiment
    try:
        out = sh(root, AUDIT, "sensitivity", "--format", "json", extra_env=cluster)
    finally:
        dvc(root, "queue", "stop", "--kill", check=False)
    rows = json.loads(out.stdout)
    assert {r["setting"] for r in rows} == {"reference"}
    shown = json.loads(dvc(root, "exp", "show", "--json", "--no-pager").stdout)
    revs = {e["name"]: e["revs"][0] for b in shown for e in (b.get("experiments") or [])}
    assert revs["sens-reference"]["data"]["params"]["params.yaml"]["data"]["executor"] == "ray"
    dvc(root, "repro")  # executor: local (the workspace's params), otherwise the reference setting
    assert {r["claim"]: r["verdict"] for r in rows if r["setting"] == "reference"} == \
        verdicts(json.loads((root / "results/claims.json").read_text()))
