"""Weight matching and MergeMany speed on 784-512-512-512-10 MLPs trained on the MNIST split.

References measured in the same run: the plain Algorithm 1 (`audit.rebasin.weight_matching_plain`:
every perm solved cold by scipy in every sweep) on the same pairs and seeds, and one cold scipy
`linear_sum_assignment` of a real 512x512 similarity matrix. Targets (2 cores):
  * weight matching of a pair >= 3x faster than the plain Algorithm 1, with the same permutations
    and the same objective (1e-9 relative) at every sweep;
  * MergeMany of 4 models to convergence <= 3x one plain pair matching; of 8 models <= 10 s.

    cd benchmarks && uv run python rebasin.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from audit.merge import merge_many
from audit.rebasin import mlp_permutation_spec, weight_matching, weight_matching_plain
from common import mnist_split, trained_models


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    models = trained_models(mnist_split(), 8)
    spec = mlp_permutation_spec(models[0])
    weight_matching(spec, models[0], models[1], max_iter=2)  # compile the solver (numba cache)

    a, b = (m["hidden.1.weight"].double() for m in models[:2])
    sim = (a @ b.T).numpy()
    lsa_s = statistics.median(timed(lambda: linear_sum_assignment(sim, maximize=True))[0] for _ in range(20))
    print(f"reference: one cold 512x512 linear_sum_assignment {lsa_s * 1e3:.1f} ms (median of 20)")

    plain, fast, exact = [], [], True
    for i, j in [(0, 1), (2, 3), (4, 5), (6, 7)]:
        for seed in range(2):
            tp, (ref_perms, ref_hist) = timed(lambda: weight_matching_plain(spec, models[i], models[j], seed=seed))
            tf, res = timed(lambda: weight_matching(spec, models[i], models[j], seed=seed))
            plain.append(tp)
            fast.append((tf, res.sweeps, res.solves, res.certified))
            same = all(torch.equal(ref_perms[p], res.perms[p]) for p in ref_perms)
            rel = np.max(np.abs(np.subtract(res.objective, ref_hist)) / np.abs(ref_hist)) \
                if len(ref_hist) == res.sweeps else np.inf
            exact &= same and rel <= 1e-9
    plain_s = statistics.median(plain)
    fast_s = statistics.median(t for t, *_ in fast)
    sweeps, solves, cert = (np.median([r[k] for r in fast]) for k in (1, 2, 3))
    print(f"weight matching, 8 runs (4 pairs x 2 seeds): plain Alg. 1 median {plain_s:.3f} s, "
          f"this project {fast_s:.3f} s -> {plain_s / fast_s:.2f}x (target >= 3x: "
          f"{'met' if plain_s / fast_s >= 3 else 'NOT met'})")
    print(f"  median {sweeps:.0f} sweeps, {solves:.0f} assignments, {cert:.0f} of them certified without "
          f"solving; same perms and objective (1e-9) as the plain algorithm in every run: {exact}")

    for n, target in ((4, 3 * plain_s), (8, 10.0)):
        t, mm = timed(lambda: merge_many(models[:n], spec, seed=0))
        h = mm.provenance["history"]
        print(f"merge_many, {n} models: {t:.1f} s, {mm.provenance['iterations']} passes, converged="
              f"{mm.provenance['converged']}, {sum(x['inner_solves'] for x in h)} assignments "
              f"({sum(x['inner_certified'] for x in h)} certified, {sum(x['skipped'] for x in h)} matchings skipped "
              f"as proven no-ops) -> {t / plain_s:.1f}x one plain pair; "
              f"target {target:.1f} s: {'met' if t <= target and mm.provenance['converged'] else 'NOT met'}")


if __name__ == "__main__":
    main()
