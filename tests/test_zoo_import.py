"""Importing a zoo trained elsewhere: both common layouts, the key map, a malicious pickle refused
without running, a wrong architecture or input size refused by name."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from audit.config import params_from_dict
from audit.data import from_arrays
from audit.models import MLP
from audit.zoo_import import ImportError_, convert, import_zoo, read_checkpoint

WIDTHS = [16, 8]


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 3, 4, generator=g).numpy()  # (N, C, H, W): 12 input features
    y = (torch.arange(60) % 3).numpy()
    return from_arrays("toy", x[:40], y[:40], x[40:], y[40:])


def sequential(seed: int, in_features=12, widths=WIDTHS, classes=3) -> nn.Sequential:
    torch.manual_seed(seed)
    dims = [in_features, *widths]
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], classes))


def zoo(**over):
    raw = {"arch": WIDTHS, "depth": 1, "pools": 1, "regularized": {}, "source": "import",
           "import": {"path": "ckpt", "format": "safetensors"}}
    raw.update(over)
    return params_from_dict({"zoo": raw, "merge": {"side_ablation": []}}).zoo


def port_layout(seq: nn.Sequential) -> dict:
    """The reference PyTorch port's keys: layer0, layer1, ... for the Linear layers in order."""
    linears = [m for m in seq if isinstance(m, nn.Linear)]
    return {f"layer{i}.{n}": getattr(m, n).detach().clone() for i, m in enumerate(linears) for n in ("weight", "bias")}


def test_both_layouts_import_to_the_same_function(tmp_path, data):
    seq = sequential(1)
    save_file({k: v.contiguous() for k, v in seq.state_dict().items()}, tmp_path / "a.safetensors")
    torch.save(port_layout(seq), tmp_path / "b.pt")
    one = convert(tmp_path / "a.safetensors", zoo(), data)
    two = convert(tmp_path / "b.pt", zoo(**{"import": {"path": "x", "format": "torch"}}), data)
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    model = MLP.from_state_dict(one)
    x = data.x_test
    # the imported model = the checkpoint applied to inputs normalized as zoo.input_norm states
    want = seq((x.flatten(1) - torch.tensor(data.mean)) / torch.tensor(data.std))
    torch.testing.assert_close(model(x), want, rtol=0, atol=1e-6)
    # a key map for any other naming
    names = {"0.weight": "fc_in.w", "0.bias": "fc_in.b", "2.weight": "mid.w", "2.bias": "mid.b",
             "4.weight": "out.w", "4.bias": "out.b"}
    save_file({names[k]: v.contiguous() for k, v in seq.state_dict().items()}, tmp_path / "c.safetensors")
    key_map = {"fc_in.w": "hidden.0.weight", "fc_in.b": "hidden.0.bias", "mid.w": "hidden.1.weight",
               "mid.b": "hidden.1.bias", "out.w": "head.weight", "out.b": "head.bias"}
    three = convert(tmp_path / "c.safetensors", zoo(**{"import": {"path": "x", "key_map": key_map}}), data)
    assert all(torch.equal(one[k], three[k]) for k in one)
    with pytest.raises(ImportError_, match="c.safetensors: unrecognised layout"):
        convert(tmp_path / "c.safetensors", zoo(), data)


class Payload:
    """Unpickling this runs os.system (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"0.weight": Payload(marker)}, f, protocol=2)  # torch.load's own protocol: no version warning
    with pytest.raises(ImportError_) as e:
        read_checkpoint(path, "torch")
    assert str(e.value).startswith(f"{path}: refused: it needs more than tensors") and "\n" not in str(e.value)
    assert not marker.exists()
    torch.save({"0.weight": torch.zeros(2, 2), "meta": Payload(marker)}, tmp_path / "evil2.pt")
    with pytest.raises(ImportError_, match="evil2.pt: refused"):
        read_checkpoint(tmp_path / "evil2.pt", "torch")
    assert not marker.exists()


def test_a_wrong_architecture_or_input_size_is_refused_by_name(tmp_path, data):
    save_file({k: v.contiguous() for k, v in sequential(0, widths=[16, 9]).state_dict().items()},
              tmp_path / "wide.safetensors")
    with pytest.raises(ImportError_, match=r"wide.safetensors: hidden widths \[16, 9\] differ from zoo.arch"):
        convert(tmp_path / "wide.safetensors", zoo(), data)
    save_file({k: v.contiguous() for k, v in sequential(0, in_features=20).state_dict().items()},
              tmp_path / "input.safetensors")
    with pytest.raises(ImportError_, match="input.safetensors: input size 20, but the data set toy has 12"):
        convert(tmp_path / "input.safetensors", zoo(), data)
    save_file({k: v.contiguous() for k, v in sequential(0, classes=5).state_dict().items()},
              tmp_path / "classes.safetensors")
    with pytest.raises(ImportError_, match="classes.safetensors: 5 outputs, but the data set toy has 3 classes"):
        convert(tmp_path / "classes.safetensors", zoo(), data)


def test_the_directory_becomes_the_pools_with_provenance(tmp_path, data):
    from audit.paths import pool_dir

    (tmp_path / "ckpt").mkdir()
    for i in range(2):
        save_file({k: v.contiguous() for k, v in sequential(i).state_dict().items()},
                  tmp_path / "ckpt" / f"m{i}.safetensors")
    stores = import_zoo(zoo(), data, tmp_path, pool_dir)
    entries = stores[0].entries
    assert sorted(entries) == ["0", "1"] and entries["1"]["imported_from"].endswith("m1.safetensors")
    assert len(entries["0"]["source_sha256"]) == 64 and 0 <= entries["0"]["metrics"]["test_accuracy"] <= 1
    save_file({k: v.contiguous() for k, v in sequential(2).state_dict().items()}, tmp_path / "ckpt" / "m2.safetensors")
    with pytest.raises(ImportError_, match=r"3 checkpoints, but zoo.pools 1 x 2\^zoo.depth 2 = 2 are needed"):
        import_zoo(zoo(), data, tmp_path, pool_dir)


def test_import_params_are_checked():
    with pytest.raises(Exception, match="zoo.import.path: required when source is import"):
        params_from_dict({"zoo": {"source": "import", "regularized": {}}})
    with pytest.raises(Exception, match="zoo.regularized: must be {} when source is import"):
        params_from_dict({"zoo": {"source": "import", "import": {"path": "x"}}})
    with pytest.raises(Exception, match="zoo.import.format: unknown value 'pickle'"):
        params_from_dict({"zoo": {"import": {"format": "pickle"}}})
