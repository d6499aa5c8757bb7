import json

import pytest
import torch
import torch.nn.functional as F

import audit.zoo as zoo
from audit.data import from_arrays, load_dataset
from audit.storage import ModelStore, StorageError, load_weights, save_weights, sha256_file
from audit.zoo import TrainConfig, _DataStream, init_params, train_batched, train_loop, train_zoo

WIDTHS = (32, 16)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def params_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_is_bit_identical_and_seeds_differ(digits):
    cfg = TrainConfig(epochs=2)
    a, b = train_loop(digits, WIDTHS, cfg, 7), train_loop(digits, WIDTHS, cfg, 7)
    assert params_equal(a.params, b.params) and a.metrics == b.metrics
    c = train_loop(digits, WIDTHS, cfg, 8)
    assert not torch.equal(a.params["hidden.0.weight"], c.params["hidden.0.weight"])
    assert params_equal(init_params(64, WIDTHS, 10, 7), init_params(64, WIDTHS, 10, 7))
    assert not torch.equal(init_params(64, WIDTHS, 10, 7)["head.bias"], init_params(64, WIDTHS, 10, 8)["head.bias"])


def test_init_matches_pytorch_default_ranges():
    p = init_params(100, (50,), 10, 0)
    bound = 1 / 100 ** 0.5
    w = p["hidden.0.weight"]
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound  # U(-1/sqrt(fan_in), +)
    assert abs(float(w.mean())) < 0.01


@pytest.mark.parametrize("cfg", [TrainConfig(epochs=1), TrainConfig(epochs=1, optimizer="sgd", lr=0.05, schedule="cosine",
                                                                     weight_decay=1e-4, l1=1e-5, l2=1e-4)])
def test_batched_agrees_with_the_loop(digits, cfg):
    seeds = [3, 4, 5]
    loop = [train_loop(digits, WIDTHS, cfg, s) for s in seeds]
    batched = train_batched(digits, WIDTHS, cfg, seeds)
    for lm, bm in zip(loop, batched):
        assert lm.seed == bm.seed
        for k in lm.params:  # ~11 optimizer steps: equal up to float rounding
            torch.testing.assert_close(bm.params[k], lm.params[k], rtol=1e-4, atol=1e-5)
        assert bm.metrics["test_accuracy"] == pytest.approx(lm.metrics["test_accuracy"], abs=0.01)


def test_batched_agrees_with_the_loop_under_augmentation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 8, 8, generator=g).numpy()
    y = torch.randint(0, 4, (40,), generator=g).numpy()
    data = from_arrays("synthetic", x[:32], y[:32], x[32:], y[32:])
    cfg = TrainConfig(epochs=2, batch_size=8, augment=True)
    lm = train_loop(data, (16,), cfg, 1)
    bm = train_batched(data, (16,), cfg, [1, 2])[0]
    for k in lm.params:
        torch.testing.assert_close(bm.params[k], lm.params[k], rtol=1e-4, atol=1e-5)
    assert not params_equal(lm.params, train_loop(data, (16,), TrainConfig(epochs=2, batch_size=8), 1).params)


