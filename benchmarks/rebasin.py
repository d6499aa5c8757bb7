"""Weight matching and MergeMany speed on 784-512-512-512-10 MLPs trained on the MNIST split.

References measured in the same run: the plain Algorithm 1 (`audit.rebasin.weight_matching_plain`:
every perm solved cold by scipy in every sweep) on the same pairs and seeds, and one cold scipy
`linear_sum_assignment` of a real 512x512 similarity matrix. Targets (2 cores):
  * weight matching of a pair >= 3x faster than the plain Algorithm 1, with the same permutations
    and the same objective (1e-9 relative) at every sweep;
  * MergeMany of 4 models to convergence <= 3x one plain pair matching; of 8 models <= 10 s.
Last, at one thread (as a merge worker runs), the figures behind the merge estimate's MergeMany
cost model (`audit.resources`: MERGEMANY_FIRST_PASS, MERGEMANY_LATER_PASS, in pair matchings).

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
from audit.resources import Shape, calibrate
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
            fast.append((tf, res.sweeps, res.solves, res.certified, res.exchanged))
            same = all(torch.equal(ref_perms[p], res.perms[p]) for p in ref_perms)
            rel = np.max(np.abs(np.subtract(res.objective, ref_hist)) / np.abs(ref_hist)) \
                if len(ref_hist) == res.sweeps else np.inf
            exact &= same and rel <= 1e-9
    plain_s = statistics.median(plain)
    fast_s = statistics.median(t for t, *_ in fast)
    sweeps, solves, cert, exch = (np.median([r[k] for r in fast]) for k in (1, 2, 3, 4))
    print(f"weight matching, 8 runs (4 pairs x 2 seeds): plain Alg. 1 median {plain_s:.3f} s, "
          f"this project {fast_s:.3f} s -> {plain_s / fast_s:.2f}x (target >= 3x: "
          f"{'met' if plain_s / fast_s >= 3 else 'NOT met'})")
    print(f"  median {sweeps:.0f} sweeps, {solves:.0f} assignments, {cert:.0f} of them certified as they were and "
          f"{exch:.0f} after improving exchanges, without augmenting; same perms and objective (1e-9) as the plain "
          f"algorithm in every run: {exact}")

    for n, target in ((4, 3 * plain_s), (8, 10.0)):
        runs = [timed(lambda: merge_many(models[:n], spec, seed=0)) for _ in range(3)]
        t, mm = statistics.median(r[0] for r in runs), runs[0][1]  # one run varies ~20% on a shared machine
        h = mm.provenance["history"]
        print(f"merge_many, {n} models: median of 3 {t:.1f} s (fastest {min(r[0] for r in runs):.1f} s), "
              f"{mm.provenance['iterations']} passes, converged="
              f"{mm.provenance['converged']}, {sum(x['inner_solves'] for x in h)} assignments "
              f"({sum(x['inner_certified'] for x in h)} certified, {sum(x['inner_exchanged'] for x in h)} after "
              f"exchanges, {sum(x['skipped'] for x in h)} matchings skipped "
              f"as proven no-ops) -> {t / plain_s:.1f}x one plain pair; "
              f"target {target:.1f} s: {'met' if t <= target and mm.provenance['converged'] else 'NOT met'}")

    cost_model(models, spec)


def cost_model(models, spec) -> None:
    """MergeMany's cost in pair matchings at one thread: its first pass (every model matched once)
    per model, and each later pass per model."""
    import audit.merge as merge_module

    # The estimate's calibration: two untrained models of the benchmark's widths, one thread.
    calibrated = statistics.median(calibrate(Shape(784, 10, 8000, 2000), [512, 512, 512], 128,
                                             torch.device("cpu"))["match_pair"] for _ in range(3))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pair = statistics.median(timed(lambda: weight_matching(spec, models[i], models[i + 1]))[0] for i in (0, 2, 4, 6))
        print(f"cost model, 1 thread: one pair matching {pair:.3f} s (median of 4), {pair / calibrated:.2f}x the "
              f"estimate's calibrated one ({calibrated:.3f} s, median of 3; audit.resources.TRAINED_OVER_CALIBRATED)")
        for n in (4, 8):
            spent = []
            inner = merge_module.match_terms

            def clocked(*args, **kw):
                t, out = timed(lambda: inner(*args, **kw))
                spent.append(t)
                return out

            merge_module.match_terms = clocked
            try:
                total, mm = timed(lambda: merge_many(models[:n], spec, seed=0))
            finally:
                merge_module.match_terms = inner
            passes = mm.provenance["iterations"]
            first = sum(spent[:n])  # the first pass matches every model once, none skipped
            print(f"  merge_many, {n} models: {total:.1f} s, {passes} passes; first pass {first / n / pair:.2f} pair "
                  f"matchings per model, later passes {(total - first) / n / max(1, passes - 1) / pair:.3f} per model "
                  f"and pass")
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
