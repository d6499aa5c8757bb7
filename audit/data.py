"""Data sets as tensors: pixels in [0, 1] with shape (N, C, H, W), int64 labels.

`load_dataset` is the one entry point. Every data set comes back with the per-channel mean/std of
its train split (the models normalize internally with them) and a sha256 fingerprint of the arrays
that is recorded with every model trained on it.

Safety: CIFAR's python batches are pickles. torchvision verifies each file against the official
md5 before unpickling it, so only the published files are ever unpickled; we never bypass that
check. MNIST-style and `idx` data are raw IDX arrays (no pickle).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import DATASETS, UserError  # noqa: F401 (DATASETS re-exported)


class DataError(UserError, ValueError):
    """A data set cannot be loaded as configured (missing files, bad layout, bad option)."""


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: Tensor  # float32 (N, C, H, W) in [0, 1]
    y_train: Tensor  # int64 (N,)
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    mean: tuple[float, ...]  # per channel, train split, pixel units
    std: tuple[float, ...]
    fingerprint: str  # sha256 over the four arrays (shape, dtype and bytes)

    @property
    def in_features(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def summary(self) -> dict:
        return {"name": self.name, "n_train": len(self.y_train), "n_test": len(self.y_test),
                "image_shape": list(self.image_shape), "n_classes": self.n_classes,
                "mean": list(self.mean), "std": list(self.std), "fingerprint": self.fingerprint}


def load_dataset(name: str, *, root: str | Path = "data", download: bool = False, seed: int = 0,
                 test_fraction: float = 0.2, shuffle_split: bool = False, path: str | Path | None = None) -> Dataset:
    """Load a data set by name.

    digits: scikit-learn's bundled 8x8 digits (1797 images, no download); stratified split with
        ``test_fraction`` drawn from ``seed``.
    mnist, fashion-mnist, cifar10, cifar100: torchvision's official train/test splits under
        ``root`` (downloaded only if ``download``).
    idx: an IDX image file and label file (optionally .gz) in the directory ``path``; the last
        ``test_fraction`` of the file is the test split, or a stratified seeded split if
        ``shuffle_split``. The MNIST t10k set with test_fraction 0.2 gives 8000 train / 2000 test.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.images.astype(np.float32)[:, None] / 16.0  # digits pixels are integers 0..16
        xtr, ytr, xte, yte = _split(x, d.target, test_fraction, seed, shuffle=True)
    elif name == "idx":
        if path is None:
            raise DataError("data set 'idx' needs a path to a directory with an IDX image and label file")
        x, y = _load_idx_dir(Path(path))
        xtr, ytr, xte, yte = _split(x, y, test_fraction, seed, shuffle=shuffle_split)
    else:
        xtr, ytr, xte, yte = _load_torchvision(name, Path(root), download)
    return from_arrays(name, xtr, ytr, xte, yte)


def from_arrays(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> Dataset:
    """A `Dataset` from float arrays (N, C, H, W) in [0, 1] and integer labels: statistics and
    fingerprint computed as for the built-in sets."""
    arrays = [np.ascontiguousarray(a) for a in (xtr, ytr.astype(np.int64), xte, yte.astype(np.int64))]
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in arrays)
    mean = xtr.mean(dim=(0, 2, 3)).tolist()
    std = xtr.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()  # floor: a constant channel must not divide by 0
    n_classes = int(max(ytr.max(), yte.max())) + 1
    return Dataset(name, xtr, ytr, xte, yte, n_classes, tuple(mean), tuple(std), h.hexdigest())


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, shuffle: bool):
    if not shuffle:
        n_test = int(round(len(y) * test_fraction))
        cut = len(y) - n_test
        return x[:cut], y[:cut], x[cut:], y[cut:]
    from sklearn.model_selection import train_test_split

    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


# --- IDX (the MNIST file format). A 20-line reader instead of torchvision's, which takes neither
# .gz files nor arbitrary paths.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise DataError(f"{path}: IDX header promises {expected} bytes of data, file has {len(body)}")
    return np.frombuffer(body, dtype).reshape(dims)


def _load_idx_dir(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_dir():
        raise DataError(f"idx data path {path} is not a directory")
    images = sorted(path.glob("*images-idx3-ubyte*"))
    labels = sorted(path.glob("*labels-idx1-ubyte*"))
    if len(images) != 1 or len(labels) != 1:
        raise DataError(f"{path}: expected exactly one *images-idx3-ubyte[.gz] and one *labels-idx1-ubyte[.gz] "
                        f"file, found {len(images)} and {len(labels)}")
    x, y = read_idx(images[0]), read_idx(labels[0])
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{path}: images {x.shape} and labels {y.shape} do not pair up")
    return x.astype(np.float32)[:, None] / 255.0, y.astype(np.int64)


# --- torchvision-backed sets: (class name, layout hint for the error message)
_TV = {
    "mnist": ("MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"),
    "cifar100": ("CIFAR100", "cifar-100-python/{train,test,meta}"),
}


def _load_torchvision(name: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    cls_name, layout = _TV[name]
    cls = getattr(tvd, cls_name)
    out = []
    for train in (True, False):
        try:
            ds = cls(root=str(root), train=train, download=download)
        except RuntimeError as e:
            hint = "" if download else " or set data.download: true where there is internet"
            raise DataError(f"{name} not found or corrupted under {root}/ (expected {layout}){hint}: {e}") from None
        except OSError as e:  # network failures during download
            raise DataError(f"{name}: download into {root}/ failed ({e})") from None
        x = np.asarray(ds.data)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # MNIST (N,H,W); CIFAR (N,H,W,C)
        out += [x.astype(np.float32) / 255.0, np.asarray(ds.targets, dtype=np.int64)]
    return out


def load_from_params(params, root: Path) -> "Dataset":
    """The data set ``params.data`` (an `audit.config.Params`) names, paths relative to ``root``."""
    p = params.data
    path = None if p.path is None else (root / p.path if not Path(p.path).is_absolute() else Path(p.path))
    return load_dataset(p.name, root=root / p.root, download=p.download, seed=p.seed,
                        test_fraction=p.test_fraction, path=path)
