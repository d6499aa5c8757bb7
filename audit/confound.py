"""Run the confound map as DVC experiments and collect its verdicts (`audit sensitivity`).

Each setting of `audit.grid` is queued as ``dvc exp run --queue --name sens-... -S key=value ...``
and run by ``dvc queue start``, so each is an ordinary, reproducible DVC experiment that
``dvc exp show`` lists with its metrics (verdict counts in metrics/audit.json) and ``dvc exp apply``
restores. Resuming is by name: an experiment of the same name on the same baseline commit whose
params and code deps equal the setting's is kept; one still queued or running is waited for; a
failed or stale one (other params, other code) is removed and queued again. Interrupting
`audit sensitivity` leaves DVC's queue running; calling it again picks up where it stands.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import experiments as ex
from .config import ConfigError, Params, UserError, params_from_dict, to_dict
from .grid import Setting, flat, settings


class SensitivityError(UserError):
    """A grid that cannot run or be collected: one line naming the setting."""


@dataclass
class Plan:
    settings: list[Setting]  # those that run (their data is present)
    skipped: dict[str, str]  # setting label -> why it does not run
    overrides: dict[str, dict]  # experiment name -> the -S overrides it is queued with
    failed: list[str] = field(default_factory=list)  # experiment names that did not finish


def _absolute(setting: Setting, root: Path) -> dict:
    """The setting's overrides with the paths an experiment's copy of the project lacks made absolute:
    the data root and IDX path (data/ is not in git), a relative sqlite store (MLflow)."""
    over = dict(setting.overrides)
    data = setting.params.data
    if not Path(data.root).is_absolute():
        over["data.root"] = str((root / data.root).resolve())
    if data.path is not None and not Path(data.path).is_absolute():
        over["data.path"] = str((root / data.path).resolve())
    imported = setting.params.zoo.import_.path
    if setting.params.zoo.source == "import" and imported and not Path(imported).is_absolute():
        over["zoo.import.path"] = str((root / imported).resolve())
    uri = setting.params.tracking.uri
    if setting.params.tracking.enabled and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        over["tracking.uri"] = "sqlite:///" + str((root / uri.removeprefix("sqlite:///")).resolve())
    return over


def plan(params: Params, root: Path, *, data_present=None) -> Plan:
    """What the grid runs. ``data_present(params) -> str | None`` says why a setting's data set is
    missing (None: present); by default it tries to load it (audit.data)."""
    if data_present is None:
        data_present = _data_present(root)
    run, skipped = [], {}
    for s in settings(params):
        why = data_present(s.params)
        if why is not None:
            if s.factor is None:
                raise SensitivityError(f"sensitivity: the reference setting's data is missing: {why}")
            skipped[s.label] = why
            continue
        run.append(s)
    return Plan(run, skipped, {s.name: _absolute(s, root) for s in run})


def _data_present(root: Path):
    from .data import DataError, load_from_params

    def present(p: Params) -> str | None:
        try:
            load_from_params(p, root)
        except DataError as e:
            return str(e)
        return None

    return present


def _md5(path: Path) -> str | None:
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None


OUTPUT_DIRS = ("models/", "results/", "metrics/", "reports/audit/", "data/")  # what the stages write


def stale_because(root: Path, rev: str, setting: Setting, overrides: dict) -> str | None:
    """Why a finished experiment does not stand for ``setting`` (None: it does): other params than
    the setting's, another pipeline (dvc.yaml), other sources (each dvc.lock dep that is not a
    pipeline output, the code and the claims registry, against the workspace's file), or no
    claims table."""
    from .grid import apply

    text = ex.read(root, rev, "params.yaml")
    if text is None:
        return "no params.yaml"
    try:
        had = to_dict(params_from_dict(yaml.safe_load(text), source=f"{setting.name}:params.yaml"))
        want = to_dict(params_from_dict(apply(to_dict(setting.params), overrides, setting.name), source=setting.name))
    except (ConfigError, ValueError, yaml.YAMLError) as e:
        return f"its params do not load ({str(e).splitlines()[0]})"
    had.pop("sensitivity", None), want.pop("sensitivity", None)
    if had != want:
        had_flat, want_flat = flat(had), flat(want)
        diff = sorted(k for k in set(had_flat) | set(want_flat) if had_flat.get(k) != want_flat.get(k))
        return f"other params ({', '.join(diff[:3])})"
    if ex.read(root, rev, "dvc.yaml") != (root / "dvc.yaml").read_text():
        return "another dvc.yaml"
    try:
        lock = yaml.safe_load(ex.read(root, rev, "dvc.lock") or "") or {}
    except yaml.YAMLError:
        return "an unreadable dvc.lock"
    if not lock.get("stages"):
        return "no dvc.lock"
    for stage in lock["stages"].values():
        for dep in stage.get("deps", []):
            path = dep.get("path", "")
            if path.startswith(OUTPUT_DIRS) or dep.get("md5", "").endswith(".dir"):
                continue
            if dep.get("md5") != _md5(root / path):
                return f"other sources ({path})"
    if ex.read(root, rev, "results/claims.json") is None:
        return "no results/claims.json"
    return None


def run(params: Params, root: Path, *, jobs: int, execute: bool = True, echo=print, poll_s: float = 5.0,
        data_present=None) -> tuple[Plan, dict[str, str]]:
    """Bring every setting's experiment up to date (``execute``: queue and run what is missing) and
    return the plan and each setting's experiment commit, by experiment name."""
    ex.head(root)
    p = plan(params, root, data_present=data_present)
    for label, why in p.skipped.items():
        echo(f"skipped {label}: {why}")
    found = ex.experiments(root)
    done, todo, waiting, stale = {}, [], [], []
    for s in p.settings:
        e = found.get(s.name)
        if e is not None and e.state in ex.PENDING:
            waiting.append(s.name)
            continue
        if e is not None and e.finished:
            why = stale_because(root, e.rev, s, p.overrides[s.name])
            if why is None:
                done[s.name] = e.rev
                continue
            echo(f"{s.name}: rerun, {why}")
        elif e is not None:
            echo(f"{s.name}: rerun, it {e.state}: {ex.failure_line(e)}")
        if e is not None:
            stale.append(s.name)
        todo.append(s)
    echo(f"{len(p.settings)} settings: {len(done)} done, {len(waiting)} queued or running, {len(todo)} to run")
    if not execute:
        return p, done
    names = waiting + [s.name for s in todo]
    by_name = {s.name: s for s in p.settings}
    failed = []
    for _round in range(3):  # a pending experiment found stale once finished is queued again, at most twice
        ex.remove(root, stale)
        for name in [n for n in names if n not in waiting]:
            ex.queue(root, name, p.overrides[name])
        if not names:
            break
        ex.start(root, jobs)

        def progress(finished, total, _last=[-1]):
            if finished != _last[0]:
                echo(f"experiments: {finished}/{total} finished")
                _last[0] = finished

        records = ex.wait(root, names, jobs=jobs, poll_s=poll_s, progress=progress)
        again, stale, waiting = [], [], []
        for name in names:
            e = records.get(name)
            if e is None or not e.finished:
                failed.append(f"{name} ({ex.failure_line(e) if e else 'not found'})")
                continue
            why = stale_because(root, e.rev, by_name[name], p.overrides[name])
            if why is None:
                done[name] = e.rev
            else:  # queued before the params or code changed
                echo(f"{name}: rerun, {why}")
                again.append(name)
                stale.append(name)
        names = again
    if failed:
        echo(f"failed: {'; '.join(failed)} (dvc queue logs <name>)")
    p.failed = [f.split(" (")[0] for f in failed]
    return p, done
