"""What the golden fixture pins, computed from its committed base models (see make.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
EVAL_SAMPLES = 100  # first digits test samples evaluated


def weights_sha256(params: dict) -> str:
    """sha256 over the tensors' names, shapes, dtypes and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(params):
        t = params[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def compute() -> dict:
    from audit.config import EvalConfig
    from audit.data import load_dataset
    from audit.merge import hierarchical_tree, merge_many, naive_merge
    from audit.metrics import evaluate
    from audit.rebasin import mlp_permutation_spec, weight_matching
    from audit.storage import load_weights

    base = [load_weights(HERE / f"base-{s}.safetensors") for s in range(4)]
    spec = mlp_permutation_spec(base[0])
    match = weight_matching(spec, base[0], base[1], seed=0)
    merged = {"naive": naive_merge(base).params, "mergemany": merge_many(base, spec, seed=0).params}
    tree = hierarchical_tree(base, spec, seed=0)
    merged["hierarchical-d1-g0"], merged["hierarchical-d2-g0"] = tree[(1, 0)].params, tree[(2, 0)].params
    data = load_dataset("digits")
    x, y = data.x_test[:EVAL_SAMPLES], data.y_test[:EVAL_SAMPLES]
    cfg = EvalConfig(fgsm_eps=(0.0, 0.05), pgd_eps=(0.05,), pgd_steps=3, deepfool_eps=(0.5,), deepfool_max_iter=10,
                     lipschitz_points=2)
    torch.set_num_threads(1)
    table = evaluate(merged, x, y, cfg, device="cpu")
    rows = [[r.model, r.metric, None if np.isnan(r.eps) else float(r.eps), float(r.value)]
            for r in table.itertuples()]
    return {"perms": {p: t.tolist() for p, t in match.perms.items()},
            "objective": match.objective,
            "merged_sha256": {name: weights_sha256(p) for name, p in merged.items()},
            "evaluation": rows}
