"""The experiment as functions of (params, project root): what each DVC stage runs.

Layout under the project root (every path is a DVC out of exactly one stage):

    results/data.json                      data:     data set summary and fingerprint
    models/zoo/pool-<p>/                   train:    base models, one ModelStore per pool
    models/regularized/<name>/             train:    regularized baselines (L1, L2 ...)
    metrics/train.json                     train:    DVC metrics
    models/merged/<method>/                merge:    one ModelStore per method (+ metrics/merge-<method>.json)
    results/evaluation.csv, models.csv     evaluate: tidy metric table and the model catalog
    results/eval-cache/                    evaluate: each model's metrics as they finish (for resume)
    results/barriers.csv                   evaluate: barrier curves (naive and weight-matched)
    results/plots/*.csv, metrics/eval.json evaluate: DVC plots and metrics
    results/claims.csv|json, compare.csv   audit:    verdicts per claim, methods vs MergeMany
    reports/audit/                         report:   report.md, report.html, figures/

The controlled ablation (design §3): pool p holds the models of seeds p*2^D .. (p+1)*2^D-1. For
every depth d = 1..D the pool is split into 2^(D-d) contiguous groups of 2^d models, and every
method merges the identical groups: hierarchical once per merge seed and permuted side, MergeMany
once per merge seed, naive once (it has no randomness).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import tracking
from .config import METHODS, ConfigError, Params, load_params, to_dict
from .data import DataError, Dataset, load_dataset
from .executor import ExecutorConfig, Task, TaskError, run_tasks
from .merge import hierarchical_merge, hierarchical_tree, merge_many, naive_merge
from .metrics import barriers, evaluate
from .rebasin import mlp_permutation_spec
from .resources import ResourceError
from .storage import (ModelStore, StorageError, atomic_write_bytes, atomic_write_json, digest, read_manifest,
                      remove_temporaries, sha256_file)
from .tracking import Tracker
from .zoo import resolve_widths, train_zoo

DATA_RECORD = Path("results/data.json")
ZOO_DIR = Path("models/zoo")
REGULARIZED_DIR = Path("models/regularized")
MERGED_DIR = Path("models/merged")
EVALUATION_CSV = Path("results/evaluation.csv")
CATALOG_CSV = Path("results/models.csv")
BARRIERS_CSV = Path("results/barriers.csv")
EVAL_CACHE = Path("results/eval-cache")
PLOTS_DIR = Path("results/plots")
METRICS_DIR = Path("metrics")
CLAIMS_YAML = Path("reports/claims.yaml")
CLAIMS_CSV = Path("results/claims.csv")
VERDICTS_JSON = Path("results/claims.json")
COMPARE_CSV = Path("results/compare.csv")

# Metrics summarized per method and depth in metrics/eval.json and results/plots/ (eps in pixels).
SUMMARY_METRICS = [("clean_accuracy", None), ("fgsm_robust_accuracy", 0.01), ("fgsm_success_rate", 0.01),
                   ("deepfool_median_norm", None), ("weight_norm", None), ("lipschitz_global", None)]
# What the audit stage compares against MergeMany in results/compare.csv.
COMPARE_METRICS = [("clean_accuracy", None), ("fgsm_robust_accuracy", 0.01), ("fgsm_robust_accuracy", 0.05),
                   ("deepfool_median_norm", None), ("weight_norm", None), ("lipschitz_global", None)]


class PipelineError(RuntimeError):
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


# ---------------------------------------------------------------- data


def load_data(params: Params, root: Path) -> Dataset:
    p = params.data
    path = None if p.path is None else (root / p.path if not Path(p.path).is_absolute() else Path(p.path))
    return load_dataset(p.name, root=root / p.root, download=p.download, seed=p.seed,
                        test_fraction=p.test_fraction, path=path)


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


def _eval_split(params: Params, data: Dataset):
    n = params.data.eval_samples
    return (data.x_test, data.y_test) if n is None else (data.x_test[:n], data.y_test[:n])


def _source(params: Params) -> str:
    p = params.data
    return {"digits": "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
            "mnist": "https://yann.lecun.com/exdb/mnist/",
            "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist",
            "cifar10": "https://www.cs.toronto.edu/~kriz/cifar.html",
            "cifar100": "https://www.cs.toronto.edu/~kriz/cifar.html"}.get(p.name, f"file://{p.path}")


def run_data(params: Params, root: Path) -> dict:
    data = load_data(params, root)
    summary = {**data.summary(), "eval_samples": len(_eval_split(params, data)[1])}
    atomic_write_json(root / DATA_RECORD, summary)
    with _tracker(params, root, "data") as tr:
        tr.log_parent(params={"data": params.data})
        tr.log_dataset(summary, data.fingerprint, _source(params), context="train+test")
    return summary


# ---------------------------------------------------------------- train


def pool_dir(root: Path, pool: int) -> Path:
    return root / ZOO_DIR / f"pool-{pool}"


def guard_resources(params: Params, root: Path, data: Dataset) -> None:
    """Say what the experiment needs before it starts; refuse what cannot fit (`audit.resources`)."""
    import sys

    from .resources import Shape, check_fits, estimate

    n_eval = len(_eval_split(params, data)[1])
    est = estimate(params, Shape(data.in_features, data.n_classes, len(data.y_train), n_eval))
    print(f"estimate: {est.describe()}", file=sys.stderr)
    check_fits(params, root, est)


def run_train(params: Params, root: Path) -> dict:
    data = checked_data(params, root)
    guard_resources(params, root, data)
    z = params.zoo
    widths = resolve_widths(z.arch)
    jobs = [(f"base/p{p}", pool_dir(root, p), z.train, z.pool_seeds(p), {"kind": "base", "pool": p})
            for p in range(z.pools)]
    for name, reg in z.regularized.items():
        cfg = replace(z.train, l1=reg.l1, l2=reg.l2)
        jobs.append((name, root / REGULARIZED_DIR / name, cfg, list(range(z.regularized_models)),
                     {"kind": "regularized", "regularizer": name, "pool": 0}))
    summary = {}
    # Locally, one pass at a time in this process with all its threads (the loop engine uses them
    # well); a Ray task gets as many cores and threads, so both compute the same floats.
    train_executor = replace(executor_config(params, 1), cpus=torch.get_num_threads())
    with _tracker(params, root, "train") as tr:
        tr.log_parent(params={"data": params.data, "zoo": z})
        tr.log_dataset(data.summary(), data.fingerprint, _source(params))
        for label, directory, cfg, seeds, tags in jobs:
            t = time.perf_counter()
            store = train_zoo(directory, data, widths, cfg, seeds, device=z.device, engine=z.engine,
                              executor=train_executor, reset=True)
            seconds = time.perf_counter() - t
            accs = []
            for key in sorted(store.entries, key=int):
                e = store.entries[key]
                accs.append(e["metrics"]["test_accuracy"])
                tr.child(f"{label}/s{key}", tags={**tags, "seed": key, "weights_path": str(store.path(key).relative_to(root)),
                                                  "weights_sha256": e["sha256"]},
                         params={"seed": e["seed"], "train": cfg}, metrics=e["metrics"])
            summary[label] = {"models": len(seeds), "test_accuracy_mean": float(np.mean(accs)),
                              "test_accuracy_min": float(np.min(accs)), "seconds": round(seconds, 1)}
        tr.log_parent(metrics={f"{k}/test_accuracy_mean": v["test_accuracy_mean"] for k, v in summary.items()})
    atomic_write_json(root / METRICS_DIR / "train.json", summary)
    return summary


# ---------------------------------------------------------------- merge


@dataclass(frozen=True)
class MergeJob:
    method: str
    pool: int
    depth: int
    group: int
    seed: int | None  # None for naive
    side: str | None  # hierarchical only
    members: tuple[int, ...]  # model seeds

    @property
    def key(self) -> str:
        parts = [f"p{self.pool}", f"d{self.depth}", f"g{self.group}"]
        parts += [] if self.seed is None else [f"s{self.seed}"]
        parts += [] if self.side is None else [self.side]
        return "-".join(parts)

    @property
    def model_id(self) -> str:
        return f"{self.method}/{self.key}"


def merge_jobs(params: Params, method: str) -> list[MergeJob]:
    z, m = params.zoo, params.merge
    jobs = []
    for pool in range(z.pools):
        seeds = z.pool_seeds(pool)
        for depth in range(1, z.depth + 1):
            size = 2 ** depth
            for group in range(z.pool_size // size):
                members = tuple(seeds[group * size:(group + 1) * size])
                if method == "naive":
                    jobs.append(MergeJob(method, pool, depth, group, None, None, members))
                elif method == "mergemany":
                    jobs += [MergeJob(method, pool, depth, group, s, None, members) for s in m.seeds]
                else:
                    sides = [m.permute] + ([m.other_side] if depth in m.side_ablation else [])
                    jobs += [MergeJob(method, pool, depth, group, s, side, members) for s in m.seeds for side in sides]
    return jobs


def _run_merge_job(job: MergeJob, files: list[str], shas: list[str], merge: dict, threads: int):
    """One merge as an executor task: load the members (sha256-verified), merge, return the result."""
    from .storage import load_params
    from .zoo import resolve_device

    torch.set_num_threads(threads)
    t = time.perf_counter()
    # On a GPU the similarity matrices of weight matching are computed there (float64); the
    # assignment itself is solved on the CPU (see audit.rebasin.weight_matching).
    dev = resolve_device(merge["device"])
    models = [{k: v.to(dev) for k, v in load_params(Path(f), sha).items()} for f, sha in zip(files, shas)]
    names = [f"s{s}" for s in job.members]
    spec = mlp_permutation_spec(models[0])  # the stores checked that every member is the zoo's MLP
    if job.method == "naive":
        res = naive_merge(models, names=names)
    elif job.method == "mergemany":
        res = merge_many(models, spec, seed=job.seed, max_iter=merge["mergemany_max_iter"],
                         match_max_iter=merge["max_iter"], names=names)
    elif merge["pairing"] == "adjacent":  # the node of the pool's tree, from its own subtree
        res = hierarchical_tree(models, spec, seed=job.seed, lam=merge["lam"], permute=job.side,
                                max_iter=merge["max_iter"], names=names, first_leaf=job.group * len(models),
                                depth=job.depth)[(job.depth, job.group)]
    else:
        res = hierarchical_merge(models, spec, seed=job.seed, lam=merge["lam"], pairing=merge["pairing"],
                                 permute=job.side, max_iter=merge["max_iter"], names=names)
    return {k: v.cpu() for k, v in res.params.items()}, res.provenance, time.perf_counter() - t


@dataclass(frozen=True)
class TreeJob:
    """One hierarchical tree over a whole pool (adjacent pairing): its stage-d nodes are the
    depth-d jobs of that pool, merge seed and side, so each lower stage is computed once."""

    pool: int
    seed: int
    side: str
    depth: int  # deepest stage needed
    jobs: tuple[MergeJob, ...]
    members: tuple[int, ...]  # the pool's model seeds

    @property
    def name(self) -> str:
        return f"hierarchical/p{self.pool}-s{self.seed}-{self.side} tree to depth {self.depth}"


def tree_jobs(params: Params, jobs: list[MergeJob]) -> list[TreeJob]:
    """The hierarchical jobs grouped into one tree per pool, merge seed and side."""
    trees: dict[tuple, list[MergeJob]] = {}
    for job in jobs:
        trees.setdefault((job.pool, job.seed, job.side), []).append(job)
    return [TreeJob(pool, seed, side, max(j.depth for j in js), tuple(js), tuple(params.zoo.pool_seeds(pool)))
            for (pool, seed, side), js in trees.items()]


def _run_merge_tree(tree: TreeJob, files: list[str], shas: list[str], merge: dict, threads: int):
    """A whole pool's tree as one executor task: every needed node, each with its subtree's time."""
    from .storage import load_params
    from .zoo import resolve_device

    torch.set_num_threads(threads)
    t = time.perf_counter()
    dev = resolve_device(merge["device"])
    models = [{k: v.to(dev) for k, v in load_params(Path(f), sha).items()} for f, sha in zip(files, shas)]
    spec = mlp_permutation_spec(models[0])
    nodes = hierarchical_tree(models, spec, seed=tree.seed, lam=merge["lam"], permute=tree.side,
                              max_iter=merge["max_iter"], names=[f"s{s}" for s in tree.members], depth=tree.depth)
    seconds = (time.perf_counter() - t) / len(tree.jobs)  # the tree's time, shared among its models
    return [(job, {k: v.cpu() for k, v in nodes[(job.depth, job.group)].params.items()},
             nodes[(job.depth, job.group)].provenance, seconds) for job in tree.jobs]


def run_merge(params: Params, root: Path, method: str) -> dict:
    if method not in params.merge.methods:
        raise PipelineError(f"merge method {method!r} is not in merge.methods {list(params.merge.methods)}")
    jobs = merge_jobs(params, method)
    stores = {p: _open_pool(root, p) for p in range(params.zoo.pools)}
    # What the merged models depend on (not how many processes made them): the recipe and the exact
    # base models. Any change empties the store; unchanged, an interrupted run resumes.
    recipe = {k: v for k, v in to_dict(params.merge).items() if k != "workers"}
    header = {"method": method, "merge": recipe, "zoo": {"depth": params.zoo.depth, "pools": params.zoo.pools},
              "pools": {str(p): digest({k: e["sha256"] for k, e in s.entries.items()}) for p, s in stores.items()}}
    out = ModelStore(root / MERGED_DIR / method, header, reset=True)
    done = out.finished()
    todo = [j for j in jobs if j.key not in done]
    # Biggest groups first so the workers finish together.
    todo.sort(key=lambda j: -len(j.members))
    ex = executor_config(params, params.merge.workers)
    merge_cfg = {"max_iter": params.merge.max_iter, "mergemany_max_iter": params.merge.mergemany_max_iter,
                 "lam": params.merge.lam, "pairing": params.merge.pairing, "device": params.zoo.device}
    summary = {"jobs": len(jobs), "reused": len(jobs) - len(todo), "workers": ex.workers}
    t0 = time.perf_counter()
    with _tracker(params, root, f"merge-{method}") as tr:
        tr.log_parent(params={"merge": params.merge, "zoo.depth": params.zoo.depth, "zoo.pools": params.zoo.pools,
                              "method": method, "workers": ex.workers, "executor": params.executor})

        def log(job: MergeJob):
            entry = out.entries[job.key]
            prov = entry["provenance"]
            metrics = {"seconds": entry["seconds"]}
            if method == "mergemany":
                metrics.update(iterations=prov["iterations"], converged=float(prov["converged"]))
            if method == "hierarchical":
                metrics["converged"] = float(all(s["converged"] for st in prov["stages"] for s in st))
            tr.child(job.model_id, tags={**_job_tags(job), "weights_path": str(out.path(job.key).relative_to(root)),
                                         "weights_sha256": entry["sha256"]},
                     params={"members": ",".join(map(str, job.members)), "tree": prov.get("tree", "")},
                     metrics=metrics)

        def record(task: Task, result):
            job = task.args[0]
            merged, prov, seconds = result
            out.add(job.key, f"{job.key}.safetensors", merged,
                    {**_job_info(job), "seconds": round(seconds, 3), "provenance": prov})
            log(job)

        def inputs(job):
            store = stores[job.pool]
            keys = [str(s) for s in job.members]
            return [str(store.path(k)) for k in keys], [store.entries[k]["sha256"] for k in keys]

        for job in jobs:  # models finished by an interrupted run: logged now if they were not then
            if job.key in done:
                log(job)
        if method == "hierarchical" and params.merge.pairing == "adjacent":
            # One tree per pool, seed and side: a depth-d model is a stage-d node, built from the
            # stage d-1 nodes (15 pair merges for a pool of 16, not 49 from scratch per group).
            trees = tree_jobs(params, todo)
            trees.sort(key=lambda tr: -tr.depth)

            def record_tree(task: Task, result):
                for job, merged, prov, seconds in result:
                    if job.key not in out.entries:  # a rerun's tree recomputes what a killed one left
                        record(Task(task.name, (job,)), (merged, prov, seconds))

            tasks = [Task(f"merge {tr.name}", (tr, *inputs(tr))) for tr in trees]
            run_tasks(_run_merge_tree, tasks, record_tree, config=ex, common=(merge_cfg, ex.cpus),
                      desc=f"merge {method}", unit="tree")
        else:
            tasks = [Task(f"merge {job.model_id}", (job, *inputs(job))) for job in todo]
            run_tasks(_run_merge_job, tasks, record, config=ex, common=(merge_cfg, ex.cpus),
                      desc=f"merge {method}", unit="group")
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        if method == "mergemany":
            provs = [e["provenance"] for e in out.entries.values()]
            summary["converged"] = sum(p["converged"] for p in provs)
            summary["iterations_max"] = max((p["iterations"] for p in provs), default=0)
        tr.log_parent(metrics={k: float(v) for k, v in summary.items()})
    atomic_write_json(root / METRICS_DIR / f"merge-{method}.json", summary)
    return summary


def _open_store(directory: Path) -> ModelStore:
    """An existing store as written by an earlier stage (its own header), or a one-line error."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise PipelineError(f"{directory}: no models here; run the earlier stages first (dvc repro)")
    store = ModelStore(directory, manifest["zoo"])
    store.check_complete()
    return store


