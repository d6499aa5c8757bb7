"""Merging several models: naive averaging, pairwise Re-Basin, MergeMany and the hierarchical scheme.

Every function returns a `MergeResult`: the merged state dict and a JSON-serializable provenance
record (the base models, who was permuted onto whom, the tree, sweeps, convergence, seeds), so
every merged model can be traced back to its inputs.

Seeds: each function draws everything random (pairing order, MergeMany visiting order, the layer
order inside each weight matching) from one ``numpy.random.default_rng(seed)``; the derived
per-call seeds are written into the provenance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import methods
from .ablation import MergeJob
from .config import PAIRINGS, PERMUTE_SIDES  # allowed values live with the params
from .rebasin import (PermutationSpec, Weights, SimilarityTerms, apply_permutation, check_compatible, identity_perms,
                      interpolate, match_terms, weight_matching)


@dataclass
class MergeResult:
    params: Weights
    provenance: dict


def _names(params_list: Sequence[Mapping[str, Tensor]], names: Sequence[str] | None) -> list[str]:
    if not params_list:
        raise ValueError("no models to merge")
    names = [f"m{i}" for i in range(len(params_list))] if names is None else [str(n) for n in names]
    if len(names) != len(params_list):
        raise ValueError(f"{len(names)} names for {len(params_list)} models")
    for other, name in zip(params_list[1:], names[1:]):
        check_compatible(params_list[0], other, (names[0], name))
    return names


def _average(tensors: Sequence[Tensor]) -> Tensor:
    """The elementwise mean, summed in float64 in list order and divided once: each entry depends
    on that entry alone, so the mean of any slice is bitwise the slice of the mean (MergeMany
    re-averages only the slices that moved). torch's reductions do not promise that."""
    acc = tensors[0].to(torch.float64, copy=True)
    for t in tensors[1:]:
        acc += t
    return (acc / len(tensors)).to(tensors[0].dtype)


def _mean(params_list: Sequence[Mapping[str, Tensor]]) -> Weights:
    """The average of each parameter; integer tensors are taken from the first model."""
    first = params_list[0]
    return {k: _average([p[k] for p in params_list]) if v.is_floating_point() else v.clone() for k, v in first.items()}


def _reaverage(target: Weights, rest: Sequence[Mapping[str, Tensor]], spec: PermutationSpec,
               units: Mapping[str, Tensor]) -> None:
    """Re-average ``target`` (the mean of ``rest``) in place on the slices along each perm's axes
    at ``units``: the only entries that moves of those units changed. A parameter whose moved
    rows and columns add up to more than WHOLE_FRACTION of its axes is re-averaged whole: the
    same numbers (`_average` is elementwise), without gathering slices from every model."""
    for k, axes in spec.axes_to_perm.items():
        hit = [(axis, units[q]) for axis, q in enumerate(axes) if q in units]
        if not hit or not target[k].is_floating_point():
            continue
        if sum(idx.numel() / target[k].shape[axis] for axis, idx in hit) > WHOLE_FRACTION:
            target[k].copy_(_average([p[k] for p in rest]))
            continue
        for axis, idx in hit:
            idx = idx.to(target[k].device)
            target[k].index_copy_(axis, idx, _average([p[k].index_select(axis, idx) for p in rest]))


# Past this share of a parameter's rows plus columns, gathering the moved slices from each of
# the other models costs more than averaging it whole (the mean of 15 digits models of the
# paper's widths, 1 thread, the same units moved in every perm: 1 unit 1.1 ms gathered against
# 5.8 ms whole, 40 units 4.5 ms, 64 units 5.4 ms, 128 units 8.4 ms, all 512 46-54 ms).
WHOLE_FRACTION = 0.25


def _child_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def naive_merge(params_list: Sequence[Mapping[str, Tensor]], *, names: Sequence[str] | None = None) -> MergeResult:
    """Plain parameter average, no permutation (the baseline Re-Basin is meant to beat)."""
    names = _names(params_list, names)
    return MergeResult(_mean(params_list), {"method": "naive", "models": names})


