"""How much disk and time an experiment needs, estimated before it starts.

Disk is counted exactly from the architecture: float32 weights, one file per model, twice (the
working copy and DVC's cache, which copies where the file system cannot reflink), plus the
evaluation cache. Time is calibrated on this machine in a few seconds: a few training steps of the
architecture, one weight matching of two models and one attack gradient, multiplied by the counts
the params imply. It is an estimate (MergeMany's pass count and attacks' early stops are
typical figures, not this run's), good to a factor of about two; the train stage prints it and refuses to start when the disk
cannot hold the models or the time exceeds ``resources.max_hours``.
"""

from __future__ import annotations

import heapq
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import methods
from .ablation import merge_jobs, tree_jobs
from .config import Params, UserError
from .models import resolve_widths

GIB = 2**30
# Shapes of the known data sets: (input features, classes, training samples, test samples).
KNOWN_SHAPES = {"mnist": (784, 10, 60000, 10000), "fashion-mnist": (784, 10, 60000, 10000),
                "cifar10": (3072, 10, 50000, 10000), "cifar100": (3072, 100, 50000, 10000)}


class ResourceError(UserError, RuntimeError):
    """The experiment does not fit this machine; the message says what it needs."""


@dataclass(frozen=True)
class Shape:
    in_features: int
    n_classes: int
    n_train: int
    n_eval: int


@dataclass(frozen=True)
class Estimate:
    models: dict[str, int]  # base, regularized, merged (all methods)
    bytes_per_model: int
    disk_bytes: int  # models twice (workspace + DVC cache) and the evaluation cache
    seconds: dict[str, float]  # train, merge, evaluate
    device: str

    @property
    def hours(self) -> float:
        return sum(self.seconds.values()) / 3600

    def describe(self) -> str:
        n = sum(self.models.values())
        parts = ", ".join(f"{k} ~{_duration(v)}" for k, v in self.seconds.items())
        return (f"{n} models ({', '.join(f'{v} {k}' for k, v in self.models.items())}), "
                f"{_size(self.bytes_per_model)} each: needs {_size(self.disk_bytes)} of disk; "
                f"time on {self.device} ~{_duration(self.hours * 3600)} ({parts})")


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def model_counts(params: Params) -> dict[str, int]:
    z = params.zoo
    merged = sum(len(merge_jobs(params, m)) for m in params.merge.methods)
    return {"base": z.pools * z.pool_size, "regularized": len(z.regularized) * z.regularized_models, "merged": merged}


def parameter_count(shape: Shape, widths) -> int:
    dims = [shape.in_features, *resolve_widths(widths), shape.n_classes]
    return sum(a * b + b for a, b in zip(dims, dims[1:])) + 2 * shape.in_features  # + normalization mean, std


def _timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def calibrate(shape: Shape, widths, batch_size: int, device: torch.device) -> dict[str, float]:
    """Seconds for one training step of one model, one weight matching of two independently
    initialised models to convergence (float64 similarities, assignments; it takes about as long
    as matching two trained models: 0.26 s against 0.26 s for 784-512-512-512-10 here), and one
    forward + backward pass over 1000 inputs."""
    from .models import MLP
    from .rebasin import mlp_permutation_spec, weight_matching

    g = torch.Generator().manual_seed(0)
    model = MLP(shape.in_features, resolve_widths(widths), shape.n_classes).to(device)
    opt = torch.optim.Adam(model.parameters())
    x = torch.rand(batch_size, shape.in_features, generator=g).to(device)
    y = torch.randint(0, shape.n_classes, (batch_size,), generator=g).to(device)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    xe = torch.rand(1000, shape.in_features, generator=g).to(device).requires_grad_()
    ye = torch.randint(0, shape.n_classes, (1000,), generator=g).to(device)

    def gradient():
        torch.nn.functional.cross_entropy(model(xe), ye).backward()

    a = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[]):  # a second, independent model; the caller's RNG untouched
        torch.manual_seed(1)
        b = MLP(shape.in_features, resolve_widths(widths), shape.n_classes).state_dict()
    spec = mlp_permutation_spec(a)
    weight_matching(spec, a, b, seed=0, max_iter=1)  # compiles the assignment solver (numba cache)
    # As one merge worker runs it: one thread (the stage runs one process per core, see
    # `estimate`); the best of 3, as a single timing on a shared machine varies ~2x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        match = _timed(lambda: weight_matching(spec, a, b, seed=0), repeats=3)
    finally:
        torch.set_num_threads(threads)
    return {"step": _timed(step), "match_pair": match, "gradient_1000": _timed(gradient)}


# MergeMany's cost in pair matchings, measured on trained 784-512-512-512-10 MNIST models, one
# thread (benchmarks/rebasin.py prints both figures): the first pass aligns every model to an
# unaligned mean (0.9-1.1 pair matchings per model for 4 and 8 models); later passes start from
# kept solver states and similarity terms (0.11-0.15 per model and pass); 4, 8 and 16 models
# converged after 32, 37 and up to 73 passes (pairs: 2-3).
MERGEMANY_FIRST_PASS = 0.95
MERGEMANY_LATER_PASS = 0.125
# The calibration matches two untrained models (no data to train them on yet); trained models take
# more sweeps. One-thread pair matchings of the trained MNIST models above took 1.46-1.90x the
# calibrated time (median of 8 over the calibration's own median of 3, four runs).
TRAINED_OVER_CALIBRATED = 1.7
MERGEMANY_PASSES = {2: 3, 4: 32, 8: 40, 16: 73}  # typical passes to convergence by group size


