"""Which project files a module runs: its imports, followed transitively through the package.

DVC reruns a stage when one of its deps changes, so a stage's deps must name every project file
it executes. This reads the imports from the source (``ast``: imports inside functions count, as
they run when called) instead of importing anything, so it is cheap and sees code paths a test
run would miss. The dvc.yaml test and the evaluation cache's code key both use it.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "audit"
ROOT = Path(__file__).resolve().parent.parent  # the directory holding the package


def module_file(name: str) -> Path | None:
    """The source file of project module ``name`` (``audit.x.y``), or None if it is not one."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path) -> str:
    parts = list(path.resolve().relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> set[str]:
    """Module names a file imports (``from a import b`` counts a.b too: b may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path) if path.resolve().is_relative_to(ROOT / PACKAGE) else ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


@lru_cache(maxsize=None)
def project_files(start: str | Path) -> frozenset[Path]:
    """Every project file that running ``start`` (a module name or a script path) may execute:
    the modules it imports, transitively, and each one's parent packages' ``__init__.py``."""
    first = Path(start) if isinstance(start, Path) or str(start).endswith(".py") else module_file(str(start))
    if first is None:
        raise ValueError(f"{start}: not a project module")
    seen: set[Path] = set()
    todo = [Path(first).resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for mod in _imported(path):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ ...
                f = module_file(".".join(parts[:i]))
                if f is not None and f.resolve() not in seen:
                    todo.append(f.resolve())
    return frozenset(seen)


# Files that move no numbers: settings are keyed by value wherever they are used (a store's header,
# a model's recipe), so these modules' code is left out of the code digests. Editing a label in
# the method registry or adding a param must not retrain a zoo.
INFRASTRUCTURE = ("audit/__init__.py", "audit/config.py", "audit/methods.py", "audit/paths.py", "audit/ablation.py",
                  "audit/storage.py", "audit/executor.py", "audit/imports.py", "audit/tracking.py",
                  "audit/resources.py", "audit/stages/__init__.py", "audit/stages/common.py", "audit/grid.py")

# Files a stage runs but does not list as deps (see dvc.yaml): train times one weight matching for
# its resource estimate, which cannot change a trained model.
DEP_EXEMPT = {"train": frozenset({"audit/rebasin.py", "audit/assignment.py"})}


def write_dvc_deps(dvc_yaml: Path) -> list[str]:
    """Rewrite the code deps (audit/, stages/) of every stage in ``dvc_yaml`` to what it runs, keeping
    the other deps, the comments and the order; returns the names of the stages it changed.
    ``python -m audit.imports`` runs it on the project's dvc.yaml."""
    import yaml

    spec = yaml.safe_load(dvc_yaml.read_text())["stages"]
    lines = dvc_yaml.read_text().splitlines(keepends=True)
    changed, out, i = [], [], 0
    stage = None
    while i < len(lines):
        line = lines[i]
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip()[:-1]  # a stage's name: two spaces in, under "stages:"
        if line.strip() == "deps:" and stage in spec:
            body = spec[stage].get("do", spec[stage])
            indent = line[: len(line) - len(line.lstrip())] + "  "
            j = i + 1
            old = []
            while j < len(lines) and lines[j].startswith(indent + "- "):
                old.append(lines[j].strip()[2:])
                j += 1
            script = ROOT / body["cmd"].split()[1]
            runs = sorted(str(p.relative_to(ROOT)) for p in project_files(script)
                          if str(p.relative_to(ROOT)) not in DEP_EXEMPT.get(stage, ()))
            first = str(script.relative_to(ROOT))
            code = [first] + [r for r in runs if r != first]
            new = code + [d for d in old if not d.startswith(("audit/", "stages/"))]
            if new != old:
                changed.append(stage)
            out.append(line)
            out.extend(f"{indent}- {d}\n" for d in new)
            i = j
            continue
        out.append(line)
        i += 1
    dvc_yaml.write_text("".join(out))
    return changed


if __name__ == "__main__":
    print("updated:", ", ".join(write_dvc_deps(ROOT / "dvc.yaml")) or "nothing")


def code_digest(start: str) -> str:
    """sha256 over the sources ``start`` runs (`project_files`) that compute: every one but the
    `INFRASTRUCTURE`, in a fixed order."""
    h = hashlib.sha256()
    for path in sorted(p for p in project_files(start) if str(p.relative_to(ROOT)) not in INFRASTRUCTURE):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()
