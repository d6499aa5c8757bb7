"""Shared benchmark pieces: the MNIST t10k split, a cache of models trained on it, and the
device's fp32 matmul throughput (the reference the throughput figures are divided by)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from audit.data import load_dataset
from audit.zoo import TrainConfig, train_batched

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
MNIST_T10K = Path(os.environ.get("AUDIT_MNIST_T10K", ROOT.parent.parent / "shared" / "data" / "mnist-t10k"))


def mnist_split():
    """MNIST t10k: first 8000 images train, last 2000 test."""
    if not MNIST_T10K.is_dir():
        sys.exit(f"benchmark data not found: {MNIST_T10K} (set AUDIT_MNIST_T10K to the t10k IDX directory)")
    return load_dataset("idx", path=MNIST_T10K, test_fraction=0.2)


def trained_models(data, n: int, widths=(512, 512, 512), epochs: int = 3) -> list[dict]:
    """n MLPs from seeds 0..n-1 (Adam 1e-3, batch 128), trained once and cached as safetensors."""
    cfg = TrainConfig(epochs=epochs, lr=1e-3, batch_size=128)
    key = hashlib.sha256(json.dumps([data.fingerprint, list(widths), cfg.to_dict()]).encode()).hexdigest()[:12]
    paths = [CACHE / f"mnist-{key}-seed{s}.safetensors" for s in range(n)]
    missing = [s for s, p in enumerate(paths) if not p.exists()]
    if missing:
        t = time.perf_counter()
        CACHE.mkdir(exist_ok=True)
        for m in train_batched(data, widths, cfg, missing):
            save_file(m.params, str(paths[m.seed]))
        print(f"(trained {len(missing)} models for the cache in {time.perf_counter() - t:.1f} s)")
    return [load_file(str(p)) for p in paths]


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gflops(device, n: int = 2048, reps: int = 10) -> float:
    """fp32 GEMM throughput of an n^3 product on ``device``, GFLOP/s."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_sample(dims: list[int]) -> float:
    """Training FLOPs per sample of an MLP with layer sizes ``dims``: forward 2*in*out per layer;
    backward: weight gradients 2*in*out each, input gradients for every layer but the first."""
    macs = [a * b for a, b in zip(dims[:-1], dims[1:])]
    return 2 * sum(macs) + 2 * sum(macs) + 2 * sum(macs[1:])