def mergemany_passes(k: int, cap: int) -> int:
    """Passes MergeMany of k models typically takes (the next measured size up), at most ``cap``."""
    sizes = sorted(MERGEMANY_PASSES)
    return min(cap, MERGEMANY_PASSES[next((s for s in sizes if s >= k), sizes[-1])])


def makespan(costs: Sequence[float], workers: int) -> float:
    """Finish time of tasks of these costs on ``workers`` workers, each task given to the first
    free worker, biggest first (as the merge stage orders them): the longest task bounds it from
    below, so a few big MergeMany groups are not assumed to split across workers."""
    loads = [0.0] * max(1, workers)
    for cost in sorted(costs, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + cost)
    return max(loads)


def estimate(params: Params, shape: Shape, device: torch.device | None = None) -> Estimate:
    device = device or torch.device("cuda" if torch.cuda.is_available() and params.zoo.device != "cpu" else "cpu")
    z, m, e = params.zoo, params.merge, params.eval.metrics
    counts = model_counts(params)
    per_model = parameter_count(shape, z.arch) * 4 + 4096  # float32 + safetensors header and manifest
    n_models = sum(counts.values())
    disk = 2 * per_model * n_models + n_models * 4096  # workspace + DVC cache; eval cache rows
    c = calibrate(shape, z.arch, z.train.batch_size, device)
    steps = z.train.epochs * math.ceil(shape.n_train / z.train.batch_size)
    train = (counts["base"] + counts["regularized"]) * steps * c["step"]
    # Weight matching, in pair matchings per task of each method (`audit.methods` cost): a tree of
    # pair merges (one per pool, seed and side with adjacent pairing, sharing its lower stages;
    # k - 1 per group otherwise) or MergeMany's passes (see above). Each method is a stage of its
    # own, run by merge.workers processes (0: one per core), one thread each; on a GPU one at a time.
    workers = (m.workers or os.cpu_count() or 1) if device.type == "cpu" else 1
    merge = 0.0
    for method in m.methods:
        cost = methods.get(method).cost
        jobs = merge_jobs(params, method)
        if cost == "tree" and m.pairing == "adjacent":
            tasks = [float(tree.pair_merges) for tree in tree_jobs(params, jobs)]
        elif cost == "tree":
            tasks = [len(job.members) - 1.0 for job in jobs]
        elif cost == "passes":
            tasks = [len(job.members) * (MERGEMANY_FIRST_PASS + MERGEMANY_LATER_PASS
                                         * (mergemany_passes(len(job.members), m.mergemany_max_iter) - 1))
                     for job in jobs]
        else:
            tasks = []
        merge += makespan(tasks, workers) * c["match_pair"] * TRAINED_OVER_CALIBRATED
    # Gradients per input: FGSM 1 per eps, PGD steps per eps, DeepFool ~10 iterations x classes.
    grads = len(e.fgsm_eps) + e.pgd_steps * len(e.pgd_eps) + 10 * shape.n_classes
    evaluate = n_models * grads * c["gradient_1000"] * shape.n_eval / 1000
    return Estimate(counts, per_model, disk, {"train": train, "merge": merge, "evaluate": evaluate}, device.type)


def shape_of(params: Params, root: Path) -> Shape:
    """The data set's shape: from the data stage's record if present, else known sizes, else loaded."""
    import json

    record = root / "results" / "data.json"
    n_eval = params.data.eval_samples
    d = json.loads(record.read_text()) if record.exists() else None
    # The record describes the last run's data set: used only when it is the one these params name
    # (an IDX directory is not named in it, so IDX data are loaded).
    if d is not None and d.get("name") == params.data.name != "idx":
        return Shape(math.prod(d["image_shape"]), d["n_classes"], d["n_train"], min(d["n_test"], n_eval or d["n_test"]))
    if params.data.name in KNOWN_SHAPES:
        f, k, n, t = KNOWN_SHAPES[params.data.name]
        return Shape(f, k, n, min(t, n_eval or t))
    from .data import load_from_params

    data = load_from_params(params, root)
    return Shape(data.in_features, data.n_classes, len(data.y_train), min(len(data.y_test), n_eval or len(data.y_test)))


def shortfalls(params: Params, root: Path, est: Estimate) -> list[str]:
    """Why the experiment does not fit here (empty if it does): disk, then time."""
    out = []
    free = shutil.disk_usage(root).free
    margin = params.resources.disk_margin_gib
    if est.disk_bytes + margin * GIB > free:
        out.append(f"only {_size(free)} free under {root} (keeping resources.disk_margin_gib {margin:g}); "
                   "free disk or lower zoo.pools / zoo.depth")
    limit = params.resources.max_hours
    # The time is one machine's; a Ray cluster divides it by its size, unknown here.
    if limit is not None and est.hours > limit and params.executor == "local":
        out.append(f"over resources.max_hours {limit:g}; use a GPU (zoo.device), a Ray cluster (executor: ray), "
                   "fewer models, or raise the limit")
    return out


def check_fits(params: Params, root: Path, est: Estimate) -> None:
    """ResourceError saying what is needed when the experiment does not fit (see `shortfalls`)."""
    if problems := shortfalls(params, root, est):
        raise ResourceError(f"not started: {est.describe()}; {'; '.join(problems)}")
