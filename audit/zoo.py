"""Training many MLPs that differ only in their seed.

A model's seed fixes three independent random streams, derived with `numpy.random.SeedSequence`:
its initialization, the order of the training data, and (if on) the augmentation draws. Both
engines use the same streams, so they start from bit-identical weights and see identical batches:

* ``loop``: one `audit.models.MLP` at a time, plain autograd (fastest on a few CPU cores).
* ``batched``: K models stacked into (K, out, in) tensors and trained in one pass with
  ``torch.baddbmm``; K models' losses are summed, so each model receives exactly its own gradient,
  and Adam/SGD are elementwise, so the update equals the per-model one up to float rounding. This
  is the engine that pays on a GPU.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import __version__
from .config import DEVICES, ENGINES, OPTIMIZERS, SCHEDULES, TrainConfig  # noqa: F401 (re-exported)
from .data import Dataset
from .executor import ExecutorConfig, Task, run_tasks
from .imports import code_digest
from .clean import clean_predictions
from .models import MLP, resolve_device, resolve_widths, stack_params, stacked_forward  # noqa: F401 (resolve_device re-exported)
from .storage import ModelStore

def resolve_engine(engine: str, device: torch.device) -> str:
    """'auto' -> batched on GPU, loop on CPU (see benchmarks/zoo.py for the measurement behind it)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto":
        return "batched" if device.type == "cuda" else "loop"
    return engine


def stream_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one named random stream of a model's seed."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(stream.encode())])
    return int(ss.generate_state(1, np.uint64)[0] & np.uint64(2**63 - 1))


def _generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, stream))


def init_params(in_features: int, widths: Sequence[int], n_classes: int, seed: int,
                mean=None, std=None) -> dict[str, Tensor]:
    """PyTorch's default Linear init (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias),
    drawn from the model's own 'init' stream instead of the global RNG."""
    g = _generator(seed, "init")
    model = MLP(in_features, widths, n_classes, mean, std)
    params = model.state_dict()
    for name, t in params.items():
        if name.startswith(("hidden.", "head.")):
            fan_in = params[name.rsplit(".", 1)[0] + ".weight"].shape[1]
            bound = 1.0 / math.sqrt(fan_in)
            t.copy_((torch.rand(t.shape, generator=g) * 2 - 1) * bound)
    return params


class _DataStream:
    """Per-model batch indices and augmentation, drawn from that model's own streams (on CPU)."""

    def __init__(self, seed: int, n: int, batch_size: int, augment: bool):
        self.order = _generator(seed, "data")
        self.aug = _generator(seed, "augment") if augment else None
        self.n, self.batch_size = n, batch_size

    def epoch(self) -> list[Tensor]:
        return list(torch.randperm(self.n, generator=self.order).split(self.batch_size))

    def augment(self, x: Tensor) -> Tensor:
        """Random crop with 4 px zero padding and a horizontal flip with p = 0.5, per sample."""
        if self.aug is None:
            return x
        b, _, h, w = x.shape
        shifts = torch.randint(0, 9, (b, 2), generator=self.aug)
        flips = torch.rand(b, generator=self.aug) < 0.5
        padded = F.pad(x, (4, 4, 4, 4))
        rows = (shifts[:, :1] + torch.arange(h)).to(x.device)  # (b, h)
        cols = (shifts[:, 1:] + torch.arange(w)).to(x.device)  # (b, w)
        out = padded[torch.arange(b, device=x.device)[:, None, None, None],
                     torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                     rows[:, None, :, None], cols[:, None, None, :]]
        return torch.where(flips.to(x.device)[:, None, None, None], out.flip(-1), out)


def _optimizer(params, cfg: TrainConfig, total_steps: int):
    # Fused kernels: one pass over all parameters per step instead of ~10 elementwise passes;
    # on 2 CPU cores this takes Adam from ~13.5 to ~7.7 ms per batch-128 step of a 3x512 MLP.
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps) if cfg.schedule == "cosine" else None
    return opt, sched


