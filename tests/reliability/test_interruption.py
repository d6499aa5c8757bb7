"""Interruption: Ctrl-C (SIGINT) or SIGKILL in the middle of training, merging or evaluation, then a
rerun. Nothing finished is lost or redone, nothing half-written is read, and the end result is
bit-identical to an uninterrupted run (which also shows that two runs give the same bytes)."""

import json
import shutil
import signal

import pandas as pd
import pytest

from audit.storage import MANIFEST, ModelStore, read_manifest
from tests.reliability.project import contents, interrupt_when, make_project, run_stage, snapshot

# Big enough that every stage takes a few seconds, so that it can be stopped midway.
SLOW = {"zoo": {"arch": [128, 128], "depth": 3, "train": {"epochs": 15}},
        "merge": {"methods": ["hierarchical"], "seeds": [0, 1], "workers": 2},
        "eval": {"workers": 2}}
POOL, MERGED, CACHE = "models/zoo/pool-0", "models/merged/hierarchical", "results/eval-cache"
STEPS = {"train": ("train",), "merge": ("merge", "--method", "hierarchical"), "evaluate": ("evaluate",)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, with a copy of the project taken before each of the three stages."""
    base = tmp_path_factory.mktemp("reference")
    root = make_project(base / "run", SLOW)
    before = {}
    run_stage(root, "data")
    for name, args in STEPS.items():
        before[name] = base / f"before-{name}"
        shutil.copytree(root, before[name])
        run_stage(root, *args)
    return root, before


def entries(directory):
    try:
        manifest = read_manifest(directory)
    except Exception:  # noqa: BLE001 (polled while the stage writes; atomic writes make this rare)
        return 0
    return 0 if manifest is None else len(manifest["models"])


def progress(root, stage):
    if stage == "train":
        return entries(root / POOL)
    if stage == "merge":
        return entries(root / MERGED)
    return len(list((root / CACHE).glob("*.csv"))) if (root / CACHE).exists() else 0


# 8 base models; hierarchical x 2 merge seeds: 4 + 2 + 1 groups, and the other side at depth 2
# (merge.side_ablation's default): 2 x (4 + 2 x 2 + 1) = 18 merged; 26 models evaluated.
TOTAL = {"train": 8, "merge": 18, "evaluate": 26}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("stage", list(STEPS))
def test_interrupted_stage_resumes_to_the_same_bytes(reference, tmp_path, stage, sig):
    ref_root, before = reference
    root = tmp_path / "p"
    shutil.copytree(before[stage], root)
    rc, err, done_at_kill = interrupt_when(root, STEPS[stage][0], STEPS[stage][1:], lambda: (n := progress(root, stage)) >= 2 and n,
                                           sig)
    assert 2 <= done_at_kill < TOTAL[stage]
    if sig == signal.SIGINT:
        assert rc == 130 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("interrupted: finished models and results are kept")
    else:
        assert rc == -signal.SIGKILL

    # What the killed run left is consistent: every listed model is complete and verified. A file
    # written just before the kill but not yet listed counts as unfinished and may be redone.
    listed = set()
    for directory in (root / POOL, root / MERGED):
        if (directory / MANIFEST).exists():
            store = ModelStore(directory, read_manifest(directory)["zoo"])
            assert store.finished() == set(store.entries)
            listed |= {str(store.path(k).relative_to(root)) for k in store.entries}
    kept = {k: v for k, v in snapshot(root, ("models", CACHE)).items()
            if k in listed or (k.startswith(CACHE) and k.endswith(".csv") and "/." not in k)}
    assert len(kept) >= 2

    out = run_stage(root, *STEPS[stage])
    after = snapshot(root)
    # Finished files were not redone: same inode and modification time.
    assert {k: after[k] for k in kept if k in after} == kept
    assert not [k for k in after if k.rsplit("/", 1)[-1].startswith(".")]  # no temporaries left
    if stage == "merge":
        assert json.loads(out.stdout)["reused"] >= done_at_kill

    # The resumed result equals the uninterrupted one, byte for byte (manifests aside: they hold
    # each merge's duration in seconds).
    made = {"train": ("models/zoo",), "merge": ("models/zoo", "models/merged"), "evaluate": ("models", CACHE)}[stage]
    ref = {k: v for k, v in contents(snapshot(ref_root, made)).items() if not k.endswith(MANIFEST)}
    got = {k: v for k, v in contents(snapshot(root, made)).items() if not k.endswith(MANIFEST)}
    assert got == ref and len(ref) >= TOTAL[stage]
    if stage == "evaluate":
        assert (root / "results/evaluation.csv").read_bytes() == (ref_root / "results/evaluation.csv").read_bytes()
        table = pd.read_csv(root / "results/evaluation.csv")
        assert table.model.nunique() == TOTAL["evaluate"]