def _open_pool(root: Path, pool: int) -> ModelStore:
    return _open_store(pool_dir(root, pool))


def _job_info(job: MergeJob) -> dict:
    return {"method": job.method, "pool": job.pool, "depth": job.depth, "group": job.group,
            "seed": job.seed, "side": job.side, "members": list(job.members)}


def _job_tags(job: MergeJob) -> dict:
    return {"kind": "merged", **{("merge_seed" if k == "seed" else k): v for k, v in _job_info(job).items()
                                 if k != "members" and v is not None}, "n_models": len(job.members)}


# ---------------------------------------------------------------- evaluate


def model_catalog(params: Params, root: Path) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Every model the pipeline made: one row of metadata per model id, and its verified file."""
    rows, files = [], {}

    def add(model_id: str, store: ModelStore, key: str, **meta):
        store.verify(key) or _missing(store.path(key))
        rows.append({"model": model_id, **meta})
        files[model_id] = (store, key)

    for p in range(params.zoo.pools):
        store = _open_pool(root, p)
        for key in sorted(store.entries, key=int):
            add(f"base/p{p}/s{key}", store, key, kind="base", method="none", pool=p, depth=0, n_models=1, seed=int(key))
    for name in params.zoo.regularized:
        store = _open_store(root / REGULARIZED_DIR / name)
        for key in sorted(store.entries, key=int):
            add(f"{name}/s{key}", store, key, kind="regularized", method=name, pool=0, depth=0, n_models=1, seed=int(key))
    for method in params.merge.methods:
        directory = root / MERGED_DIR / method
        store = _open_store(directory)
        for job in merge_jobs(params, method):
            if job.key not in store.entries:
                _missing(directory / f"{job.key}.safetensors")
            add(job.model_id, store, job.key, kind="merged", method=method, pool=job.pool, depth=job.depth,
                group=job.group, merge_seed=job.seed, side=job.side, n_models=len(job.members),
                converged=_converged(store.entries[job.key]["provenance"]))
    catalog = pd.DataFrame(rows)
    for col in ("group", "merge_seed", "seed"):
        if col in catalog:
            catalog[col] = catalog[col].astype("Int64")  # integers with gaps, not floats
    return catalog, files


def _converged(prov: dict) -> bool:
    """Whether the merge ran its searches to their stopping rule (not a pass or sweep cap)."""
    if "converged" in prov:  # MergeMany
        return bool(prov["converged"])
    return all(s["converged"] for stage in prov.get("stages", []) for s in stage)  # hierarchical; naive: True


def _missing(path: Path):
    raise PipelineError(f"{path}: missing; run the earlier stages first (dvc repro)")


def run_evaluate(params: Params, root: Path) -> dict:
    data = checked_data(params, root)
    x, y = _eval_split(params, data)
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
    _write_csv(root / EVALUATION_CSV, full)
    _write_csv(root / CATALOG_CSV, catalog)

    curves = _barrier_curves(params, models, x.to(device), y.to(device))
    _write_csv(root / BARRIERS_CSV, curves)
    summary = _summaries(full, curves, root)
    with _tracker(params, root, "evaluate") as tr:
        tr.log_parent(params={"eval": params.eval, "data.eval_samples": params.data.eval_samples})
        tr.log_dataset(data.summary(), data.fingerprint, _source(params), context="eval")
        meta = {row["model"]: {k: v for k, v in row.items() if k != "model" and not pd.isna(v)}
                for row in catalog.astype(object).to_dict("records")}
        for mid, group in full.groupby("model", sort=False):
            metrics = {(m if np.isnan(e) else f"{m}/eps_{e:g}"): v for m, e, v in
                       zip(group.metric, group.eps, group.value)}
            tr.child(f"eval/{mid}", tags=meta[mid], metrics=metrics)
        tr.log_parent(metrics=_flat_metrics(summary))
        for path in (EVALUATION_CSV, CATALOG_CSV, BARRIERS_CSV):
            tr.log_artifact(root / path)
    atomic_write_json(root / METRICS_DIR / "eval.json", summary)
    return summary


def _evaluate_chunk(items: list[tuple[str, str, str]], x, y, cfg, device: str, threads: int) -> pd.DataFrame:
    """Evaluate (model id, file, sha256) items: one executor task."""
    from .storage import load_params
    from .zoo import resolve_device

    torch.set_num_threads(threads)
    models = {mid: load_params(Path(f), sha) for mid, f, sha in items}
    return evaluate(models, x, y, cfg, device=str(resolve_device(device)))


# Evaluation code whose change must invalidate cached per-model results.
_EVAL_CODE = ("metrics.py", "attacks.py", "models.py")
# Models per evaluation task: on CPU small tasks balance the load over processes; on a GPU a task's
# models are attacked together (`audit.metrics.StackedMLP`), so it takes more of them.
_CHUNK = {"cpu": 4, "cuda": 32}


def _evaluate_all(params: Params, root: Path, data: Dataset, files: dict, x, y, device: str) -> pd.DataFrame:
    """`audit.metrics.evaluate` over every model, in fixed chunks run by the executor.

    Each model's rows are written to ``results/eval-cache/`` as its chunk finishes, keyed by the
    model's sha256, the eval params, the data, the device and the evaluation code; a rerun after an
    interruption evaluates only the chunks with a model missing there. Chunks are fixed by position
    in the catalog, so a model is always evaluated beside the same others (identical floats).
    """
    cache = root / EVAL_CACHE
    remove_temporaries(cache)
    code = digest([sha256_file(Path(__file__).parent / name) for name in _EVAL_CODE])
    common_key = {"eval": to_dict(params.eval.metrics), "data": data.fingerprint, "n": len(y), "device": device,
                  "code": code}
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
            _write_csv(cached[mid], rows)
            found[mid] = rows

    workers = 1 if device == "cuda" and params.executor == "local" else params.eval.workers  # one GPU: in-process
    ex = executor_config(params, workers)
    run_tasks(_evaluate_chunk, tasks, record, config=ex, common=(x, y, params.eval.metrics, device, ex.cpus),
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


def _barrier_curves(params: Params, models: dict, x, y) -> pd.DataFrame:
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
            _write_csv(plots / f"{name.replace('@', '_at_')}_by_depth.csv", wide)
    if not curves.empty:
        first = curves[curves.pair == curves.pair.iloc[0]]
        wide = first.pivot(index="lam", columns="interpolation", values="loss").reset_index()
        _write_csv(plots / "barrier_loss.csv", wide)
        summary["barrier"] = {f"{kind}/{k}": round(float(curves[curves.interpolation == kind][k].mean()), 6)
                              for kind in curves.interpolation.unique()
                              for k in ("loss_barrier", "accuracy_barrier")}
    return summary


def _flat_metrics(summary: dict) -> dict[str, float]:
    return {f"{k}/{kk}": v for k, d in summary.items() for kk, v in d.items()}


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False, float_format="%.10g").encode())


# ---------------------------------------------------------------- audit


def load_results(params: Params, root: Path):
    """The evaluation table of the last run as `audit.claims.Results`."""
    from .claims import Results

    path = root / EVALUATION_CSV
    if not path.exists():
        raise PipelineError(f"{path}: no evaluated results yet; run the pipeline first (make repro or dvc repro)")
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: unreadable evaluation table ({str(e).splitlines()[0]}); rerun the "
                            "evaluate stage (dvc repro)") from None
    if table.empty:
        raise PipelineError(f"{path}: the evaluation table has no rows; rerun the evaluate stage (dvc repro)")
    missing = {"model", "kind", "method", "depth", "pool", "group", "metric", "eps", "value"} - set(table.columns)
    if missing:
        raise PipelineError(f"{path}: not an evaluation table (missing column {sorted(missing)[0]!r})")
    return Results(table, pool_depth=params.zoo.depth, main_side=params.merge.permute)


def _measured(results, metric: str, eps: float | None) -> bool:
    from .claims import NotMeasured

    try:
        results.values(metric, eps)
        return True
    except NotMeasured:
        return False


def run_audit(params: Params, root: Path) -> dict:
    from .claims import VERDICTS, ClaimsError, check_claims, claim_verdicts, evaluate_claims, load_claims
    from .compare import COLUMNS as COMPARE_COLUMNS, compare

    try:  # a bad registry is refused before anything is computed
        check_claims(load_claims(root / CLAIMS_YAML), methods=METHODS, depth=params.zoo.depth,
                     path=root / CLAIMS_YAML, beyond_depth=params.audit.beyond_depth)
    except ClaimsError as e:
        raise PipelineError(str(e)) from None
    results = load_results(params, root)
    a = params.audit
    try:
        claims = load_claims(root / CLAIMS_YAML)
        rows = evaluate_claims(claims, results, alpha=a.alpha, margin=a.equivalence_margin, n_boot=a.bootstrap,
                               seed=a.seed)
    except ClaimsError as e:
        raise PipelineError(str(e)) from None
    verdicts = claim_verdicts(rows)
    _write_csv(root / CLAIMS_CSV, rows)
    by_id = {c.id: c for c in claims}
    atomic_write_json(root / VERDICTS_JSON, [
        {**v, "source": by_id[v["id"]].source, "quote": by_id[v["id"]].quote, "control": by_id[v["id"]].control,
         "tests": rows[rows.id == v["id"]].replace({np.nan: None}).to_dict("records")}
        for v in verdicts.to_dict("records")])
    if "mergemany" in params.merge.methods and len(params.merge.methods) > 1:
        measured = [(m, e) for m, e in COMPARE_METRICS if _measured(results, m, e)]
        table = compare(results, baseline="mergemany", metrics=measured, alpha=a.alpha, n_boot=a.bootstrap,
                        seed=a.seed)
    else:  # nothing to compare with: an empty table keeps the stage's outs complete
        table = pd.DataFrame(columns=COMPARE_COLUMNS)
    _write_csv(root / COMPARE_CSV, table)
    counts = {v: int((verdicts.verdict == v).sum()) for v in VERDICTS}
    # "supported" claims that hold by construction are no evidence: counted apart as well.
    counts["by_construction"] = int(verdicts.caveat.str.startswith("holds by construction").sum())
    summary = {**counts, "claims": len(verdicts), "tests": len(rows)}
    with _tracker(params, root, "audit") as tr:
        tr.log_parent(params={"audit": a}, metrics={k: float(v) for k, v in summary.items()})
        for v in verdicts.to_dict("records"):
            tr.child(f"claim/{v['id']}", tags={"verdict": v["verdict"], "source": by_id[v["id"]].source},
                     metrics={f"{r.unit}/p_holm": r.p_holm for r in rows[rows.id == v["id"]].itertuples()})
        for path in (CLAIMS_CSV, VERDICTS_JSON, COMPARE_CSV):
            if (root / path).exists():
                tr.log_artifact(root / path)
    atomic_write_json(root / METRICS_DIR / "audit.json", summary)
    return summary


# ---------------------------------------------------------------- report


def run_report(params: Params, root: Path) -> dict:
    from .report import ReportError, build_report

    try:
        html_path = build_report(root, params)
    except ReportError as e:
        raise PipelineError(str(e)) from None
    figures = sorted(p.name for p in (html_path.parent / "figures").glob("*.png"))
    with _tracker(params, root, "report") as tr:
        tr.log_parent(params={"figures": ",".join(figures)})
        tr.log_artifact(html_path.parent / "report.md", "report")
        tr.log_artifact(html_path, "report")
        for name in figures:
            tr.log_artifact(html_path.parent / "figures" / name, "report/figures")
    return {"report": str(html_path.relative_to(root)), "figures": figures}


# ---------------------------------------------------------------- entry point shared by stages/


def _tracker(params: Params, root: Path, stage: str) -> Tracker:
    # The key names what the stage computes from (not where it logs or runs): a rerun after a
    # tracking fault resumes the same parent run.
    inputs = {k: v for k, v in to_dict(params).items() if k not in ("tracking", "executor", "ray", "resources")}
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
    except (ConfigError, DataError, StorageError, PipelineError, TaskError, ResourceError) as e:
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
