"""Stage `merge` (one per method): every job of the ablation (`audit.ablation`) merged by the
method's registered runner (`audit.merge.RUNNERS`), into one ModelStore per method."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import methods
from ..ablation import MergeJob, TreeJob, merge_jobs, tree_jobs
from ..config import Params
from ..imports import code_digest
from ..executor import Task, run_tasks, start_tasks
from ..merge import RUNNERS, hierarchical_tree
from ..models import resolve_device
from ..paths import MERGED_DIR, METRICS_DIR, pool_dir
from ..rebasin import mlp_permutation_spec
from ..storage import ModelStore, atomic_write_json, digest, load_weights
from .common import PipelineError, executor_config, open_store, stage_main, tracker


def _load(files: list[str], shas: list[str], device: str) -> list[dict]:
    dev = resolve_device(device)
    return [{k: v.to(dev) for k, v in load_weights(Path(f), sha).items()} for f, sha in zip(files, shas)]


def run_job(job: MergeJob, files: list[str], shas: list[str], merge: dict, threads: int):
    """One merge as an executor task: load the members (sha256-verified), merge, return the result.

    On a GPU the similarity matrices of weight matching are computed there (float64); the
    assignment itself is solved on the CPU (see audit.rebasin.weight_matching)."""
    torch.set_num_threads(threads)
    t = time.perf_counter()
    models = _load(files, shas, merge["device"])
    spec = mlp_permutation_spec(models[0])  # the stores checked that every member is the zoo's MLP
    res = RUNNERS[job.method](models, spec, job, merge)
    return {k: v.cpu() for k, v in res.params.items()}, res.provenance, time.perf_counter() - t


def run_tree(tree: TreeJob, files: list[str], shas: list[str], merge: dict, threads: int):
    """A whole pool's tree as one executor task: every needed node, each with its subtree's time."""
    torch.set_num_threads(threads)
    t = time.perf_counter()
    models = _load(files, shas, merge["device"])
    spec = mlp_permutation_spec(models[0])
    nodes = hierarchical_tree(models, spec, seed=tree.seed, lam=merge["lam"], permute=tree.side,
                              max_iter=merge["max_iter"], names=[f"s{s}" for s in tree.members], depth=tree.depth)
    seconds = (time.perf_counter() - t) / len(tree.jobs)  # the tree's time, shared among its models
    return [(job, {k: v.cpu() for k, v in nodes[(job.depth, job.group)].params.items()},
             nodes[(job.depth, job.group)].provenance, seconds) for job in tree.jobs]


def job_tags(job: MergeJob) -> dict:
    return {"kind": "merged", **{("merge_seed" if k == "seed" else k): v for k, v in job.info().items()
                                 if k != "members" and v is not None}, "n_models": len(job.members)}


def run(params: Params, root: Path, method: str) -> dict:
    """Merge the ablation's groups with one method: models/merged/<method>/."""
    if method not in params.merge.methods:
        raise PipelineError(f"merge method {method!r} is not in merge.methods {list(params.merge.methods)}")
    entry = methods.get(method)
    jobs = merge_jobs(params, method)
    stores = {p: open_store(pool_dir(root, p)) for p in range(params.zoo.pools)}
    # Each merged model is keyed by what it depends on: its job (method, pool, depth, group, seed,
    # side), its members' sha256s, the merge settings its method reads and the merging code. Adding
    # a seed, a pool or a depth computes only the new models; a changed setting, member or code
    # recomputes only the models that depend on it; an interrupted run resumes.
    out = ModelStore(root / MERGED_DIR / method, {"method": method}, reset=True)
    code = code_digest(__name__)  # this module's runners and what they call (audit.merge, rebasin ...)
    settings = {k: getattr(params.merge, k) for k in entry.settings}

    def recipe(job: MergeJob) -> str:
        pool = stores[job.pool]
        if lost := [s for s in job.members if str(s) not in pool.entries]:
            raise PipelineError(f"{pool.dir}: no base model of seed {lost[0]}, which {job.model_id} merges; "
                                "rerun the train stage (dvc repro)")
        shas = [pool.entries[str(s)]["sha256"] for s in job.members]
        return digest({"job": job.info(), "members": shas, "settings": settings, "code": code})

    recipes = {j.key: recipe(j) for j in jobs}
    done = out.finished(recipes)
    out.retain(done)  # models of another recipe go now: a failed or interrupted run never mixes them in
    todo = [j for j in jobs if j.key not in done]
    # Biggest groups first so the workers finish together.
    todo.sort(key=lambda j: -len(j.members))
    ex = executor_config(params, params.merge.workers)
    merge_cfg = {"max_iter": params.merge.max_iter, "mergemany_max_iter": params.merge.mergemany_max_iter,
                 "lam": params.merge.lam, "pairing": params.merge.pairing, "device": params.zoo.device}
    summary = {"jobs": len(jobs), "reused": len(jobs) - len(todo), "workers": ex.workers}
    t0 = time.perf_counter()

    def inputs(job):
        store = stores[job.pool]
        keys = [str(s) for s in job.members]
        return [str(store.path(k)) for k in keys], [store.entries[k]["sha256"] for k in keys]

    # One tree per pool, seed and side: a depth-d model is a stage-d node, built from the stage
    # d-1 nodes (15 pair merges for a pool of 16, not 49 from scratch per group).
    by_tree = entry.cost == "tree" and params.merge.pairing == "adjacent"
    if by_tree:
        trees = tree_jobs(params, todo)
        trees.sort(key=lambda tr: -tr.pair_merges)  # biggest first, as `resources.makespan` schedules them
        fn, tasks = run_tree, [Task(f"merge {tr.name}", (tr, *inputs(tr))) for tr in trees]
    else:
        fn, tasks = run_job, [Task(f"merge {job.model_id}", (job, *inputs(job))) for job in todo]
    # Local workers start (imports, ~2.5 s) and merge while the tracker opens (~1.7 s); the
    # results are recorded and logged as they come, once it is open.
    common = (merge_cfg, ex.cpus)
    with start_tasks(fn, tasks, config=ex, common=common), \
            tracker(params, root, f"merge-{method}") as tr:
        tr.log_parent(params={"merge": params.merge, "zoo.depth": params.zoo.depth, "zoo.pools": params.zoo.pools,
                              "method": method, "workers": ex.workers, "executor": params.executor})

        def log(job: MergeJob):
            e = out.entries[job.key]
            prov = e["provenance"]
            tr.child(job.model_id, tags={**job_tags(job), "weights_path": str(out.path(job.key).relative_to(root)),
                                         "weights_sha256": e["sha256"]},
                     params={"members": ",".join(map(str, job.members)), "tree": prov.get("tree", "")},
                     metrics={"seconds": e["seconds"], **entry.logged(prov)})

        def record(task: Task, result):
            job = task.args[0]
            merged, prov, seconds = result
            out.add(job.key, f"{job.key}.safetensors", merged,
                    {**job.info(), "recipe": recipes[job.key], "seconds": round(seconds, 3), "provenance": prov})
            log(job)

        for job in jobs:  # models finished by an interrupted run: logged now if they were not then
            if job.key in done:
                log(job)

        def record_tree(task: Task, result):  # a tree returns only its unfinished nodes
            for job, merged, prov, seconds in result:
                record(Task(task.name, (job,)), (merged, prov, seconds))

        run_tasks(fn, tasks, record_tree if by_tree else record, config=ex, common=common,
                  desc=f"merge {method}", unit="tree" if by_tree else "group")
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        if entry.cost == "passes":
            provs = [e["provenance"] for e in out.entries.values()]
            summary["converged"] = sum(entry.converged(p) for p in provs)
            summary["iterations_max"] = max((p["iterations"] for p in provs), default=0)
        tr.log_parent(metrics={k: float(v) for k, v in summary.items()})
    atomic_write_json(root / METRICS_DIR / f"merge-{method}.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    stage_main(run, argv)
