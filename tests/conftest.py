"""Shared fixtures: small real data and a few trained models (session-scoped, seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from audit.data import load_dataset
from audit.zoo import TrainConfig, train_batched

REPO = Path(__file__).resolve().parents[1]
# The real MNIST test set (10,000 images) lives beside the repository on development and CI
# machines; elsewhere the tests fall back to scikit-learn's bundled digits.
MNIST_T10K = Path(os.environ.get("AUDIT_MNIST_T10K", REPO.parent / "shared" / "data" / "mnist-t10k"))


@pytest.fixture(scope="session")
def real_data():
    """MNIST t10k split 8000/2000 if available, else digits."""
    if (MNIST_T10K / "t10k-images-idx3-ubyte.gz").exists():
        return load_dataset("idx", path=MNIST_T10K, test_fraction=0.2)
    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_pair(real_data):
    """Two 2-hidden-layer MLPs trained on the real split from seeds 0 and 1."""
    torch.manual_seed(0)
    models = train_batched(real_data, (256, 256), TrainConfig(epochs=3, lr=1e-3, batch_size=128), [0, 1])
    return real_data, [m.params for m in models]


def pytest_collection_modifyitems(config, items):
    """tests/reliability runs whole stages as subprocesses: marked `pipeline`, outside `make test-fast`."""
    for item in items:
        if "reliability" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.pipeline)
