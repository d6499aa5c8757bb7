"""Resource guard: before training, the stage says how much disk and time the experiment needs and
refuses one that does not fit; the numbers come from the params and a calibration on this machine."""

import math
from collections import namedtuple

import pytest
from click.testing import CliRunner

from audit.cli import main
from audit.config import load_params
from audit.ablation import merge_jobs
from audit.resources import GIB, Shape, estimate, model_counts, parameter_count
from tests.conftest import REPO
from tests.reliability.project import make_project, run_here, run_stage


def test_counts_and_bytes_match_what_the_pipeline_writes(tmp_path):
    root = make_project(tmp_path / "p", {"merge": {"methods": ["naive"]}})
    run_here(root, "data", check=True)
    run_here(root, "train", check=True)
    params = load_params(root / "params.yaml")
    counts = model_counts(params)
    assert counts == {"base": 4, "regularized": 0, "merged": len(merge_jobs(params, "naive"))}
    shape = Shape(64, 10, 1437, 100)
    file = root / "models/zoo/pool-0/model-000000.safetensors"
    # float32 weights and biases plus the normalization's mean and std; the header is the rest.
    assert parameter_count(shape, (32,)) == 64 * 32 + 32 + 32 * 10 + 10 + 2 * 64
    est = estimate(params, shape)
    assert 0 < est.bytes_per_model - file.stat().st_size <= 4096
    assert est.disk_bytes >= 2 * sum(counts.values()) * file.stat().st_size  # working copy + DVC cache
    assert est.seconds["train"] > 0 and est.seconds["evaluate"] > 0
    assert est.seconds["merge"] == 0  # naive averaging does no weight matching


def test_the_paper_preset_on_this_machine_says_what_it_needs(tmp_path, monkeypatch):
    params = load_params(REPO / "params/paper-cifar10.yaml")
    est = estimate(params, Shape(3072, 10, 50000, 2000))
    assert est.models["base"] == 1600
    # 1600 + 32 + merged models of 3072-512-512-512-256-10 floats, twice: well over 100 GiB.
    n = sum(est.models.values())
    per = (3072 * 512 + 512 * 512 * 2 + 512 * 256 + 256 * 10 + 512 * 3 + 256 + 10 + 2 * 3072) * 4
    assert math.isclose(est.disk_bytes, 2 * n * (per + 4096) + n * 4096, rel_tol=1e-9)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params/paper-cifar10.yaml").read_text())
    res = CliRunner().invoke(main, ["plan"])
    assert res.exit_code == 1
    assert "1600 base" in res.output and "GiB of disk" in res.output and "does not fit" in res.output


def test_train_stage_refuses_before_training_when_the_disk_is_too_small(tmp_path, monkeypatch):
    from audit import resources
    from audit.stages import train

    root = make_project(tmp_path / "p")
    run_here(root, "data", check=True)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda p: usage(GIB, GIB, 10 * 2**20))
    params = load_params(root / "params.yaml")
    with pytest.raises(resources.ResourceError, match=r"not started: 14 models \(4 base, 0 regularized, 10 merged\).*needs 0\.\d MiB of disk.*only 10\.0 MiB free"):
        train.run(params, root)
    assert not (root / "models").exists()


def test_train_stage_refuses_an_experiment_over_the_time_limit(tmp_path):
    root = make_project(tmp_path / "p", {"resources": {"max_hours": 1e-6}})
    run_here(root, "data", check=True)
    out = run_stage(root, "train", check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("estimate: ")
    assert lines[-1].startswith("error: not started: ") and "over resources.max_hours 1e-06" in lines[-1]
    assert not (root / "models").exists()


def test_the_shape_comes_from_the_record_only_for_the_data_set_the_params_name(tmp_path):
    import json

    from audit.config import params_from_dict
    from audit.resources import shape_of

    (tmp_path / "results").mkdir()
    (tmp_path / "results/data.json").write_text(json.dumps(
        {"name": "digits", "image_shape": [1, 8, 8], "n_classes": 10, "n_train": 1437, "n_test": 360}))
    assert shape_of(params_from_dict({"data": {"name": "digits"}}), tmp_path).in_features == 64
    assert shape_of(params_from_dict({"data": {"name": "cifar10"}}), tmp_path).in_features == 3072


def test_merge_time_is_the_makespan_of_its_tasks_biggest_first():
    """The merge estimate schedules each method's tasks on its workers: one long MergeMany group
    bounds the stage from below instead of being spread over the workers."""
    from audit.resources import makespan

    assert makespan([], 2) == 0
    assert makespan([10.0, 1.0, 1.0], 2) == 10.0  # the longest task, not 12 / 2
    assert makespan([3.0, 3.0, 2.0, 2.0, 2.0], 2) == 7.0  # 3+2+2 | 3+2, as biggest-first gives it
    assert makespan([3.0, 3.0, 2.0], 1) == 8.0
