"""Model files: safetensors only (never pickle), a JSON manifest with sha256s, atomic writes.

A zoo is a directory::

    zoo/
      manifest.json            {"format", "zoo": {data set, architecture, training config, versions},
                                "models": {"<seed>": {file, sha256, seed, metrics, ...}}}
      model-000000.safetensors
      ...

Every file is written to a temporary name in the same directory and renamed into place, so a
killed process leaves either the old file or the new one, never half of one. A model file is
written before the manifest entry that vouches for it; a file without an entry is treated as
unfinished and redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace

from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from .config import UserError
from .models import architecture_of

MANIFEST = "manifest.json"
FORMAT = 1


class StorageError(UserError, ValueError):
    """A stored file is missing, corrupt, tampered with or inconsistent; the message names it."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(directory: Path) -> None:
    """Delete the temporaries of `atomic_write_bytes` a killed writer left: never read, never kept."""
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def params_to_bytes(params: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in params.items()}, metadata=dict(metadata or {}))


def save_weights(path: Path, params: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """Write a safetensors file atomically; return its sha256."""
    data = params_to_bytes(params, metadata)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_weights(path: Path, sha256: str | None = None) -> dict[str, Tensor]:
    """Read a safetensors file, checking its sha256 first when one is given."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StorageError(f"{path}: cannot read model file ({e.strerror or e})") from None
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise StorageError(f"{path}: sha256 does not match the manifest (file modified or corrupted)")
    try:
        return dict(st_load(data))
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise StorageError(f"{path}: not a readable safetensors file ({e})") from None


def file_architecture(path: Path) -> dict | None:
    """The MLP architecture of a safetensors file from its header alone (no weights read); None if
    the file does not hold an MLP."""
    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: SimpleNamespace(shape=tuple(f.get_slice(k).get_shape())) for k in f.keys()}
        return architecture_of(shapes)
    except (SafetensorError, ValueError, OSError):
        return None


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StorageError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "models" not in manifest:
        raise StorageError(f"{path}: not a rebasin-audit manifest (format {FORMAT})")
    return manifest


class ModelStore:
    """A directory of safetensors models keyed by an id, with a manifest.

    ``header`` describes what every model in the store shares (data set, architecture, training
    config...). Opening an existing store with a different header is an error naming the first
    differing key, so models trained under other settings are never mixed in or silently reused.
    Keys listed in ``informational`` (versions, timestamps) are recorded but not compared.

    ``reset=True`` instead empties a store whose header differs (its models and manifest are
    deleted, with a note on stderr). The pipeline uses it for its own outputs: a stage whose params
    changed must start afresh (as DVC would delete them), while an interrupted stage with unchanged
    params resumes from the models it finished.
    """

    def __init__(self, directory: Path, header: Mapping, informational: Iterable[str] = (), reset: bool = False):
        self.dir = Path(directory)
        self.informational = set(informational)
        existing = read_manifest(self.dir)
        if existing is not None:
            differs = self._differing_key(existing["zoo"], header)
            if differs is not None and not reset:
                raise StorageError(
                    f"{self.dir / MANIFEST}: existing models were made with a different {differs!r} "
                    f"({_short(existing['zoo'].get(differs))} vs now {_short(header.get(differs))}); "
                    "use another directory or delete it")
            if differs is not None:
                print(f"note: {self.dir}: {differs!r} changed; deleting its {len(existing['models'])} models "
                      "and starting afresh", file=sys.stderr)
                self._clear(existing)
                existing = None
        if existing is None:
            self.manifest = {"format": FORMAT, "zoo": dict(header), "models": {}}
            self._write()
        else:
            self.manifest = existing
        remove_temporaries(self.dir)

    def _differing_key(self, old: Mapping, new: Mapping) -> str | None:
        for key in sorted(set(old) | set(new)):
            if key not in self.informational and _canon(old.get(key)) != _canon(new.get(key)):
                return key
        return None

    def _clear(self, manifest: Mapping) -> None:
        # Only the files its manifest names: never a stranger's.
        for entry in manifest["models"].values():
            (self.dir / entry["file"]).unlink(missing_ok=True)
        (self.dir / MANIFEST).unlink()

    def _write(self) -> None:
        atomic_write_json(self.dir / MANIFEST, self.manifest)

    @property
    def header(self) -> dict:
        return self.manifest["zoo"]

    @property
    def entries(self) -> dict[str, dict]:
        return self.manifest["models"]

    def path(self, key: str) -> Path:
        return self.dir / self.entries[key]["file"]

    def verify(self, key: str) -> bool:
        """True if the model's file exists with the recorded sha256; False if the file is missing
        (it will be redone); StorageError naming the file if it exists but does not match."""
        path = self.path(key)
        if not path.exists():
            return False
        if sha256_file(path) != self.entries[key]["sha256"]:
            raise StorageError(f"{path}: sha256 does not match the manifest (file modified or corrupted)")
        return True

    def check_complete(self) -> None:
        """For a finished store read by a later stage: every listed file is there and intact, and no
        model file lies in the directory that the manifest does not vouch for."""
        listed = {e["file"] for e in self.entries.values()}
        for path in sorted(self.dir.glob("*.safetensors")):
            if path.name not in listed:
                raise StorageError(f"{path}: not listed in {self.dir / MANIFEST}; remove it or rerun the stage "
                                   "that writes this directory")
        want = self.header.get("architecture")
        for key in self.entries:
            if not self.verify(key):
                raise StorageError(f"{self.path(key)}: listed in {self.dir / MANIFEST} but missing; rerun the "
                                   "stage that writes this directory (dvc repro)")
            if want is not None and (got := file_architecture(self.path(key))) != want:
                raise StorageError(f"{self.path(key)}: architecture {got} does not match the store's {want}")

    def finished(self, recipes: Mapping[str, str] | None = None) -> set[str]:
        """Keys whose file is intact. With ``recipes`` (key -> digest of everything that model
        depends on), only those whose entry was made from the same recipe: a model whose inputs
        or settings changed is not finished, it is made again (and replaces the entry)."""
        return {k for k in list(self.entries)
                if (recipes is None or self.entries[k].get("recipe") == recipes.get(k)) and self.verify(k)}

    def retain(self, keys: Iterable[str]) -> None:
        """Delete the models not in ``keys`` (an experiment that no longer has them), so the store
        holds exactly the current experiment's models and settings never mix."""
        keys = set(keys)
        gone = [k for k in self.entries if k not in keys]
        if gone:
            print(f"note: {self.dir}: deleting {len(gone)} models that the experiment as configured now does not "
                  "have (other jobs, settings, inputs or code)", file=sys.stderr)
            for k in gone:
                (self.dir / self.entries.pop(k)["file"]).unlink(missing_ok=True)
            self._write()

    def add(self, key: str, filename: str, params: Mapping[str, Tensor], info: Mapping) -> dict:
        sha = save_weights(self.dir / filename, params, {"key": key})
        entry = {**info, "file": filename, "sha256": sha}
        self.entries[key] = entry
        self._write()
        return entry

    def load(self, key: str) -> dict[str, Tensor]:
        if key not in self.entries:
            raise StorageError(f"{self.dir / MANIFEST}: no model {key!r}")
        params = load_weights(self.path(key), self.entries[key]["sha256"])
        want = self.header.get("architecture")
        if want is not None:
            try:
                got = architecture_of(params)
            except ValueError:
                got = None
            if got != want:
                raise StorageError(f"{self.path(key)}: architecture {got} does not match the store's {want}")
        return params


def digest(obj) -> str:
    """sha256 of a JSON-serializable value in canonical form (sorted keys)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True).encode())


def _canon(value):
    return json.loads(json.dumps(value, sort_keys=True))


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."