def _penalty(tensors, cfg: TrainConfig) -> Tensor | float:
    pen = 0.0
    if cfg.l1:
        pen = pen + cfg.l1 * sum(t.abs().sum() for t in tensors)
    if cfg.l2:
        pen = pen + cfg.l2 * sum(t.pow(2).sum() for t in tensors)
    return pen


def _fit(cfg: TrainConfig, trainable: list[Tensor], n_samples: int, epoch_batches: Callable[[], Iterable],
         batch_loss: Callable[[object], Tensor]) -> None:
    """The optimization loop both engines share: loss + penalty, step, schedule, per epoch."""
    opt, sched = _optimizer(trainable, cfg, cfg.epochs * math.ceil(n_samples / cfg.batch_size))
    for _ in range(cfg.epochs):
        for batch in epoch_batches():
            loss = batch_loss(batch) + _penalty(trainable, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()


@dataclass
class TrainedModel:
    seed: int
    params: dict[str, Tensor]  # on CPU
    metrics: dict[str, float]  # train/test accuracy and loss after training
    engine: str = "loop"
    device: str = "cpu"


def evaluate_params(params: dict[str, Tensor], x: Tensor, y: Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of one MLP state dict on (x, y), on x's device."""
    correct, loss = clean_predictions(MLP.from_state_dict(params).to(x.device), x, y, batch_size)
    return float(correct.double().mean()), loss


def _final_metrics(params, data: Dataset, device) -> dict[str, float]:
    out = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        acc, loss = evaluate_params(params, x.to(device), y.to(device))
        out[f"{split}_accuracy"], out[f"{split}_loss"] = acc, loss
    return out


def train_loop(data: Dataset, widths: Sequence[int], cfg: TrainConfig, seed: int, *,
               device: torch.device | str = "cpu") -> TrainedModel:
    """Train one MLP with plain autograd. ``widths``: hidden widths or a preset name."""
    device, widths = torch.device(device), resolve_widths(widths)
    model = MLP(data.in_features, widths, data.n_classes, data.mean, data.std)
    model.load_state_dict(init_params(data.in_features, widths, data.n_classes, seed, data.mean, data.std))
    model.to(device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    stream = _DataStream(seed, len(y), cfg.batch_size, cfg.augment)
    model.train()

    def batch_loss(idx: Tensor) -> Tensor:
        idx = idx.to(device)
        return F.cross_entropy(model(stream.augment(x[idx])), y[idx])

    _fit(cfg, list(model.parameters()), len(y), stream.epoch, batch_loss)
    params = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return TrainedModel(seed, params, _final_metrics(params, data, device), "loop", device.type)


def train_batched(data: Dataset, widths: Sequence[int], cfg: TrainConfig, seeds: Sequence[int], *,
                  device: torch.device | str = "cpu") -> list[TrainedModel]:
    """Train len(seeds) MLPs in one pass with stacked weights (see module docstring)."""
    device, widths = torch.device(device), resolve_widths(widths)
    k = len(seeds)
    inits = [init_params(data.in_features, widths, data.n_classes, s, data.mean, data.std) for s in seeds]
    stacked = {n: t.to(device) for n, t in stack_params(inits).items()}
    trainable = [stacked[n].requires_grad_() for n in stacked if not n.startswith("norm.")]
    x = data.x_train.to(device)
    x_flat = x.flatten(1)
    y = data.y_train.to(device)
    streams = [_DataStream(s, len(y), cfg.batch_size, cfg.augment) for s in seeds]

    def batch_loss(batch: tuple[Tensor, ...]) -> Tensor:
        idx = torch.stack(batch).to(device)  # (K, B)
        if cfg.augment:
            h = torch.stack([s.augment(x[i]).flatten(1) for s, i in zip(streams, idx)])
        else:
            h = x_flat[idx]  # (K, B, in)
        logits = stacked_forward(stacked, h, per_model=True)
        # Sum over models of each model's mean loss: model k's gradient is its own loss's.
        return F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="none").view(k, -1).mean(1).sum()

    _fit(cfg, trainable, len(y), lambda: zip(*(s.epoch() for s in streams)), batch_loss)
    out = []
    for j, s in enumerate(seeds):
        params = {n: t[j].detach().cpu().clone() for n, t in stacked.items()}
        out.append(TrainedModel(s, params, _final_metrics(params, data, device), "batched", device.type))
    return out


def zoo_header(data: Dataset, widths: Sequence[int], cfg: TrainConfig) -> dict:
    """What every model of a zoo shares; a zoo directory is only ever extended under the same header."""
    return {
        "dataset": data.summary(),
        "architecture": {"in_features": data.in_features, "widths": list(resolve_widths(widths)),
                         "n_classes": data.n_classes},
        "train": cfg.to_dict(),
        # The training code (every project module it runs): edited code retrains, never reuses.
        "code": code_digest("audit.zoo"),
        "versions": {"audit": __version__, "torch": torch.__version__},
    }


def model_filename(seed: int) -> str:
    return f"model-{seed:06d}.safetensors"


def train_shard(seeds: Sequence[int], data: Dataset, widths: Sequence[int], cfg: TrainConfig, device: str,
                engine: str, threads: int) -> list[TrainedModel]:
    """Train a few models (one batched pass, or one model with the loop engine): one executor task."""
    torch.set_num_threads(threads)
    dev = resolve_device(device)  # resolved where the task runs: a Ray worker may have the GPU
    engine = resolve_engine(engine, dev)
    if engine == "loop":
        return [train_loop(data, widths, cfg, s, device=dev) for s in seeds]
    return train_batched(data, widths, cfg, list(seeds), device=dev)


def train_zoo(directory, data: Dataset, widths: Sequence[int], cfg: TrainConfig, seeds: Sequence[int], *,
              device: str = "auto", engine: str = "auto", models_per_pass: int = 32,
              progress: bool = True, executor: ExecutorConfig | None = None, reset: bool = False) -> ModelStore:
    """Train one model per seed into ``directory`` (see `audit.storage`), resuming: models already
    stored and verified are kept, only missing ones are trained. Each model is saved as soon as it
    (or its batched pass) finishes, so an interruption loses at most the passes in flight.

    ``executor`` runs the passes elsewhere (Ray tasks; see `audit.executor`); by default they run
    here, one after another. ``reset``: a directory holding models of other settings is emptied
    instead of refused (see `audit.storage.ModelStore`).
    """
    if len(set(seeds)) != len(seeds):
        raise ValueError("zoo seeds must be distinct")
    executor = executor or ExecutorConfig()
    dev = resolve_device(device) if executor.kind == "local" else torch.device("cpu")
    engine_here = resolve_engine(engine, dev)
    store = ModelStore(directory, zoo_header(data, widths, cfg), informational=("versions",), reset=reset)
    done = store.finished()
    todo = [s for s in seeds if str(s) not in done]
    # A task is one batched pass of models, or one model with the loop engine. Under Ray 'auto' is
    # resolved on the worker, so its shards are passes. The threads are fixed here so that every
    # executor computes the same floats.
    loop = engine == "loop" or (executor.kind == "local" and engine_here == "loop")
    per_pass = 1 if loop else max(1, models_per_pass)
    threads = torch.get_num_threads() if executor.kind == "local" else max(1, int(executor.cpus))
    tasks = [Task(f"train {Path(directory).name} seeds {c[0]}..{c[-1]}", (c,))
             for c in (todo[i:i + per_pass] for i in range(0, len(todo), per_pass))]

    def save(task, trained):
        for m in trained:
            store.add(str(m.seed), model_filename(m.seed), m.params,
                      {"seed": m.seed, "metrics": m.metrics, "engine": m.engine, "device": m.device})

    run_tasks(train_shard, tasks, save, config=executor, common=(data, widths, cfg, device, engine, threads),
              desc=f"zoo {Path(directory).name} ({len(seeds) - len(todo)}/{len(seeds)} done)", unit="pass",
              progress=progress)
    return store
