"""Paper-scale zoo throughput: the paper's MLP (3072-512-512-512-256-10) on CIFAR-10-shaped inputs.

Trains K models per batched pass (`audit.zoo.train_batched`, the engine the pipeline uses on a GPU)
on synthetic 3x32x32 tensors and prints, all measured in this one run:
  * models x epochs per minute (one epoch = ``--samples`` images, batch ``--batch``);
  * the training FLOP rate as a fraction of the device's fp32 matmul throughput (4096^3 GEMM);
  * the time the 1600-model zoo would take: 1600 models x 20 epochs x 50,000 images, multiplied
    out from the measured per-sample rate (target on one H100-class GPU: <= 10 minutes).
Epoch time is the difference of a 2-epoch and a 1-epoch run, so fixed costs cancel. Synthetic data
is fine here: throughput does not depend on the pixel values.

    uv run python benchmarks/zoo_scale.py                      # CPU: a small sample, same code path
    uv run python benchmarks/zoo_scale.py --device cuda --models 64 --samples 50000
"""

from __future__ import annotations

import argparse
import time

import torch

from audit.data import from_arrays
from audit.models import PRESETS
from audit.zoo import TrainConfig, resolve_device, train_batched
from common import flops_per_sample, peak_gflops, sync

PAPER_MODELS, PAPER_EPOCHS, CIFAR_TRAIN = 1600, 20, 50_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", type=int, default=None, help="models per batched pass (default: 64 on GPU, 4 on CPU)")
    ap.add_argument("--samples", type=int, default=None, help="images per epoch (default: 50000 on GPU, 2000 on CPU)")
    ap.add_argument("--batch", type=int, default=500, help="batch size (the paper preset's)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    k = args.models or (64 if gpu else 4)
    n = args.samples or (CIFAR_TRAIN if gpu else 2000)
    widths = PRESETS["paper"]
    dims = [3 * 32 * 32, *widths, 10]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n + 100, 3, 32, 32, generator=g).numpy()
    y = torch.randint(0, 10, (n + 100,), generator=g).numpy()
    data = from_arrays("synthetic-cifar10", x[:n], y[:n], x[n:], y[n:])
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    peak = peak_gflops(device, n=4096)
    print(f"device {name}, torch {torch.__version__}; fp32 matmul {peak:.0f} GFLOP/s (4096^3)")

    def run(epochs: int) -> float:
        sync(device)
        t = time.perf_counter()
        train_batched(data, widths, TrainConfig(epochs=epochs, batch_size=args.batch), list(range(k)), device=device)
        sync(device)
        return time.perf_counter() - t

    run(1)  # warm-up: kernels, allocator
    epoch = run(2) - run(1)
    samples_per_s = n * k / epoch
    gflops = samples_per_s * flops_per_sample(dims) / 1e9
    model_epochs_per_min = 60 * k / epoch * n / CIFAR_TRAIN  # in epochs of the full 50,000 images
    zoo_s = PAPER_MODELS * PAPER_EPOCHS * CIFAR_TRAIN / samples_per_s
    print(f"{k} models per pass, {n} images per epoch, batch {args.batch}: {epoch:.2f} s per epoch of the pass")
    print(f"throughput: {samples_per_s:,.0f} samples/s, {model_epochs_per_min:.1f} model-epochs (50,000 images) "
          f"per minute, {gflops:.0f} GFLOP/s = {gflops / peak:.1%} of the matmul throughput")
    print(f"estimate, 1600-model zoo (20 epochs of 50,000 images): {zoo_s / 60:.1f} min on this device "
          f"(target on one H100-class GPU: <= 10 min; ratio {zoo_s / 600:.2f})")


if __name__ == "__main__":
    main()
