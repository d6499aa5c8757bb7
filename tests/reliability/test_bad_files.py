"""Bad files: truncated or tampered model files, manifests that do not match the files, a model of
another architecture, empty or missing results tables. Each is one line naming the file."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from audit.cli import main
from audit.merge import hierarchical_merge
from audit.rebasin import mlp_permutation_spec
from audit.storage import ModelStore, StorageError, load_weights, save_weights
from audit.zoo import init_params
from tests.reliability.project import make_project, run_here, run_pipeline, run_stage

POOL = "models/zoo/pool-0"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project after data, train and merge (naive), kept pristine; tests work on copies."""
    root = make_project(tmp_path_factory.mktemp("trained"), {"merge": {"methods": ["naive"]}})
    run_pipeline(root, methods=["naive"], until="merge", here=True)
    return root


@pytest.fixture
def copy(trained, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(trained, dst)
    return dst


def one_line_error(out, must_hold: str):
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and must_hold in lines[0], out.stderr
    return lines[0]


def test_truncated_model_file_is_named(copy):
    path = copy / POOL / "model-000001.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    line = one_line_error(run_stage(copy, "evaluate", check=False), str(path))
    assert "sha256 does not match" in line
    with pytest.raises(StorageError, match="not a readable safetensors file"):
        load_weights(path)  # without a recorded sha256, the format check still names it


def test_tampered_model_file_is_named(copy):
    path = copy / POOL / "model-000002.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one weight byte: still a valid safetensors file, different numbers
    path.write_bytes(bytes(data))
    assert load_weights(path)  # readable...
    line = one_line_error(run_here(copy, "evaluate"), str(path))
    assert "sha256 does not match the manifest" in line  # ...but not what the manifest vouches for


def test_manifest_listing_a_missing_file_is_named(copy):
    path = copy / POOL / "model-000003.safetensors"
    path.unlink()
    one_line_error(run_here(copy, "evaluate"), f"{path}: listed in")


def test_model_file_not_in_the_manifest_is_named(copy):
    stray = copy / POOL / "model-000099.safetensors"
    shutil.copy(copy / POOL / "model-000000.safetensors", stray)
    one_line_error(run_here(copy, "merge", "--method", "naive"), f"{stray}: not listed in")


def test_unreadable_manifest_is_named(copy):
    manifest = copy / POOL / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    one_line_error(run_here(copy, "evaluate"), f"{manifest}: unreadable manifest")


def test_model_of_another_architecture_in_a_zoo_is_named(copy):
    """A foreign model put in place with its manifest entry updated: the architecture check names it."""
    path = copy / POOL / "model-000001.safetensors"
    foreign = init_params(64, (16,), 10, seed=1)
    sha = save_weights(path, foreign)
    manifest = json.loads((copy / POOL / "manifest.json").read_text())
    manifest["models"]["1"]["sha256"] = sha
    (copy / POOL / "manifest.json").write_text(json.dumps(manifest))
    merged = sorted((copy / "models/merged/naive").iterdir())
    for args in (("evaluate",), ("merge", "--method", "naive")):
        one_line_error(run_here(copy, *args), f"{path}: architecture {{'in_features': 64, 'widths': [16]")
    assert sorted((copy / "models/merged/naive").iterdir()) == merged  # refused before anything was touched
    store = ModelStore(copy / POOL, manifest["zoo"])
    with pytest.raises(StorageError, match="model-000001.safetensors: architecture"):
        store.load("1")


def test_merging_two_architectures_names_both():
    a, b = init_params(64, (32,), 10, seed=0), init_params(64, (16,), 10, seed=1)
    with pytest.raises(ValueError, match=r"models s0 and s1 differ in architecture: .*\(10, 32\) vs \(10, 16\)"):
        hierarchical_merge([a, b], mlp_permutation_spec(a), seed=0, names=["s0", "s1"])


def test_zoo_directory_of_other_settings_is_refused_not_mixed(tmp_path):
    store = ModelStore(tmp_path / "zoo", {"architecture": {"widths": [32]}})
    store.add("0", "m0.safetensors", init_params(64, (32,), 10, seed=0), {})
    with pytest.raises(StorageError, match=r"manifest.json: existing models were made with a different 'architecture'"):
        ModelStore(tmp_path / "zoo", {"architecture": {"widths": [64]}})
    assert (tmp_path / "zoo" / "m0.safetensors").exists()  # refused, nothing deleted


@pytest.mark.parametrize("content", ["", "model,metric\n"])
def test_empty_results_table_is_named(tmp_path, content):
    root = make_project(tmp_path / "p")
    table = root / "results" / "evaluation.csv"
    table.parent.mkdir(parents=True)
    table.write_text(content)
    for command in (["compare", "--baseline", "mergemany"], ["claims"], ["report"]):
        res = CliRunner().invoke(main, [*command, "--params", str(root / "params.yaml")])
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and str(table) in lines[0], res.output
    one_line_error(run_here(root, "claims"), str(table))


def test_missing_results_table_is_named(tmp_path):
    root = make_project(tmp_path / "p")
    res = CliRunner().invoke(main, ["claims", "--params", str(root / "params.yaml")])
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: {root / 'results/evaluation.csv'}: no evaluated results yet; run the pipeline first (make repro or dvc repro)"
    one_line_error(run_here(root, "report"), str(root / "results/evaluation.csv"))


def test_missing_earlier_stage_is_named(tmp_path):
    root = make_project(tmp_path / "p")
    one_line_error(run_here(root, "train"), str(root / "results/data.json"))
    run_here(root, "data")
    one_line_error(run_here(root, "merge", "--method", "naive"), str(root / POOL))


def test_torch_tensors_survive_a_store_round_trip_exactly(tmp_path):
    params = init_params(64, (32,), 10, seed=3)
    store = ModelStore(tmp_path / "s", {})
    store.add("3", "m.safetensors", params, {})
    back = ModelStore(tmp_path / "s", {}).load("3")
    assert all(torch.equal(params[k], back[k]) for k in params)
