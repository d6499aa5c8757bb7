"""Scratch projects for the reliability suite: the shipped stage scripts and params (with small
overrides) in a temporary directory, stages run as the subprocesses DVC would start."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import REPO

# The tiny preset every scratch project starts from (the whole pipeline in seconds).
TINY_PARAMS = REPO / "params" / "tiny.yaml"
SMALL = yaml.safe_load(TINY_PARAMS.read_text())
STAGES = ("data", "train", "merge", "evaluate", "claims", "report")
OUTPUTS = ("models", "results", "metrics", "reports/audit")


def deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        base[k] = deep_update(base.get(k) or {}, v) if isinstance(v, dict) and v and k != "regularized" else v
    return base


def params_dict(*overrides: dict) -> dict:
    params = yaml.safe_load(TINY_PARAMS.read_text())
    for o in overrides:
        params = deep_update(params, o)
    return params


def make_project(root: Path, *overrides: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    (root / "reports").mkdir(exist_ok=True)
    shutil.copy(REPO / "reports/claims.yaml", root / "reports/claims.yaml")
    write_params(root, *overrides)
    return root


def write_params(root: Path, *overrides: dict, name: str = "params.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(params_dict(*overrides)))
    return path


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}


def stage_cmd(root: Path, name: str, *args: str) -> list[str]:
    return [sys.executable, str(root / "stages" / f"{name}.py"), "--root", str(root), *args]


def run_stage(root: Path, name: str, *args: str, check: bool = True, timeout: float = 600,
              env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(stage_cmd(root, name, *args), cwd=root, env={**_env(), **(env or {})}, capture_output=True,
                         text=True, timeout=timeout)
    if check and out.returncode:
        raise AssertionError(f"stage {name} {args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def stage_here(root: Path, name: str, *args: str) -> tuple[int, str, str]:
    """Run a stage's entry point in this process, as its script would: (exit code, stdout, stderr)."""
    import contextlib
    import io

    import importlib

    from audit import tracking

    stage = importlib.import_module(f"audit.stages.{name}")
    out, err = io.StringIO(), io.StringIO()
    tracking._FAILURES.clear()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            stage.main(["--root", str(root), *args])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def run_here(root: Path, name: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    """`stage_here` with `run_stage`'s result type."""
    code, out, err = stage_here(root, name, *args)
    if check and code:
        raise AssertionError(f"stage {name} {args} failed ({code}):\n{out}\n{err}")
    return subprocess.CompletedProcess([name, *args], code, out, err)


def run_pipeline(root: Path, methods=("hierarchical", "mergemany", "naive"), until: str = "report",
                 env: dict | None = None, here: bool = False) -> None:
    """The stages in order up to ``until``: as subprocesses, or in this process (``here``)."""
    def one(*args):
        return run_here(root, *args, check=True) if here else run_stage(root, *args, env=env)

    for name in STAGES:
        if name == "merge":
            for m in methods:
                one("merge", "--method", m)
        else:
            one(name)
        if name == until:
            return


def interrupt_when(root: Path, name: str, args: tuple, ready, sig: int, timeout: float = 300, env: dict | None = None):
    """Start a stage, wait until ``ready()`` is true (polling), send ``sig``; return (rc, stderr,
    what ``ready`` returned at the kill). Fails if the stage finished before it could be interrupted."""
    # Ctrl-C as at a terminal: a test run started in the background (nohup, CI, `make test &`)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen(stage_cmd(root, name, *args), cwd=root, env={**_env(), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    try:
        while not (state := ready()):
            if proc.poll() is not None:
                raise AssertionError(f"stage {name} ended before it could be interrupted:\n{proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"stage {name}: no progress within {timeout} s")
            time.sleep(0.02)
        if proc.poll() is not None:
            raise AssertionError(f"stage {name} finished before it could be interrupted")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGKILL:
        # Worker processes of a killed driver: wait until none of them writes any more.
        time.sleep(1.0)
    return proc.returncode, err, state


def snapshot(root: Path, under=OUTPUTS) -> dict[str, tuple[int, int, str]]:
    """{relative path: (inode, mtime_ns, sha256)} of every output file."""
    out = {}
    for top in under:
        for path in sorted((root / top).rglob("*")):
            if path.is_file():
                st = path.stat()
                out[str(path.relative_to(root))] = (st.st_ino, st.st_mtime_ns,
                                                    hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def contents(snap: dict) -> dict[str, str]:
    return {k: v[2] for k, v in snap.items()}
