"""DVC experiments, driven through the `dvc` command line: queue, run, list, read a file of one.

The DVC CLI is the interface DVC documents and keeps stable (its Python API exposes no queue), so
every call here is a subprocess of the `dvc` next to this interpreter. An experiment's committed
files (params.yaml, dvc.lock, metrics/, results/claims.*) are read from its git commit, so a result
survives the queue's temporary workspace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .config import UserError

# executor states `dvc exp show --json` reports; None: finished before this queue's records
PENDING = ("queued", "running")


class ExperimentError(UserError):
    """DVC or git refused (not a git/DVC project, a failed experiment): one line naming it."""


@dataclass(frozen=True)
class Experiment:
    name: str
    rev: str | None  # its git commit, once it has one
    state: str | None  # queued | running | success | failed | None (finished, no queue record)
    log: str | None = None  # the queue's log file of its run

    @property
    def finished(self) -> bool:
        return self.rev is not None and self.state in (None, "success")


def _env() -> dict:
    # The queue's worker spawns `dvc`, and each stage runs `python`: both must be this environment's,
    # also when it was not activated (`.venv/bin/audit sensitivity`).
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class NoAnswer(ExperimentError):
    """A dvc status query did not answer within its time limit."""


# Seconds a status query (`dvc exp show`, `dvc queue status`) may take before it is given up and
# asked again: they answer in 1-5 s here. Without a limit, `audit sensitivity` was once seen still
# waiting 13 minutes after its one experiment had finished, with no poll reaching the queue after
# the worker exited (no restart of the queue, which three polls without a worker would have made).
STATUS_TIMEOUT_S = 120.0


def dvc(root: Path, *args: str, check: bool = True, timeout: float | None = None) -> str:
    """Run dvc in ``root`` and return its stdout; ExperimentError (one line) if it fails, or
    NoAnswer if it runs past ``timeout`` seconds (it is killed)."""
    exe = shutil.which("dvc", path=_env()["PATH"])
    if exe is None:
        raise ExperimentError("dvc: not found next to this Python or on PATH (install the project: make setup)")
    named = " ".join(a for a in args if not a.startswith("-"))[:80]
    # Output through files, not pipes: `dvc queue start` leaves a daemon worker that inherits the
    # command's stdout and stderr, and a pipe would not see its end until that worker exits.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.run([exe, *args], cwd=root, env=_env(), stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=err, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NoAnswer(f"dvc {named}: no answer in {timeout:g} s") from None
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if check and proc.returncode != 0:
        lines = [ln for ln in (stderr or stdout).splitlines() if ln.strip()]
        raise ExperimentError(f"dvc {named}: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return stdout


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def head(root: Path) -> str:
    proc = git(root, "rev-parse", "HEAD")
    if proc.returncode != 0:
        raise ExperimentError(f"{root}: DVC experiments need a git repository with a commit (git init; git commit)")
    return proc.stdout.strip()


_RANK = {"running": 0, "queued": 1, "success": 2, None: 2, "failed": 3}  # which record of a name counts


def experiments(root: Path) -> dict[str, Experiment]:
    """The experiments whose baseline is HEAD, by name. Where a name has several records (a
    failed run beside its rerun), the one that is pending or finished counts over a failed one."""
    out = {}
    for attempt in range(5):
        try:
            shown = dvc(root, "exp", "show", "--json", "--no-pager", timeout=STATUS_TIMEOUT_S)
            break
        except ExperimentError:
            # `dvc exp show` can fail while the queue creates or cleans an experiment's workspace
            # ("directory .dvc/tmp/exps/tmp.../.dvc does not exist"): asked again, it answers
            if attempt == 4:
                raise
            time.sleep(2.0)
    for baseline in json.loads(shown or "[]"):
        for exp in baseline.get("experiments") or []:
            name = exp.get("name")
            revs = exp.get("revs") or [{}]
            executor = exp.get("executor") or {}
            rev = revs[0].get("rev")
            state = executor.get("state")
            record = Experiment(name, rev if state not in PENDING else None, state,
                                (executor.get("local") or {}).get("log"))
            if name not in out or _RANK.get(state, 3) < _RANK.get(out[name].state, 3):
                out[name] = record
    return out


def workers_active(root: Path) -> bool:
    """Whether a queue worker is alive (`dvc queue status` ends with "Worker status: N active, ...").
    A status that does not answer counts as alive: the next poll asks again, and no second worker
    is started beside one that may be busy."""
    try:
        text = dvc(root, "queue", "status", check=False, timeout=STATUS_TIMEOUT_S)
    except NoAnswer:
        return True
    for line in text.splitlines():
        if line.startswith("Worker status:"):
            return not line.split(":", 1)[1].strip().startswith("0 active")
    return False


def read(root: Path, rev: str, path: str) -> str | None:
    """The text of ``path`` in commit ``rev``; None when that commit has no such file."""
    proc = git(root, "show", f"{rev}:{path}")
    return proc.stdout if proc.returncode == 0 else None


def queue(root: Path, name: str, overrides: dict) -> None:
    """Queue one experiment: params.yaml with the dotted ``overrides`` set (each value as YAML)."""
    args = ["exp", "run", "--queue", "--name", name]
    for key, value in overrides.items():
        # JSON is YAML: strings stay strings ("none"); non-ASCII as itself, not as \\u escapes
        args += ["-S", f"{key}={json.dumps(value, ensure_ascii=False)}"]
    dvc(root, *args)


def remove(root: Path, names: list[str]) -> None:
    """Remove experiments (finished or failed) by name, one at a time so one that DVC does not
    know does not keep the others."""
    for name in names:
        dvc(root, "exp", "remove", name, check=False)
        dvc(root, "queue", "remove", name, check=False)
    left = [n for n, e in experiments(root).items() if n in names and e.state not in PENDING]
    if left:
        raise ExperimentError(f"dvc exp remove {left[0]}: could not remove the stale experiment; remove it by hand")


def start(root: Path, jobs: int) -> None:
    dvc(root, "queue", "start", "--jobs", str(jobs))


def wait(root: Path, names: list[str], *, jobs: int = 1, poll_s: float = 5.0, progress=None) -> dict[str, Experiment]:
    """Block until none of ``names`` is queued or running; returns their records. A queue left
    without a live worker (stopped, crashed, a reboot) is started again."""
    idle = 0
    while True:
        found = experiments(root)
        pending = [n for n in names if n in found and found[n].state in PENDING]
        if progress is not None:
            progress(len(names) - len(pending), len(names))
        if not pending:
            return {n: found[n] for n in names if n in found}
        idle = 0 if workers_active(root) else idle + 1
        if idle >= 3:  # three polls in a row without a worker: not a worker between two tasks
            start(root, jobs)
            idle = 0
        time.sleep(poll_s)


def failure_line(exp: Experiment) -> str:
    """The last error line of a failed experiment's log, for a one-line report."""
    if exp.log and Path(exp.log).exists():
        lines = [ln.strip() for ln in Path(exp.log).read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR") or "Error" in ln]
        if errors or lines:
            return (errors or lines)[-1]
    return f"state {exp.state}"
