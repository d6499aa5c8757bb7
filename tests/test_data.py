"""Data loaders, on small files generated in each data set's standard on-disk layout."""

import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from audit.data import DataError, load_dataset, read_idx

from tests.conftest import MNIST_T10K


def write_idx(path, array: np.ndarray, compress=False):
    """IDX: 2 zero bytes, dtype code 0x08 (uint8), ndim, big-endian uint32 dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if compress else open)(path, "wb").write(data)


def fake_images(rng, n, shape):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_layouts(tmp_path, name, folder):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("t10k", 12)):
        x, y = fake_images(rng, n, (28, 28)), rng.integers(0, 10, n)
        write_idx(tmp_path / folder / "raw" / f"{split}-images-idx3-ubyte", x)
        write_idx(tmp_path / folder / "raw" / f"{split}-labels-idx1-ubyte", y)
        arrays[split] = (x, y)
    d = load_dataset(name, root=tmp_path)
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_test.shape == (12, 1, 28, 28)
    np.testing.assert_array_equal(d.x_train.numpy()[:, 0], arrays["train"][0] / np.float32(255))
    np.testing.assert_array_equal(d.y_test.numpy(), arrays["t10k"][1])
    assert d.y_train.dtype == torch.int64 and 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    mean = arrays["train"][0].mean() / 255
    assert d.mean[0] == pytest.approx(mean, rel=1e-5)


def write_cifar(root, folder, files, label_key, n_classes, rng):
    out = {}
    for fname, n in files:
        x = fake_images(rng, n, (3 * 32 * 32,))
        y = rng.integers(0, n_classes, n).tolist()
        (root / folder).mkdir(parents=True, exist_ok=True)
        with open(root / folder / fname, "wb") as f:
            pickle.dump({"data": x, label_key: y}, f)
        out[fname] = (x, y)
    return out


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def register_checksums(monkeypatch, cls, root):
    """Point torchvision's expected md5s at the generated files: its verification still runs."""
    folder = root / cls.base_folder
    monkeypatch.setattr(cls, "train_list", [[f, md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5(folder / f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})


def test_cifar10_layout_and_checksums(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    files = [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 5)]
    arrays = write_cifar(tmp_path, "cifar-10-batches-py", files, "labels", 10, rng)
    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    # With the official checksums our generated files are refused: downloads are verified.
    with pytest.raises(DataError, match="cifar10 not found or corrupted"):
        load_dataset("cifar10", root=tmp_path)
    register_checksums(monkeypatch, tvd.CIFAR10, tmp_path)
    d = load_dataset("cifar10", root=tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (5, 3, 32, 32)
    x0 = arrays["data_batch_1"][0][0].reshape(3, 32, 32) / np.float32(255)  # CHW as stored
    np.testing.assert_array_equal(d.x_train[0].numpy(), x0)
    assert d.y_test.tolist() == arrays["test_batch"][1]
    assert len(d.mean) == 3 and d.in_features == 3072


def test_cifar100_layout(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    write_cifar(tmp_path, "cifar-100-python", [("train", 6), ("test", 3)], "fine_labels", 100, rng)
    with open(tmp_path / "cifar-100-python" / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [str(i) for i in range(100)]}, f)
    register_checksums(monkeypatch, tvd.CIFAR100, tmp_path)
    d = load_dataset("cifar100", root=tmp_path)
    assert d.x_train.shape == (6, 3, 32, 32) and d.y_train.max() < 100


def test_missing_dataset_offline_says_where_files_go(tmp_path):
    with pytest.raises(DataError, match=r"mnist not found or corrupted under .* \(expected MNIST/raw/.*download: true"):
        load_dataset("mnist", root=tmp_path, download=False)


def test_idx_ordered_and_seeded_splits(tmp_path):
    rng = np.random.default_rng(3)
    x, y = fake_images(rng, 50, (5, 5)), np.repeat(np.arange(5), 10)
    write_idx(tmp_path / "t-images-idx3-ubyte.gz", x, compress=True)
    write_idx(tmp_path / "t-labels-idx1-ubyte.gz", y, compress=True)
    ordered = load_dataset("idx", path=tmp_path, test_fraction=0.2)
    assert ordered.y_train.tolist() == y[:40].tolist() and ordered.y_test.tolist() == y[40:].tolist()
    s1 = load_dataset("idx", path=tmp_path, test_fraction=0.2, shuffle_split=True, seed=1)
    s1b = load_dataset("idx", path=tmp_path, test_fraction=0.2, shuffle_split=True, seed=1)
    s2 = load_dataset("idx", path=tmp_path, test_fraction=0.2, shuffle_split=True, seed=2)
    assert s1.fingerprint == s1b.fingerprint != s2.fingerprint != ordered.fingerprint
    assert np.bincount(s1.y_test.numpy()).tolist() == [2] * 5  # stratified


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "x-images-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="x-images-idx3-ubyte: not an IDX file"):
        read_idx(bad)
    write_idx(bad, np.zeros((4, 2, 2)))
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(DataError, match="promises 16 bytes of data, file has 13"):
        read_idx(bad)
    with pytest.raises(DataError, match="expected exactly one"):
        load_dataset("idx", path=tmp_path)


@pytest.mark.skipif(not (MNIST_T10K / "t10k-images-idx3-ubyte.gz").exists(), reason="MNIST t10k not present")
def test_real_mnist_t10k_split():
    d = load_dataset("idx", path=MNIST_T10K, test_fraction=0.2)
    assert (len(d.y_train), len(d.y_test)) == (8000, 2000)
    assert d.mean[0] == pytest.approx(0.1301, abs=1e-3)  # MNIST pixel mean is ~0.13


def test_digits_is_embedded_stratified_and_seeded():
    d = load_dataset("digits")
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.y_train) + len(d.y_test) == 1797
    assert d.n_classes == 10 and float(d.x_train.max()) == 1.0
    assert load_dataset("digits", seed=0).fingerprint == d.fingerprint != load_dataset("digits", seed=1).fingerprint
    with pytest.raises(DataError, match="unknown data set 'svhn'"):
        load_dataset("svhn")
