"""Determinism: the same params give bit-identical model files and identical result tables, whatever
the global random state; every random draw comes from a seed that is recorded."""

import random

import numpy as np
import pandas as pd
import torch

from audit.config import params_from_dict
from audit.data import load_dataset
from audit.metrics import EvalConfig, evaluate
from audit.ablation import merge_jobs
from audit.stages.merge import run_job
from audit.storage import ModelStore
from audit.zoo import TrainConfig, train_zoo
from tests.reliability.project import SMALL, contents, snapshot

CFG = TrainConfig(epochs=2, batch_size=64)
EVAL = EvalConfig(fgsm_eps=(0.0, 0.02), pgd_eps=(0.02,), pgd_steps=3, deepfool_eps=(0.5,), deepfool_max_iter=10,
                  lipschitz_points=2)


def disturb(seed: int) -> None:
    """Different global random states: nothing may depend on them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_once(root, disturbance: int):
    data = load_dataset("digits")
    disturb(disturbance)
    store = train_zoo(root / "zoo", data, (32,), CFG, [0, 1, 2, 3], device="cpu", progress=False)
    params = params_from_dict({**SMALL, "tracking": {"enabled": False}})
    merged = {}
    for method in ("hierarchical", "mergemany"):
        for job in merge_jobs(params, method):
            files = [str(store.path(str(s))) for s in job.members]
            shas = [store.entries[str(s)]["sha256"] for s in job.members]
            cfg = {"max_iter": 100, "mergemany_max_iter": 2, "lam": 0.5, "pairing": "random", "device": "cpu"}
            merged[job.model_id], _, _ = run_job(job, files, shas, cfg, torch.get_num_threads())
    models = {f"s{k}": store.load(k) for k in store.entries} | merged
    table = evaluate(models, data.x_test[:100], data.y_test[:100], EVAL)
    return store, merged, table


def test_two_runs_are_bit_identical_whatever_the_global_random_state(tmp_path):
    store_a, merged_a, table_a = run_once(tmp_path / "a", disturbance=1)
    store_b, merged_b, table_b = run_once(tmp_path / "b", disturbance=2)
    files_a = {k.split("/", 1)[1]: v for k, v in contents(snapshot(tmp_path / "a", ("zoo",))).items()}
    files_b = {k.split("/", 1)[1]: v for k, v in contents(snapshot(tmp_path / "b", ("zoo",))).items()}
    assert files_a == files_b and len(files_a) == 5  # 4 models + manifest, byte for byte
    assert merged_a.keys() == merged_b.keys()
    assert all(torch.equal(merged_a[m][k], merged_b[m][k]) for m in merged_a for k in merged_a[m])
    pd.testing.assert_frame_equal(table_a, table_b, check_exact=True)


def test_seeds_are_recorded_with_every_model(tmp_path):
    store, _, _ = run_once(tmp_path / "a", disturbance=0)
    reopened = ModelStore(tmp_path / "a" / "zoo", store.header, informational=("versions",))
    assert {e["seed"] for e in reopened.entries.values()} == {0, 1, 2, 3}
    assert reopened.header["train"] == CFG.to_dict()


def test_different_seeds_do_give_different_models(tmp_path):
    """The check above could pass if seeds were ignored: they are not."""
    data = load_dataset("digits")
    store = train_zoo(tmp_path / "z", data, (32,), CFG, [0, 1], device="cpu", progress=False)
    assert store.entries["0"]["sha256"] != store.entries["1"]["sha256"]


def test_a_pools_tree_gives_each_groups_model_exactly(tmp_path):
    """With pairing adjacent the merge stage computes one tree per pool, seed and side; each of its
    nodes equals the group's model computed alone from its own subtree (same bytes)."""
    from audit.ablation import tree_jobs
    from audit.stages.merge import run_tree

    data = load_dataset("digits")
    store = train_zoo(tmp_path / "zoo", data, (32,), CFG, [0, 1, 2, 3], device="cpu", progress=False)
    params = params_from_dict({**SMALL, "merge": {**SMALL["merge"], "seeds": [0, 1], "pairing": "adjacent"},
                               "tracking": {"enabled": False}})
    cfg = {"max_iter": 100, "mergemany_max_iter": 2, "lam": 0.5, "pairing": "adjacent", "device": "cpu"}
    jobs = merge_jobs(params, "hierarchical")
    trees = tree_jobs(params, jobs)
    assert len(trees) == 2 * 2 and sum(len(t.jobs) for t in trees) == len(jobs)  # seeds x sides
    threads = torch.get_num_threads()
    for tree in trees:
        files = [str(store.path(str(s))) for s in tree.members]
        shas = [store.entries[str(s)]["sha256"] for s in tree.members]
        for job, merged, prov, _ in run_tree(tree, files, shas, cfg, threads):
            alone, prov_alone, _ = run_job(job, [files[tree.members.index(s)] for s in job.members],
                                                  [shas[tree.members.index(s)] for s in job.members], cfg, threads)
            assert prov == prov_alone
            assert all(torch.equal(merged[k], alone[k]) for k in merged), job.model_id