def test_augmentation_is_a_padded_crop_and_flip():
    x = torch.rand(6, 3, 5, 7)
    out = _DataStream(9, 6, 6, augment=True).augment(x)
    g = torch.Generator().manual_seed(zoo.stream_seed(9, "augment"))  # replay the same draws
    shifts = torch.randint(0, 9, (6, 2), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(6):
        dy, dx = shifts[i].tolist()
        want = padded[i, :, dy:dy + 5, dx:dx + 7]
        assert torch.equal(out[i], want.flip(-1) if flips[i] else want)


def test_regularization_shrinks_the_weights(digits):
    def norm(cfg):
        p = train_loop(digits, WIDTHS, cfg, 0).params
        return sum(float(p[k].abs().sum()) for k in p if k.startswith(("hidden", "head")))

    base = norm(TrainConfig(epochs=3))
    assert norm(TrainConfig(epochs=3, l1=1e-3)) < 0.9 * base
    assert norm(TrainConfig(epochs=3, l2=1e-2)) < 0.9 * base


def test_config_validation():
    with pytest.raises(ValueError, match="optimizer: unknown value"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match="l2: must be >= 0"):
        TrainConfig(l2=-1)
    with pytest.raises(ValueError, match="device must be one of"):
        zoo.resolve_device("tpu")


def test_storage_round_trip_and_corruption(tmp_path):
    p = init_params(20, (8,), 3, 0)
    sha = save_weights(tmp_path / "m.safetensors", p, {"seed": "0"})
    assert sha == sha256_file(tmp_path / "m.safetensors")
    assert params_equal(load_weights(tmp_path / "m.safetensors", sha), p)
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed into place
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(StorageError, match="m.safetensors: not a readable safetensors file"):
        load_weights(tmp_path / "m.safetensors")
    with pytest.raises(StorageError, match="m.safetensors: sha256 does not match"):
        load_weights(tmp_path / "m.safetensors", sha)


def test_zoo_resume_trains_exactly_the_missing_model(tmp_path, digits, monkeypatch):
    cfg = TrainConfig(epochs=2)
    store = train_zoo(tmp_path / "zoo", digits, WIDTHS, cfg, [0, 1, 2], progress=False)
    manifest = json.loads((tmp_path / "zoo" / "manifest.json").read_text())
    assert sorted(manifest["models"]) == ["0", "1", "2"]
    assert manifest["zoo"]["dataset"]["fingerprint"] == digits.fingerprint
    assert manifest["zoo"]["architecture"]["widths"] == list(WIDTHS)
    assert set(manifest["models"]["1"]["metrics"]) == {"train_accuracy", "train_loss", "test_accuracy", "test_loss"}
    sha1 = manifest["models"]["1"]["sha256"]
    store.path("1").unlink()

    trained = []
    real = zoo.train_loop
    monkeypatch.setattr(zoo, "train_loop", lambda *a, **k: trained.append(a[3]) or real(*a, **k))
    store = train_zoo(tmp_path / "zoo", digits, WIDTHS, cfg, [0, 1, 2, 3], progress=False)
    assert trained == [1, 3]  # the deleted model and the new seed, nothing else
    assert store.entries["1"]["sha256"] == sha1  # retrained bit for bit


def test_zoo_refuses_tampered_files_and_other_settings(tmp_path, digits):
    cfg = TrainConfig(epochs=1)
    store = train_zoo(tmp_path / "zoo", digits, WIDTHS, cfg, [0, 1], progress=False)
    with pytest.raises(StorageError, match="existing models were made with a different 'train'"):
        train_zoo(tmp_path / "zoo", digits, WIDTHS, TrainConfig(epochs=2), [0, 1], progress=False)
    data = bytearray(store.path("0").read_bytes())
    data[-1] ^= 1
    store.path("0").write_bytes(bytes(data))
    with pytest.raises(StorageError, match="model-000000.safetensors: sha256 does not match the manifest"):
        train_zoo(tmp_path / "zoo", digits, WIDTHS, cfg, [0, 1], progress=False)
    with pytest.raises(StorageError, match="model-000000.safetensors: sha256"):
        ModelStore(tmp_path / "zoo", store.header).load("0")


def test_presets_are_accepted_by_every_engine(digits):
    cfg = TrainConfig(epochs=1)
    loop = train_loop(digits, "rebasin", cfg, 0)
    batched = train_batched(digits, "rebasin", cfg, [0])[0]
    assert [loop.params[f"hidden.{i}.weight"].shape[0] for i in range(3)] == [512, 512, 512]
    torch.testing.assert_close(batched.params["head.weight"], loop.params["head.weight"], rtol=1e-4, atol=1e-5)
