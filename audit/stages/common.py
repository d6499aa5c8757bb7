"""What every stage shares: its error type, where its tasks run, the checked data set, its MLflow
tracker, and the entry point that turns user errors into one line."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import tracking
from ..config import Params, UserError, load_params, to_dict
from ..data import Dataset, load_from_params as load_data
from ..executor import ExecutorConfig
from ..paths import DATA_RECORD
from ..storage import ModelStore, atomic_write_bytes, digest, read_manifest
from ..tracking import Tracker

if TYPE_CHECKING:  # pandas takes ~0.2 s to import, and the merge and train workers never need it
    import pandas as pd


class PipelineError(UserError, RuntimeError):
    """A stage cannot run as configured or on what earlier stages left (one-line message)."""


def executor_config(params: Params, workers: int) -> ExecutorConfig:
    """Where a stage's tasks run. ``workers`` (0: one per core) sets the local process count and,
    under both executors, each task's threads (cores / workers), so both compute the same floats."""
    cores = os.cpu_count() or 1
    workers = max(1, workers or cores)
    threads = max(1, cores // workers)
    if params.executor == "ray":
        r = params.ray
        return ExecutorConfig("ray", workers, r.address, threads, r.gpus_per_task, r.retries)
    return ExecutorConfig("local", workers, cpus=threads)


def checked_data(params: Params, root: Path) -> Dataset:
    """The data set, verified against the data stage's record (the same arrays every stage)."""
    data = load_data(params, root)
    record = root / DATA_RECORD
    if not record.exists():
        raise PipelineError(f"{record}: missing; run the data stage first (dvc repro)")
    want = json.loads(record.read_text())["fingerprint"]
    if data.fingerprint != want:
        raise PipelineError(f"{record}: data fingerprint {want[:12]} differs from the loaded data "
                            f"{data.fingerprint[:12]}; the data changed, rerun the pipeline (dvc repro)")
    return data


def eval_split(params: Params, data: Dataset):
    n = params.data.eval_samples
    return (data.x_test, data.y_test) if n is None else (data.x_test[:n], data.y_test[:n])


def source(params: Params) -> str:
    p = params.data
    return {"digits": "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
            "mnist": "https://yann.lecun.com/exdb/mnist/",
            "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist",
            "cifar10": "https://www.cs.toronto.edu/~kriz/cifar.html",
            "cifar100": "https://www.cs.toronto.edu/~kriz/cifar.html"}.get(p.name, f"file://{p.path}")


def open_store(directory: Path) -> ModelStore:
    """An existing store as written by an earlier stage (its own header), or a one-line error."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise PipelineError(f"{directory}: no models here; run the earlier stages first (dvc repro)")
    store = ModelStore(directory, manifest["zoo"])
    store.check_complete()
    return store


def missing(path: Path):
    raise PipelineError(f"{path}: missing; run the earlier stages first (dvc repro)")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False, float_format="%.10g").encode())


def tracker(params: Params, root: Path, stage: str) -> Tracker:
    # The key names what the stage computes from (not where it logs or runs): a rerun after a
    # tracking fault resumes the same parent run.
    inputs = {k: v for k, v in to_dict(params).items() if k not in ("tracking", "executor", "ray", "resources", "sensitivity")}
    return Tracker(params.tracking, data_name=params.data.name, stage=stage, root=root,
                   key=digest({"stage": stage, "params": inputs})[:24])


def stage_main(run: Callable[..., dict], argv: list[str] | None = None) -> None:
    """Parse ``[--params FILE] [extra args]``, run the stage, turn user errors into one line + exit 1.

    Ctrl-C exits with 130 and a line saying that finished models and results are kept. A tracking
    failure is reported after every result is on disk, with exit 1, so that DVC does not record the
    stage as done: the rerun reuses the results and logs the runs that are missing.
    """
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=(run.__doc__ or run.__name__).splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".")
    ap.add_argument("--method", help="merge method (merge stage)")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    try:
        params = load_params(root / args.params if not Path(args.params).is_absolute() else args.params)
        extra = {"method": args.method} if args.method else {}
        summary = run(params, root, **extra)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted: finished models and results are kept; rerun (dvc repro) to do the rest",
              file=sys.stderr)
        raise SystemExit(130) from None
    print(json.dumps(summary, indent=1, default=str)[:4000])
    if failures := tracking.failures():
        print(f"error: results are saved, but MLflow logging failed: {failures[0]}; fix the tracking store "
              "and rerun (dvc repro): finished results are reused and the missing runs logged", file=sys.stderr)
        raise SystemExit(1)
