"""A synthetic evaluation table with planted effects, in the layout of results/evaluation.csv."""

import numpy as np
import pandas as pd

from audit.methods import METHODS


def synthetic_results(*, pools=3, depth=3, seeds=(0, 1), effects=None, noise=0.002, seed=0) -> pd.DataFrame:
    """Base models ~ 0.9 accuracy; merged model value = mean of its base models + effects[method](depth)
    + noise. ``effects``: {method: callable(depth) -> shift}. Metric: clean_accuracy (eps NaN)."""
    rng = np.random.default_rng(seed)
    effects = effects or {}
    size = 2 ** depth
    rows = []
    base = {}
    for p in range(pools):
        for i in range(size):
            s = p * size + i
            base[s] = 0.9 + rng.normal(0, 0.01)
            rows.append({"model": f"base/p{p}/s{s}", "kind": "base", "method": "none", "pool": p, "depth": 0,
                         "n_models": 1, "seed": s, "group": np.nan, "merge_seed": np.nan, "side": np.nan,
                         "value": base[s]})
    for method, spec in METHODS.items():
        shift = effects.get(method, lambda d: 0.0)
        for p in range(pools):
            for d in range(1, depth + 1):
                for g in range(size // 2 ** d):
                    members = [p * size + g * 2 ** d + j for j in range(2 ** d)]
                    mean = np.mean([base[s] for s in members])
                    sides = (("second", "first") if d == 1 else ("second",)) if spec.sided else (None,)
                    runs = [(ms, side) for ms in (seeds if spec.seeded else [None]) for side in sides]
                    for ms, side in runs:
                        side = np.nan if side is None else side
                        rows.append({"model": f"{method}/p{p}-d{d}-g{g}-s{ms}-{side}", "kind": "merged",
                                     "method": method, "pool": p, "depth": d, "n_models": 2 ** d, "seed": np.nan,
                                     "group": g, "merge_seed": np.nan if ms is None else ms, "side": side,
                                     "value": mean + shift(d) + rng.normal(0, noise)})
    table = pd.DataFrame(rows)
    table.insert(len(table.columns) - 1, "metric", "clean_accuracy")
    table.insert(len(table.columns) - 1, "eps", np.nan)
    return table
