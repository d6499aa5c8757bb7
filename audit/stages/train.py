"""Stage `train`: the base-model pools and the regularized baselines (one ModelStore each)."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..config import Params
from ..data import Dataset
from ..models import resolve_widths
from ..paths import METRICS_DIR, REGULARIZED_DIR, pool_dir
from ..resources import Shape, check_fits, estimate
from ..storage import atomic_write_json
from ..zoo import train_zoo
from .common import checked_data, eval_split, executor_config, source, stage_main, tracker


def guard_resources(params: Params, root: Path, data: Dataset) -> None:
    """Say what the experiment needs before it starts; refuse what cannot fit (`audit.resources`)."""
    n_eval = len(eval_split(params, data)[1])
    est = estimate(params, Shape(data.in_features, data.n_classes, len(data.y_train), n_eval))
    print(f"estimate: {est.describe()}", file=sys.stderr)
    check_fits(params, root, est)


def with_input_norm(data: Dataset, input_norm: str) -> Dataset:
    """The data set as the models see it: its own statistics (``dataset``), or mean 0 and std 1
    (``none``), which makes the models' normalization layer the identity. Only the statistics the
    models carry change; the images, the split and the seeds are the same."""
    if input_norm == "dataset":
        return data
    return replace(data, mean=tuple(0.0 for _ in data.mean), std=tuple(1.0 for _ in data.std))


def run(params: Params, root: Path) -> dict:
    """Train the zoo: models/zoo/pool-<p>/ and models/regularized/<name>/."""
    data = checked_data(params, root)
    guard_resources(params, root, data)
    z = params.zoo
    data = with_input_norm(data, z.input_norm)
    widths = resolve_widths(z.arch)
    imported = {}
    if z.source == "import":  # checkpoints trained elsewhere become the pools (audit.zoo_import)
        from ..zoo_import import import_zoo

        imported = import_zoo(z, data, root, pool_dir)
    jobs = [(f"base/p{p}", pool_dir(root, p), z.train, z.pool_seeds(p), {"kind": "base", "pool": p})
            for p in range(z.pools) if p not in imported]
    for name, reg in z.regularized.items():
        cfg = replace(z.train, l1=reg.l1, l2=reg.l2)
        jobs.append((name, root / REGULARIZED_DIR / name, cfg, list(range(z.regularized_models)),
                     {"kind": "regularized", "regularizer": name, "pool": 0}))
    summary = {}
    # Locally, one pass at a time in this process with all its threads (the loop engine uses them
    # well); a Ray task gets as many cores and threads, so both compute the same floats.
    train_executor = replace(executor_config(params, 1), cpus=torch.get_num_threads())
    with tracker(params, root, "train") as tr:
        tr.log_parent(params={"data": params.data, "zoo": z})
        tr.log_dataset(data.summary(), data.fingerprint, source(params))
        for label, directory, cfg, seeds, tags in [(f"base/p{p}", None, None, z.pool_seeds(p), {"kind": "base", "pool": p})
                                                   for p in imported] + jobs:
            t = time.perf_counter()
            if directory is None:
                store = imported[tags["pool"]]
            else:
                store = train_zoo(directory, data, widths, cfg, seeds, device=z.device, engine=z.engine,
                                  executor=train_executor, reset=True)
            store.retain(str(s) for s in seeds)  # a smaller pool than before: its extra models go
            seconds = time.perf_counter() - t
            accs = []
            for key in sorted(store.entries, key=int):
                e = store.entries[key]
                accs.append(e["metrics"]["test_accuracy"])
                tr.child(f"{label}/s{key}", tags={**tags, "seed": key, "weights_path": str(store.path(key).relative_to(root)),
                                                  "weights_sha256": e["sha256"]},
                         params={"seed": e["seed"], **({"train": cfg} if cfg else {"imported_from": e["imported_from"]})},
                         metrics=e["metrics"])
            summary[label] = {"models": len(seeds), "test_accuracy_mean": float(np.mean(accs)),
                              "test_accuracy_min": float(np.min(accs)), "seconds": round(seconds, 1)}
        tr.log_parent(metrics={f"{k}/test_accuracy_mean": v["test_accuracy_mean"] for k, v in summary.items()})
    # The stage's out exists even with no baseline (regularized: {}), and a baseline dropped from
    # the params leaves no models behind to be evaluated beside the current ones.
    (root / REGULARIZED_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (root / REGULARIZED_DIR).iterdir():
        if stale.is_dir() and stale.name not in z.regularized:
            shutil.rmtree(stale)
    atomic_write_json(root / METRICS_DIR / "train.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main(run, argv)
