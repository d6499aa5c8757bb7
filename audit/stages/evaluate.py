"""Stage `evaluate`: every model's metrics (cached per model, so an interrupted run resumes),
the model catalog, the barrier curves, and the DVC metrics and plots that summarize them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import methods
from ..ablation import merge_jobs
from ..config import Params, to_dict
from ..data import Dataset
from ..executor import Task, run_tasks
from ..imports import code_digest
from ..metrics import barriers, evaluate
from ..models import resolve_device
from ..paths import (BARRIERS_CSV, CATALOG_CSV, EVAL_CACHE, EVALUATION_CSV, MERGED_DIR, METRICS_DIR, PLOTS_DIR,
                     REGULARIZED_DIR, pool_dir)
from ..storage import ModelStore, atomic_write_json, digest, load_weights, remove_temporaries
from .common import (PipelineError, checked_data, eval_split, executor_config, missing, open_store, source, stage_main,
                     tracker, write_csv)

# Metrics summarized per method and depth in metrics/eval.json and results/plots/ (eps in pixels).
SUMMARY_METRICS = [("clean_accuracy", None), ("fgsm_robust_accuracy", 0.01), ("fgsm_success_rate", 0.01),
                   ("deepfool_median_norm", None), ("weight_norm", None), ("lipschitz_global", None)]
# Models per evaluation task: on CPU small tasks balance the load over processes; on a GPU a task's
# models are attacked together (`audit.metrics.StackedMLP`), so it takes more of them.
_CHUNK = {"cpu": 4, "cuda": 32}


def model_catalog(params: Params, root: Path) -> tuple[pd.DataFrame, dict[str, tuple[ModelStore, str]]]:
    """Every model the pipeline made: one row of metadata per model id, and its verified file."""
    rows, files = [], {}

    def add(model_id: str, store: ModelStore, key: str, **meta):
        store.verify(key) or missing(store.path(key))
        rows.append({"model": model_id, **meta})
        files[model_id] = (store, key)

    for p in range(params.zoo.pools):
        store = open_store(pool_dir(root, p))
        for key in sorted(store.entries, key=int):
            add(f"base/p{p}/s{key}", store, key, kind="base", method="none", pool=p, depth=0, n_models=1, seed=int(key))
    for name in params.zoo.regularized:
        store = open_store(root / REGULARIZED_DIR / name)
        for key in sorted(store.entries, key=int):
            add(f"{name}/s{key}", store, key, kind="regularized", method=name, pool=0, depth=0, n_models=1, seed=int(key))
    for method in params.merge.methods:
        directory = root / MERGED_DIR / method
        store = open_store(directory)
        for job in merge_jobs(params, method):
            if job.key not in store.entries:
                missing(directory / f"{job.key}.safetensors")
            add(job.model_id, store, job.key, kind="merged", method=method, pool=job.pool, depth=job.depth,
                group=job.group, merge_seed=job.seed, side=job.side, n_models=len(job.members),
                converged=methods.get(method).converged(store.entries[job.key]["provenance"]))
    catalog = pd.DataFrame(rows)
    for col in ("group", "merge_seed", "seed"):
        if col in catalog:
            catalog[col] = catalog[col].astype("Int64")  # integers with gaps, not floats
    return catalog, files


def run(params: Params, root: Path) -> dict:
    """Evaluate every model: results/evaluation.csv, models.csv, barriers.csv, plots, metrics/eval.json."""
    data = checked_data(params, root)
    x, y = eval_split(params, data)
    catalog, files = model_catalog(params, root)
    device = "cuda" if params.zoo.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    if params.executor == "ray":
        device = params.zoo.device  # resolved by each task on its own node
    elif params.zoo.device == "cuda" and device != "cuda":
        raise PipelineError("zoo.device: cuda requested but torch sees no CUDA device")
    models = _LazyModels(files)  # loaded one at a time: a paper-scale zoo does not fit in memory
    table = _evaluate_all(params, root, data, files, x, y, device)
    device = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"  # the barrier curves, here
    full = catalog.merge(table, on="model", how="right")
    write_csv(root / EVALUATION_CSV, full)
    write_csv(root / CATALOG_CSV, catalog)

    curves = _barrier_curves(params, models, x.to(device), y.to(device))
    write_csv(root / BARRIERS_CSV, curves)
    summary = _summaries(full, curves, root)
    with tracker(params, root, "evaluate") as tr:
        tr.log_parent(params={"eval": params.eval, "data.eval_samples": params.data.eval_samples})
        tr.log_dataset(data.summary(), data.fingerprint, source(params), context="eval")
        meta = {row["model"]: {k: v for k, v in row.items() if k != "model" and not pd.isna(v)}
                for row in catalog.astype(object).to_dict("records")}
        for mid, group in full.groupby("model", sort=False):
            metrics = {(m if np.isnan(e) else f"{m}/eps_{e:g}"): v for m, e, v in
                       zip(group.metric, group.eps, group.value)}
            tr.child(f"eval/{mid}", tags=meta[mid], metrics=metrics)
        tr.log_parent(metrics={f"{k}/{kk}": v for k, d in summary.items() for kk, v in d.items()})
        for path in (EVALUATION_CSV, CATALOG_CSV, BARRIERS_CSV):
            tr.log_artifact(root / path)
    atomic_write_json(root / METRICS_DIR / "eval.json", summary)
    return summary


def evaluate_chunk(items: list[tuple[str, str, str]], x, y, cfg, device: str, threads: int) -> pd.DataFrame:
    """Evaluate (model id, file, sha256) items: one executor task."""
    torch.set_num_threads(threads)
    models = {mid: load_weights(Path(f), sha) for mid, f, sha in items}
    return evaluate(models, x, y, cfg, device=str(resolve_device(device)))


def _evaluate_all(params: Params, root: Path, data: Dataset, files: dict, x, y, device: str) -> pd.DataFrame:
    """`audit.metrics.evaluate` over every model, in fixed chunks run by the executor.

    Each model's rows are written to ``results/eval-cache/`` as its chunk finishes, keyed by the
    model's sha256, the eval params, the data, the device and the evaluation code (every project
    module this stage runs that computes, `audit.imports.code_digest`) and the chunk size; a rerun after an interruption
    evaluates only the chunks with a model missing there. Chunks are fixed by position in the
    catalog, so a model is always evaluated beside the same others (identical floats).
    """
    cache = root / EVAL_CACHE
    remove_temporaries(cache)
    common_key = {"eval": to_dict(params.eval.metrics), "data": data.fingerprint, "n": len(y), "device": device,
                  "code": code_digest(__name__), "chunk": _CHUNK["cuda" if device == "cuda" else "cpu"]}
    items = [(mid, str(store.path(key)), store.entries[key]["sha256"]) for mid, (store, key) in files.items()]
    cached = {mid: cache / f"{digest({**common_key, 'model': sha})[:32]}.csv" for mid, _, sha in items}
    found: dict[str, pd.DataFrame] = {}
    for mid, path in cached.items():
        if path.exists():
            try:
                rows = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
                continue  # an unreadable cache entry is only evaluated again
            if list(rows.columns) == ["metric", "eps", "value"]:
                found[mid] = rows
    size = _CHUNK["cuda" if device == "cuda" else "cpu"]
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    tasks = [Task(f"evaluate {c[0][0]} (+{len(c) - 1})", (c,)) for c in chunks if any(m not in found for m, _, _ in c)]

    def record(task: Task, table: pd.DataFrame):
        for mid, rows in table.groupby("model", sort=False):
            if mid in found:  # a chunk redone for another member: the file on disk stays as it is
                continue
            rows = rows.drop(columns="model")
            write_csv(cached[mid], rows)
            found[mid] = rows

    workers = 1 if device == "cuda" and params.executor == "local" else params.eval.workers  # one GPU: in-process
    ex = executor_config(params, workers)
    run_tasks(evaluate_chunk, tasks, record, config=ex, common=(x, y, params.eval.metrics, device, ex.cpus),
              desc="evaluate", unit="chunk")
    keep = {p.name for p in cached.values()}
    for stale in cache.glob("*.csv"):  # results of models or settings no longer in the run
        if stale.name not in keep:
            stale.unlink()
    return pd.concat([found[mid].assign(model=mid)[["model", "metric", "eps", "value"]] for mid in files],
                     ignore_index=True)


class _LazyModels(Mapping):
    def __init__(self, files: dict):
        self.files = files

    def __getitem__(self, model_id: str):
        store, key = self.files[model_id]
        return store.load(key)

    def __iter__(self):
        return iter(self.files)

    def __len__(self):
        return len(self.files)


def _barrier_curves(params: Params, models: Mapping, x, y) -> pd.DataFrame:
    frames = []
    seeds = params.zoo.pool_seeds(0)
    for i in range(min(params.eval.barrier_pairs, len(seeds) // 2)):
        a, b = seeds[2 * i], seeds[2 * i + 1]
        curves = barriers(models[f"base/p0/s{a}"], models[f"base/p0/s{b}"], x, y, seed=0,
                          n_points=params.eval.barrier_points, max_iter=params.merge.max_iter)
        for kind, curve in curves.items():
            frame = curve.frame()
            frame.insert(0, "interpolation", kind)
            frame.insert(0, "pair", f"s{a}-s{b}")
            for k, v in curve.summary.items():
                frame[k] = v
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["pair", "interpolation", "lam", "loss", "accuracy"])


def _summaries(full: pd.DataFrame, curves: pd.DataFrame, root: Path) -> dict:
    """metrics/eval.json (means per kind/method/depth) and the wide CSVs DVC plots."""
    summary: dict = {}
    plots = root / PLOTS_DIR
    for metric, eps in SUMMARY_METRICS:
        sel = full[(full.metric == metric) & ((full.eps == eps) if eps is not None else full.eps.isna())]
        if sel.empty:
            continue
        name = metric if eps is None else f"{metric}@{eps:g}"
        means = sel.groupby(["method", "depth"]).value.mean()
        summary[name] = {f"{m}/d{d}": round(float(v), 6) for (m, d), v in means.items()}
        merged = sel[sel.kind == "merged"]
        if not merged.empty:
            wide = merged.groupby(["depth", "method"]).value.mean().unstack("method").reset_index()
            base = sel[sel.kind == "base"].value.mean()
            wide.insert(1, "base", base)
            write_csv(plots / f"{name.replace('@', '_at_')}_by_depth.csv", wide)
    if not curves.empty:
        first = curves[curves.pair == curves.pair.iloc[0]]
        wide = first.pivot(index="lam", columns="interpolation", values="loss").reset_index()
        write_csv(plots / "barrier_loss.csv", wide)
        summary["barrier"] = {f"{kind}/{k}": round(float(curves[curves.interpolation == kind][k].mean()), 6)
                              for kind in curves.interpolation.unique()
                              for k in ("loss_barrier", "accuracy_barrier")}
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main(run, argv)
