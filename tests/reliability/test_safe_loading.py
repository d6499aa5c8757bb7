"""Safe loading: no code path unpickles a file it did not write. Model files are safetensors (no code
can hide in them); CIFAR's pickled batches are unpickled by torchvision only after their md5 matches
the published one. A malicious pickle is refused in both places and its payload never runs."""

import pickle
import re

import pytest
import torch

from audit.data import DataError, load_dataset
from audit.storage import ModelStore, StorageError, load_weights
from tests.conftest import REPO


class Payload:
    """Unpickling this runs ``open(marker, "w")``: the marker file proves the payload ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_posing_as_a_model_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model-000000.safetensors"
    evil.write_bytes(pickle.dumps({"hidden.0.weight": Payload(marker)}))
    with pytest.raises(StorageError, match=f"{evil}: not a readable safetensors file"):
        load_weights(evil)
    assert not marker.exists()


def test_a_torch_checkpoint_is_not_a_model_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "m.safetensors"
    torch.save({"w": torch.zeros(2), "x": Payload(marker)}, path)
    with pytest.raises(StorageError, match="not a readable safetensors file"):
        load_weights(path)
    assert not marker.exists()


def test_a_store_refuses_a_swapped_in_pickle_before_parsing_it(tmp_path):
    from audit.zoo import init_params

    store = ModelStore(tmp_path / "zoo", {})
    store.add("0", "m.safetensors", init_params(8, (4,), 2, seed=0), {})
    marker = tmp_path / "pwned"
    (tmp_path / "zoo" / "m.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(StorageError, match="sha256 does not match the manifest"):
        store.load("0")
    assert not marker.exists()


def test_a_malicious_cifar_batch_is_refused_by_its_checksum(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (folder / name).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(DataError, match="cifar10 not found or corrupted"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


def test_no_source_file_unpickles_or_torch_loads_without_weights_only():
    """The package and its stages read no pickle (torch.load only with weights_only=True)."""
    offenders = []
    for path in [*sorted((REPO / "audit").glob("*.py")), *sorted((REPO / "stages").glob("*.py"))]:
        text = path.read_text()
        for pattern in (r"pickle\.loads?\(", r"cloudpickle\.loads?\(", r"joblib\.load\(", r"np\.load\([^)]*allow_pickle=True",
                        r"pd\.read_pickle\("):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: {m.group(0)}")
    assert offenders == []
