"""Weight matching and MergeMany speed on 784-512-512-512-10 MLPs trained on the MNIST split.

Prints the median seconds per weight matching (several pairs x seeds), the sweeps and assignment
solves it took, the time of one 512x512 linear assignment measured in the same run (so the
result is also given against the assignment-bound limit), and MergeMany on 8 models run to its
stopping rule. Targets on 2 cores: <= 0.6 s median per pair; MergeMany converged in <= 30 s.

    uv run python benchmarks/rebasin.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from audit.merge import merge_many
from audit.rebasin import mlp_permutation_spec, weight_matching
from common import mnist_split, trained_models


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    models = trained_models(mnist_split(), 8)
    spec = mlp_permutation_spec(models[0])

    # The assignment this algorithm is bound by, on a similarity matrix of the real models.
    a, b = (m["hidden.1.weight"].double() for m in models[:2])
    sim = (a @ b.T).numpy()
    lsa = []
    for _ in range(20):
        t = time.perf_counter()
        linear_sum_assignment(sim, maximize=True)
        lsa.append(time.perf_counter() - t)
    lsa_s = statistics.median(lsa)

    rows = []
    for i, j in [(0, 1), (2, 3), (4, 5), (6, 7)]:
        for seed in range(3):
            t = time.perf_counter()
            res = weight_matching(spec, models[i], models[j], seed=seed)
            rows.append((time.perf_counter() - t, res.sweeps, res.solves))
    secs, sweeps, solves = (np.array(c) for c in zip(*rows))
    med = float(np.median(secs))
    print(f"512x512 linear assignment: {lsa_s * 1e3:.1f} ms (median of 20)")
    print(f"weight_matching, {len(rows)} runs (4 pairs x 3 seeds): median {med:.3f} s "
          f"[min {secs.min():.3f}, max {secs.max():.3f}], sweeps median {np.median(sweeps):.0f} "
          f"[{sweeps.min()}-{sweeps.max()}], assignments solved median {np.median(solves):.0f}")
    bound = float(np.median(solves)) * lsa_s
    print(f"  assignment-bound time (solves x assignment) {bound:.3f} s -> ratio {med / bound:.2f}; "
          f"target 0.6 s: {'met' if med <= 0.6 else 'NOT met'}")

    t = time.perf_counter()
    mm = merge_many(models, spec, seed=0)
    mm_s = time.perf_counter() - t
    inner = sum(h["inner_sweeps"] for h in mm.provenance["history"])
    mm_solves = sum(h["inner_solves"] for h in mm.provenance["history"])
    print(f"merge_many, 8 models: {mm_s:.1f} s, {mm.provenance['iterations']} iterations, converged="
          f"{mm.provenance['converged']}, {inner} weight-matching sweeps, {mm_solves} assignments solved")
    print(f"  assignment-bound time {mm_solves * lsa_s:.1f} s -> ratio {mm_s / (mm_solves * lsa_s):.2f}; "
          f"target 30 s: {'met' if mm_s <= 30 and mm.provenance['converged'] else 'NOT met'}")


if __name__ == "__main__":
    main()
