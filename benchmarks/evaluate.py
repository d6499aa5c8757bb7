"""Seconds per model for the full metric set (`audit.metrics.evaluate`).

Workload: 784-512-512-512-10 MLPs trained on the MNIST t10k split (8000 train), evaluated on the
2000-image test split with FGSM over 6 eps, PGD 10 steps over 3 eps, DeepFool (max 50 iterations)
and both Lipschitz bounds on 100 points. Target on 2 CPU cores: <= 5 s per model.

    uv run python evaluate.py [--device cuda] [--models 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from audit.metrics import EvalConfig, evaluate
from audit.models import MLP
from common import mnist_split, trained_models


def timed(fn, repeat: int = 1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", type=int, default=2)
    args = ap.parse_args()
    data = mnist_split()
    models = trained_models(data, args.models)
    x, y = data.x_test.to(args.device), data.y_test.to(args.device)
    cfg = EvalConfig()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {len(y)} test images, "
          f"{args.models} models 784-512-512-512-10")
    evaluate(models[:1], x[:64], y[:64], cfg, device=args.device)  # warm-up (allocations, lazy imports)

    total, table = timed(lambda: evaluate(models, x, y, cfg, device=args.device))
    per_model = total / len(models)

    # Where the time goes, on the first model.
    from audit import metrics as M
    model = MLP.from_state_dict(models[0]).to(args.device).eval().requires_grad_(False)
    correct = M.clean_predictions(model, x, y, cfg.batch_size)[0]
    parts = {
        "clean": lambda: M.clean_predictions(model, x, y, cfg.batch_size),
        "fgsm (6 eps) + pgd (10 steps, 3 eps)": lambda: M.stacked_attack_metrics([models[0]], x, y, correct[None], cfg),
        "deepfool": lambda: M.deepfool_metrics(model, x, y, cfg.deepfool_eps, n_classes=10, correct=correct),
        "lipschitz global": lambda: M.global_lipschitz(models[0]),
        "lipschitz local (100 points)": lambda: M.local_lipschitz(models[0], x[:100], cfg.lipschitz_radius),
    }
    print(f"\nfull metric set: {per_model:.2f} s per model  (target <= 5 s on 2 cores: "
          f"{'met' if per_model <= 5 else 'NOT met'}, ratio {per_model / 5:.2f})")
    for name, fn in parts.items():
        print(f"  {name:30s} {timed(fn)[0]:7.3f} s")
    summary = table[table.model == "0"].set_index(["metric", "eps"]).value
    print("\nmodel 0:")
    print(summary.to_string())


if __name__ == "__main__":
    main()
