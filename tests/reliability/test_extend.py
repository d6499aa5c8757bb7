"""Extending an experiment keeps finished work: each stored model is keyed by what it depends on,
so a new merge seed, pool or depth computes only the new models, a changed setting recomputes
only the models that read it, and models of other settings never stay beside the current ones."""

from __future__ import annotations

import json

from tests.reliability.project import make_project, run_here, run_pipeline, snapshot, write_params

METHODS = ("hierarchical", "mergemany", "naive")


def merged_files(root) -> dict[str, tuple]:
    return {k: v for k, v in snapshot(root, ("models/merged",)).items() if k.endswith(".safetensors")}


def merge(root, method: str) -> dict:
    res = run_here(root, "merge", "--method", method, check=True)
    return json.loads(res.stdout[res.stdout.index("{"):])


def manifest(root, method: str) -> dict:
    return json.loads((root / "models/merged" / method / "manifest.json").read_text())["models"]


def test_a_new_merge_seed_computes_only_the_new_models(tmp_path):
    root = make_project(tmp_path / "p", {"merge": {"seeds": [0]}})
    run_pipeline(root, until="merge", here=True)
    before = merged_files(root)
    write_params(root, {"merge": {"seeds": [0, 1]}})
    summaries = {m: merge(root, m) for m in METHODS}
    after = merged_files(root)
    for path, stat in before.items():  # the same files, untouched (inode, mtime, bytes)
        assert after[path] == stat, path
    new = set(after) - set(before)
    assert new and all("-s1" in p for p in new)
    for m, s in summaries.items():
        seeded = m != "naive"
        assert s["reused"] == (s["jobs"] // 2 if seeded else s["jobs"]), (m, s)
    # ... and a smaller experiment keeps exactly its own models: seed 1 goes again.
    write_params(root, {"merge": {"seeds": [0]}})
    for m in METHODS:
        s = merge(root, m)
        assert s["reused"] == s["jobs"], (m, s)
    assert merged_files(root) == before


def test_a_changed_setting_recomputes_only_the_models_that_read_it(tmp_path):
    root = make_project(tmp_path / "p")
    run_pipeline(root, until="merge", here=True)
    before = manifest(root, "hierarchical"), manifest(root, "mergemany")
    write_params(root, {"merge": {"lam": 0.3}})
    hier, mm = merge(root, "hierarchical"), merge(root, "mergemany")
    assert hier["reused"] == 0 and mm["reused"] == mm["jobs"]  # MergeMany does not read lam
    now = manifest(root, "hierarchical")
    assert set(now) == set(before[0])
    assert all(now[k]["recipe"] != before[0][k]["recipe"] for k in now)  # no model of lam 0.5 is left
    assert manifest(root, "mergemany") == before[1]


def test_a_new_pool_trains_and_merges_only_its_models(tmp_path):
    root = make_project(tmp_path / "p")
    run_pipeline(root, until="merge", here=True)
    zoo_before = snapshot(root, ("models/zoo",))
    merged_before = merged_files(root)
    write_params(root, {"zoo": {"pools": 2}})
    run_here(root, "train", check=True)
    zoo_after = snapshot(root, ("models/zoo",))
    assert all(zoo_after[k] == v for k, v in zoo_before.items())
    assert any(k.startswith("models/zoo/pool-1/") for k in zoo_after)
    for m in METHODS:
        s = merge(root, m)
        assert s["reused"] == s["jobs"] // 2, (m, s)
    after = merged_files(root)
    assert all(after[k] == v for k, v in merged_before.items())


def test_input_norm_none_makes_the_normalization_the_identity_and_changes_nothing_else(tmp_path):
    import torch

    from audit.storage import load_weights

    headers, models = {}, {}
    for norm in ("dataset", "none"):
        root = make_project(tmp_path / norm, {"zoo": {"input_norm": norm}})
        run_pipeline(root, until="train", here=True)
        m = json.loads((root / "models/zoo/pool-0/manifest.json").read_text())
        headers[norm] = m["zoo"]
        models[norm] = load_weights(root / "models/zoo/pool-0" / m["models"]["0"]["file"])
    buffers = [k for k in models["none"] if k.startswith("norm.")]
    assert buffers
    for k in buffers:  # the identity: mean 0, std 1 ...
        assert torch.all(models["none"][k] == (1.0 if k.endswith("std") else 0.0)), k
        assert not torch.all(models["dataset"][k] == models["none"][k]), k  # ... where the default has the data's
    a, b = headers["dataset"], headers["none"]
    assert {k for k in a if a[k] != b[k]} == {"dataset"}
    assert {k for k in a["dataset"] if a["dataset"][k] != b["dataset"][k]} == {"mean", "std"}