def pairwise_merge(a: Mapping[str, Tensor], b: Mapping[str, Tensor], spec: PermutationSpec, *, lam: float = 0.5,
                   seed: int = 0, permute: str = "second", max_iter: int = 100,
                   names: Sequence[str] = ("A", "B")) -> MergeResult:
    """Permute one model onto the other, then ``(1 - lam) * A + lam * B`` (lam is B's weight).

    ``permute="second"`` moves B into A's basin (Franke et al.'s convention); ``"first"`` moves A
    into B's.
    """
    if permute not in PERMUTE_SIDES:
        raise ValueError(f"permute must be one of {PERMUTE_SIDES}, got {permute!r}")
    na, nb = _names([a, b], names)
    if permute == "second":
        match = weight_matching(spec, a, b, seed=seed, max_iter=max_iter)
        a, b = a, apply_permutation(spec, match.perms, b)
        moved, onto = nb, na
    else:
        match = weight_matching(spec, b, a, seed=seed, max_iter=max_iter)
        a, b = apply_permutation(spec, match.perms, a), b
        moved, onto = na, nb
    prov = {"method": "pairwise", "models": [na, nb], "permuted": moved, "onto": onto, "lam": lam,
            "seed": seed, "sweeps": match.sweeps, "converged": match.converged, "objective": match.objective}
    return MergeResult(interpolate(a, b, lam), prov)


def merge_many(params_list: Sequence[Mapping[str, Tensor]], spec: PermutationSpec, *, seed: int = 0,
               max_iter: int = 100, match_max_iter: int = 100, names: Sequence[str] | None = None) -> MergeResult:
    """MergeMany (Ainsworth et al. Alg. 3): align every model to the mean of the others, repeatedly.

    Each iteration visits the models in a seeded random order and weight-matches model i (in its
    current permutation) to the mean of the other n-1 permuted models. It stops after an iteration
    in which no permutation changed (converged) or after ``max_iter`` iterations (each weight
    matching runs at most ``match_max_iter`` sweeps). Because a matching
    only moves when it raises <mean of others, model i> by more than 1e-12, "no change" is the
    reference code's "no L2 progress". The result is the mean of the permuted models.

    Four things make late passes cheap without changing what is found (tested equal to the
    plain algorithm on trained models):
    * model i is matched in its original unit order, starting from its current permutation, so
      its similarity terms are kept from pass to pass and only corrected where the mean of the
      others changed (`SimilarityTerms.retarget`);
    * each perm's solver state (assignment and duals) is kept too, so an alignment that is still
      optimal is certified, not re-solved;
    * a matching is skipped when its previous one converged and no model has moved since: its
      target and starting point are the ones it ended at, where no perm can improve by > 1e-12;
    * a model's target is re-averaged, and its terms corrected, only on the slices other models'
      moves changed since its last matching: a move of P_l on units K changes the mean only in
      the rows and columns at K of the parameters P_l touches (`_reaverage`, and
      `SimilarityTerms.retarget` with ``moved``).
    """
    names = _names(params_list, names)
    n = len(params_list)
    rng = np.random.default_rng(seed)
    current = [dict(p) for p in params_list]
    perms = [identity_perms(spec, p) for p in params_list]  # model i's units -> its current order
    terms: list[SimilarityTerms | None] = [None] * n
    warm: list[dict] = [{} for _ in range(n)]
    # the moves so far, in order: (model, perm -> the positions of its permuted order whose unit changed)
    log: list[tuple[int, dict[str, Tensor]]] = []
    settled: list[int | None] = [None] * n  # len(log) after i's last converged matching
    targets: list[Weights | None] = [None] * n  # mean of the others, as of len(log) == target_at[i]
    target_at = [0] * n
    history = []
    converged = n == 1
    iteration = 0
    while not converged and iteration < max_iter:
        iteration += 1
        changed, sweeps, solves, certified, exchanged, skipped, seeds = [], 0, 0, 0, 0, 0, []
        order = rng.permutation(n).tolist()
        for i in order:
            s = _child_seed(rng)
            seeds.append(s)
            if settled[i] == len(log):
                skipped += 1
                continue
            rest = [current[j] for j in range(n) if j != i]
            if terms[i] is None:
                targets[i] = _mean(rest)
                terms[i] = SimilarityTerms(spec, targets[i], params_list[i])
            else:
                units = _moved_units([m for j, m in log[target_at[i]:] if j != i])
                if units:
                    _reaverage(targets[i], rest, spec, units)
                    terms[i].retarget(targets[i], units)
            target_at[i] = len(log)
            match = match_terms(terms[i], seed=s, max_iter=match_max_iter, init_perms=perms[i], warm=warm[i],
                                absolute=False)  # only its perms are used
            sweeps += match.sweeps
            solves += match.solves
            certified += match.certified
            exchanged += match.exchanged
            warm[i] = match.states
            moved = [p for p in perms[i] if not torch.equal(match.perms[p], perms[i][p])]
            if moved:
                log.append((i, {p: (match.perms[p] != perms[i][p]).nonzero().flatten() for p in moved}))
                perms[i] = match.perms
                keys = {k for p in moved for k, _ in spec.perm_to_axes[p]}
                current[i] = {**current[i], **apply_permutation(spec, perms[i], {k: params_list[i][k] for k in keys})}
                changed.append(names[i])
            settled[i] = len(log) if match.converged else None
        history.append({"order": [names[i] for i in order], "seeds": seeds, "changed": changed,
                        "inner_sweeps": sweeps, "inner_solves": solves, "inner_certified": certified,
                        "inner_exchanged": exchanged, "skipped": skipped})
        converged = not changed
    prov = {"method": "mergemany", "models": names, "seed": seed, "iterations": iteration,
            "converged": converged, "max_iter": max_iter, "history": history}
    return MergeResult(_mean(current), prov)


