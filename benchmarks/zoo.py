"""Zoo training throughput, loop vs batched, as a fraction of this machine's matmul throughput.

For a 784-512-512-512-10 MLP at batch 128 (Adam) it prints samples per second per model and the
training FLOP rate, next to two references measured in the same run:
  * peak: fp32 GEMM throughput of a large square product (2048^3);
  * shape-bound: the same GEMMs one training step performs (forward, weight and input gradients
    at batch 128), run back to back with nothing else — the ceiling for these shapes.
Epoch time is the difference of a 3-epoch and a 1-epoch run, so fixed costs (setup, the final
evaluation) cancel. Target on CPU: >= 70% of the matmul throughput.

    uv run python benchmarks/zoo.py [--device cuda] [--models 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from audit.data import from_arrays
from audit.zoo import TrainConfig, resolve_device, train_batched, train_loop
from common import flops_per_sample, peak_gflops, sync

WIDTHS = (512, 512, 512)
BATCH = 128


def shape_bound_gflops(dims, device, reps=50) -> float:
    ws = [torch.randn(o, i, device=device) for i, o in zip(dims[:-1], dims[1:])]
    hs = [torch.randn(BATCH, d, device=device) for d in dims]
    gs = [torch.randn(BATCH, d, device=device) for d in dims[1:]]

    def step():
        for h, w in zip(hs, ws):
            h @ w.T  # forward
        for i, (h, g, w) in enumerate(zip(hs, gs, ws)):
            g.T @ h  # weight gradient
            if i:
                g @ w  # input gradient

    step()
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        step()
    sync(device)
    return flops_per_sample(dims) * BATCH * reps / (time.perf_counter() - t) / 1e9


def epoch_seconds(fn) -> float:
    t = time.perf_counter()
    fn(1)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    fn(3)
    t3 = time.perf_counter() - t
    return (t3 - t1) / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", type=int, default=8, help="models per batched pass")
    ap.add_argument("--samples", type=int, default=8000, help="training set size (synthetic MNIST-shaped)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    n = args.samples
    x = torch.rand(n + 256, 1, 28, 28, generator=g).numpy()
    y = torch.randint(0, 10, (n + 256,), generator=g).numpy()
    data = from_arrays("synthetic-mnist", x[:n], y[:n], x[n:], y[n:])
    dims = [784, *WIDTHS, 10]
    fps = flops_per_sample(dims)
    peak, bound = peak_gflops(device), shape_bound_gflops(dims, device)
    print(f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"matmul: peak {peak:.0f} GFLOP/s (2048^3), training shapes {bound:.0f} GFLOP/s; "
          f"{fps / 1e6:.2f} MFLOP per training sample")
    train_loop(data, WIDTHS, TrainConfig(epochs=1, batch_size=BATCH), 0, device=device)  # warm-up
    rows = [("loop", 1, lambda e: train_loop(data, WIDTHS, TrainConfig(epochs=e, batch_size=BATCH), 0, device=device)),
            (f"batched x{args.models}", args.models,
             lambda e: train_batched(data, WIDTHS, TrainConfig(epochs=e, batch_size=BATCH),
                                     list(range(args.models)), device=device))]
    for name, k, fn in rows:
        sec = epoch_seconds(fn)
        sps = n * k / sec
        gf = sps * fps / 1e9
        print(f"{name:>12}: {sps / k:8.0f} samples/s/model, {sps:8.0f} samples/s in all, {gf:6.1f} GFLOP/s = "
              f"{gf / peak:5.1%} of peak, {gf / bound:5.1%} of the shape bound")
    print("target: >= 70% of the matmul throughput")


if __name__ == "__main__":
    main()
