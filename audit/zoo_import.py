"""A zoo trained elsewhere: a directory of MLP checkpoints read as this pipeline's pools
(zoo.source: import).

Files are taken in name order as seeds 0, 1, ...; pool p holds seeds p*2^D .. (p+1)*2^D - 1, so
the directory must hold exactly zoo.pools * 2^zoo.depth checkpoints. Each is converted to this
project's MLP layout (hidden.<i>, head; the normalization zoo.input_norm states is added as the
model's fixed first layer, since a checkpoint does not say which it expects), its architecture is
inferred from the weight shapes and checked against zoo.arch and the data set, and it is stored
with its source file's sha256 ("imported_from" in the manifest). Torch files are read with
``torch.load(weights_only=True)`` only: a file that needs more than tensors (a pickled class,
code) is refused by name and nothing in it runs.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from . import __version__
from .config import UserError, ZooParams
from .data import Dataset
from .imports import code_digest
from .models import MLP, resolve_widths
from .storage import ModelStore, sha256_file
from .zoo import evaluate_params, model_filename

SUFFIXES = {"safetensors": (".safetensors",), "torch": (".pt", ".pth", ".bin")}
# The layouts recognised without a key map: nn.Sequential(Linear, ReLU, ..., Linear) numbers its
# Linear layers 0, 2, 4, ...; the reference PyTorch port of Git Re-Basin names them layer0, layer1, ...
_LAYOUTS = (re.compile(r"^(\d+)\.(weight|bias)$"), re.compile(r"^layer(\d+)\.(weight|bias)$"),
            re.compile(r"^(?:model\.)?(?:fc|linear)(\d+)\.(weight|bias)$"))
_PROJECT = re.compile(r"^(hidden\.\d+|head)\.(weight|bias)$")


class ImportError_(UserError, ValueError):
    """A checkpoint that cannot be imported: one line naming the file and what is wrong."""


def checkpoint_files(directory: Path, fmt: str) -> list[Path]:
    if not directory.is_dir():
        raise ImportError_(f"zoo.import.path: {directory} is not a directory")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in SUFFIXES[fmt])
    if not files:
        raise ImportError_(f"{directory}: no {fmt} checkpoints (*{', *'.join(SUFFIXES[fmt])})")
    return files


def read_checkpoint(path: Path, fmt: str) -> dict[str, Tensor]:
    """The file's tensors by key. Never unpickles anything but tensors."""
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError) as e:
            raise ImportError_(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImportError_(f"{path}: refused: it needs more than tensors to load, and only "
                           f"torch.load(weights_only=True) is used ({first[:160]})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ImportError_(f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0][:160]})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # the common {"state_dict": ..., "epoch": ...} wrapper
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ImportError_(f"{path}: expected a mapping of parameter names to tensors, got {type(obj).__name__}")
    return {str(k): v for k, v in obj.items()}


def to_project_layout(tensors: Mapping[str, Tensor], key_map: Mapping[str, str], path: Path) -> dict[str, Tensor]:
    """The weights under this project's keys (hidden.<i>.weight|bias, head.weight|bias)."""
    if key_map:
        unknown = sorted(set(tensors) - set(key_map) - {k for k in tensors if k.startswith("norm.")})
        if unknown:
            raise ImportError_(f"{path}: key {unknown[0]!r} is not in zoo.import.key_map")
        out = {key_map[k]: v for k, v in tensors.items() if k in key_map}
        bad = sorted(k for k in out if not _PROJECT.match(k))
        if bad:
            raise ImportError_(f"zoo.import.key_map: target {bad[0]!r} is not hidden.<i>.weight|bias or head.weight|bias")
        return out
    if all(_PROJECT.match(k) or k.startswith("norm.") for k in tensors):
        return {k: v for k, v in tensors.items() if _PROJECT.match(k)}  # this project's own files
    for layout in _LAYOUTS:
        matched = {k: layout.match(k) for k in tensors}
        if all(matched.values()):
            layers = sorted({int(m.group(1)) for m in matched.values()})
            names = {i: (f"hidden.{n}" if n < len(layers) - 1 else "head") for n, i in enumerate(layers)}
            return {f"{names[int(m.group(1))]}.{m.group(2)}": tensors[k] for k, m in matched.items()}
    shown = ", ".join(sorted(tensors)[:4])
    raise ImportError_(f"{path}: unrecognised layout (keys {shown}...): neither nn.Sequential (0.weight, 2.weight, ...) "
                       "nor layer<i>.weight; give zoo.import.key_map")


def convert(path: Path, z: ZooParams, data: Dataset) -> dict[str, Tensor]:
    """One checkpoint as this project's MLP weights, checked against zoo.arch and the data set."""
    weights = to_project_layout(read_checkpoint(path, z.import_.format), z.import_.key_map, path)
    hidden = sorted(int(k.split(".")[1]) for k in weights if k.startswith("hidden.") and k.endswith(".weight"))
    if "head.weight" not in weights or hidden != list(range(len(hidden))):
        raise ImportError_(f"{path}: not an MLP of Linear layers (layers found: {sorted(weights)})")
    for name in [f"hidden.{i}" for i in hidden] + ["head"]:
        if f"{name}.bias" not in weights:
            raise ImportError_(f"{path}: layer {name} has no bias")
        w = weights[f"{name}.weight"]
        if w.ndim != 2 or weights[f"{name}.bias"].shape != (w.shape[0],):
            raise ImportError_(f"{path}: layer {name}: weight {tuple(w.shape)} and bias "
                               f"{tuple(weights[f'{name}.bias'].shape)} do not form a Linear layer")
    widths = [int(weights[f"hidden.{i}.weight"].shape[0]) for i in hidden]
    dims = [int(weights["hidden.0.weight"].shape[1] if hidden else weights["head.weight"].shape[1])] + widths
    for i, (a, name) in enumerate(zip(dims, [f"hidden.{i}" for i in hidden] + ["head"])):
        if int(weights[f"{name}.weight"].shape[1]) != a:
            raise ImportError_(f"{path}: layer {name} takes {weights[f'{name}.weight'].shape[1]} inputs, "
                               f"the layer before gives {a}")
    want = list(resolve_widths(z.arch))
    if widths != want:
        raise ImportError_(f"{path}: hidden widths {widths} differ from zoo.arch {z.arch} ({want})")
    if dims[0] != data.in_features:
        raise ImportError_(f"{path}: input size {dims[0]}, but the data set {data.name} has {data.in_features} "
                           "input features")
    n_classes = int(weights["head.weight"].shape[0])
    if n_classes != data.n_classes:
        raise ImportError_(f"{path}: {n_classes} outputs, but the data set {data.name} has {data.n_classes} classes")
    model = MLP(data.in_features, widths, data.n_classes, data.mean, data.std)  # the stated normalization
    state = model.state_dict()
    for k, v in weights.items():
        state[k] = v.detach().to(torch.float32).contiguous().clone()
    return state


def import_header(data: Dataset, z: ZooParams, files: list[Path], root: Path) -> dict:
    """What every imported model of the store shares, the source files' sha256 included: a changed
    file re-imports the zoo."""
    return {
        "dataset": data.summary(),
        "architecture": {"in_features": data.in_features, "widths": list(resolve_widths(z.arch)),
                         "n_classes": data.n_classes},
        "source": {"import": str(Path(z.import_.path)), "format": z.import_.format, "key_map": dict(z.import_.key_map),
                   "files": {f.name: sha256_file(f) for f in files}},
        "code": code_digest("audit.zoo_import"),
        "versions": {"audit": __version__, "torch": torch.__version__},
    }


def import_zoo(z: ZooParams, data: Dataset, root: Path, pool_dir) -> dict[int, ModelStore]:
    """Every pool's store (``pool_dir(root, p)``), made from zoo.import's checkpoints."""
    directory = Path(z.import_.path)
    directory = directory if directory.is_absolute() else root / directory
    files = checkpoint_files(directory, z.import_.format)
    need = z.pools * z.pool_size
    if len(files) != need:
        raise ImportError_(f"{directory}: {len(files)} checkpoints, but zoo.pools {z.pools} x 2^zoo.depth "
                           f"{z.pool_size} = {need} are needed (one per base model)")
    converted = [convert(f, z, data) for f in files]  # every file checked before anything is written
    header = import_header(data, z, files, root)
    stores = {}
    for p in range(z.pools):
        store = ModelStore(pool_dir(root, p), header, informational=("versions",), reset=True)
        done = store.finished()
        for seed in z.pool_seeds(p):
            if str(seed) in done:
                continue
            weights, f = converted[seed], files[seed]
            metrics = {}
            for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
                metrics[f"{split}_accuracy"], metrics[f"{split}_loss"] = evaluate_params(weights, x, y)
            store.add(str(seed), model_filename(seed), weights,
                      {"seed": seed, "metrics": metrics, "engine": "import", "device": "cpu",
                       "imported_from": str(f), "source_sha256": header["source"]["files"][f.name]})
        store.retain(str(s) for s in z.pool_seeds(p))
        stores[p] = store
    return stores
