"""dvc.yaml's code deps are exactly what each stage runs, so `dvc repro` cannot call a stale
result up to date, and editing downstream code (statistics, report) never retrains or re-merges."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from audit.imports import DEP_EXEMPT, ROOT, project_files
from audit.methods import METHODS
from tests.conftest import REPO

# Imports whose code cannot change the stage's outs (see the comment at the top of dvc.yaml).
EXEMPT = DEP_EXEMPT
DOWNSTREAM = {"audit/claims.py", "audit/stats.py", "audit/compare.py", "audit/report.py"}


def stages() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: s.get("do", s) for name, s in spec.items()}


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.startswith(("audit/", "stages/"))}


def script(stage: dict) -> Path:
    return REPO / stage["cmd"].split()[1]


@pytest.mark.parametrize("name", list(stages()))
def test_code_deps_are_exactly_what_the_stage_runs(name):
    stage = stages()[name]
    runs = {str(p.relative_to(ROOT)) for p in project_files(script(stage))} - EXEMPT.get(name, set())
    listed = code_deps(stage)
    assert not runs - listed, f"stage {name} runs these files but does not list them as deps: {sorted(runs - listed)}"
    assert not listed - runs, f"stage {name} lists deps it does not run: {sorted(listed - runs)}"


def test_exemptions_are_still_imported():
    """An exemption for a file the stage no longer imports is stale itself."""
    for name, files in EXEMPT.items():
        runs = {str(p.relative_to(ROOT)) for p in project_files(script(stages()[name]))}
        assert files <= runs, f"{name}: exempt but not imported: {sorted(files - runs)}"


def test_statistics_and_report_code_is_no_dep_of_training_merging_or_evaluation():
    for name in ("data", "train", "merge", "evaluate"):
        assert not code_deps(stages()[name]) & DOWNSTREAM, name


def test_the_walker_follows_imports_inside_functions(tmp_path, monkeypatch):
    """A function-level import (run only when called) counts, and so do parent packages."""
    import audit.imports as imports

    pkg = tmp_path / "audit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from ..c import thing\n")
    (pkg / "c.py").write_text("thing = 1\n")
    (pkg / "unused.py").write_text("")
    monkeypatch.setattr(imports, "ROOT", tmp_path)
    imports.project_files.cache_clear()
    try:
        found = {str(p.relative_to(tmp_path)) for p in imports.project_files("audit.a")}
    finally:
        imports.project_files.cache_clear()
    assert found == {"audit/__init__.py", "audit/a.py", "audit/sub/__init__.py", "audit/sub/b.py", "audit/c.py"}


def test_plots_name_every_registered_method():
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    for plot in plots:
        (path, spec), = plot.items()
        if "by_depth" in path:
            assert spec["y"] == ["base", *METHODS], path


def test_no_import_cycle_among_the_package_modules():
    """Module-level imports form no cycle (imports inside functions are deliberate late binding
    and run after every module is loaded)."""
    import ast

    from audit.imports import _module_name, module_file

    files = sorted((ROOT / "audit").rglob("*.py"))
    graph: dict[str, set[str]] = {}
    for path in files:
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1]) + (f".{node.module}" if node.module else "")
                for mod in [base] + [f"{base}.{a.name}" for a in node.names]:
                    if module_file(mod) is not None and mod != name:
                        deps.add(mod)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if module_file(a.name) is not None}
        graph[name] = {d for d in deps if d not in ("audit",)}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