def _moved_units(moves: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Per perm, the sorted union of the units the given moves changed."""
    found: dict[str, list[Tensor]] = {}
    for m in moves:
        for p, u in m.items():
            found.setdefault(p, []).append(u)
    return {p: torch.unique(torch.cat(us)) for p, us in found.items()}


def hierarchical_merge(params_list: Sequence[Mapping[str, Tensor]], spec: PermutationSpec, *, seed: int = 0,
                       lam: float = 0.5, pairing: str = "adjacent", permute: str = "second",
                       max_iter: int = 100, match_max_iter: int = 100, names: Sequence[str] | None = None) -> MergeResult:
    """Franke et al.'s scheme: 2^n models merged pairwise and disjointly over n stages.

    Stage s pairs the outputs of stage s-1: neighbours in list order (``pairing="adjacent"``) or
    in an order drawn from the seed (``"random"``), and merges each pair with `pairwise_merge`.
    With lam = 0.5 every base model ends with weight 2^-n, as in MergeMany and naive averaging.
    The provenance lists every stage's merges (which node was permuted onto which).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    if permute not in PERMUTE_SIDES:
        raise ValueError(f"permute must be one of {PERMUTE_SIDES}, got {permute!r}")
    n = len(params_list)
    if n < 1 or n & (n - 1):
        raise ValueError(f"hierarchical merge needs a power-of-two number of models, got {n}")
    names = _names(params_list, names)
    rng = np.random.default_rng(seed)
    nodes = list(zip(names, params_list))
    stages = []
    while len(nodes) > 1:
        order = rng.permutation(len(nodes)).tolist() if pairing == "random" else list(range(len(nodes)))
        merged, stage = [], []
        for left, right in zip(order[::2], order[1::2]):
            (ln, lp), (rn, rp) = nodes[left], nodes[right]
            s = _child_seed(rng)
            res = pairwise_merge(lp, rp, spec, lam=lam, seed=s, permute=permute, max_iter=max_iter, names=(ln, rn))
            out = f"({ln}+{rn})"
            p = res.provenance
            stage.append({"left": ln, "right": rn, "permuted": p["permuted"], "onto": p["onto"], "output": out,
                          "seed": s, "sweeps": p["sweeps"], "converged": p["converged"]})
            merged.append((out, res.params))
        stages.append(stage)
        nodes = merged
    prov = {"method": "hierarchical", "models": names, "seed": seed, "lam": lam, "pairing": pairing,
            "permute": permute, "stages": stages, "tree": nodes[0][0]}
    return MergeResult({k: v.clone() for k, v in nodes[0][1].items()}, prov)


def node_seed(seed: int, depth: int, group: int) -> int:
    """The weight-matching seed of tree node (depth, group): a function of the node alone, so a
    node is the same whether its whole pool's tree or only its own subtree is computed."""
    return _child_seed(np.random.default_rng([seed, depth, group]))


def hierarchical_tree(params_list: Sequence[Mapping[str, Tensor]], spec: PermutationSpec, *, seed: int = 0,
                      lam: float = 0.5, permute: str = "second", max_iter: int = 100,
                      names: Sequence[str] | None = None, first_leaf: int = 0,
                      depth: int | None = None) -> dict[tuple[int, int], MergeResult]:
    """Franke et al.'s scheme as one tree: stage d merges the stage d-1 nodes pairwise, neighbours
    in list order, so the stage-d nodes are the merges of contiguous groups of 2^d models (the
    groups every method merges in the ablation), and deeper models are built from shallower ones
    as in the paper (its stage-3 models from its stage-2 models).

    Returns ``{(d, g): MergeResult}`` for d = 1..``depth`` (default: all stages), g counted from
    the pool's first leaf (``first_leaf``, the position of ``params_list[0]`` in the pool, a
    multiple of 2^depth), so a subtree gives exactly the nodes of the whole tree: each node's
    weight matching is seeded by `node_seed` (merge seed, depth, group). The provenance of a node
    lists its subtree's merges, stage by stage, as `hierarchical_merge` does.
    """
    if permute not in PERMUTE_SIDES:
        raise ValueError(f"permute must be one of {PERMUTE_SIDES}, got {permute!r}")
    n = len(params_list)
    if n < 2 or n & (n - 1):
        raise ValueError(f"hierarchical merge needs a power-of-two number (>= 2) of models, got {n}")
    full = n.bit_length() - 1
    depth = full if depth is None else depth
    if not 1 <= depth <= full or first_leaf % 2 ** depth:
        raise ValueError(f"depth {depth} does not fit {n} models starting at leaf {first_leaf}")
    names = _names(params_list, names)
    level = [(name, p, []) for name, p in zip(names, params_list)]  # (name, params, stages below)
    out: dict[tuple[int, int], MergeResult] = {}
    for d in range(1, depth + 1):
        nxt = []
        for local, ((ln, lp, ls), (rn, rp, rs)) in enumerate(zip(level[::2], level[1::2])):
            g = first_leaf // 2 ** d + local
            s = node_seed(seed, d, g)
            res = pairwise_merge(lp, rp, spec, lam=lam, seed=s, permute=permute, max_iter=max_iter, names=(ln, rn))
            p = res.provenance
            name = f"({ln}+{rn})"
            merge = {"left": ln, "right": rn, "permuted": p["permuted"], "onto": p["onto"], "output": name,
                     "seed": s, "sweeps": p["sweeps"], "converged": p["converged"]}
            stages = [a + b for a, b in zip(ls, rs)] + [[merge]]
            members = names[local * 2 ** d:(local + 1) * 2 ** d]
            out[(d, g)] = MergeResult(res.params, {"method": "hierarchical", "models": members, "seed": seed,
                                                   "lam": lam, "pairing": "adjacent", "permute": permute,
                                                   "stages": stages, "tree": name})
            nxt.append((name, res.params, stages))
        level = nxt
    return out


# ---------------------------------------------------------------- the registry's runners

# How each registered method (`audit.methods`) merges one job's models. A runner takes the
# members' state dicts (in job order), their permutation spec, the job and the merge settings
# (merge.max_iter, mergemany_max_iter, lam, pairing) and returns the MergeResult.
RUNNERS: dict = {}


def runner(name: str):
    """Register the function below as how method ``name`` merges (it must be in the registry)."""
    methods.get(name)

    def register(fn):
        RUNNERS[name] = fn
        return fn
    return register


def _member_names(job: MergeJob) -> list[str]:
    return [f"s{s}" for s in job.members]


@runner("naive")
def run_naive(models, spec: PermutationSpec, job: MergeJob, cfg: dict) -> MergeResult:
    return naive_merge(models, names=_member_names(job))


@runner("mergemany")
def run_mergemany(models, spec: PermutationSpec, job: MergeJob, cfg: dict) -> MergeResult:
    return merge_many(models, spec, seed=job.seed, max_iter=cfg["mergemany_max_iter"], match_max_iter=cfg["max_iter"],
                      names=_member_names(job))


@runner("hierarchical")
def run_hierarchical(models, spec: PermutationSpec, job: MergeJob, cfg: dict) -> MergeResult:
    if cfg["pairing"] == "adjacent":  # the node of the pool's tree, from its own subtree
        return hierarchical_tree(models, spec, seed=job.seed, lam=cfg["lam"], permute=job.side,
                                 max_iter=cfg["max_iter"], names=_member_names(job), first_leaf=job.group * len(models),
                                 depth=job.depth)[(job.depth, job.group)]
    return hierarchical_merge(models, spec, seed=job.seed, lam=cfg["lam"], pairing=cfg["pairing"], permute=job.side,
                              max_iter=cfg["max_iter"], names=_member_names(job))
