"""Git Re-Basin weight matching (Ainsworth et al., ICLR 2023, Algorithm 1) for state dicts.

Conventions
-----------
* Parameters are state dicts ``dict[str, Tensor]``.
* A permutation is an int64 vector ``perm`` of length n; permuting an axis by it means
  ``w.index_select(axis, perm)``, i.e. entry i of the permuted axis is entry ``perm[i]`` of the
  original. ``weight_matching(spec, a, b)`` returns the perms that move B onto A.
* The objective is ``sum over permuted params of <W_a, P(W_b)>`` (Frobenius inner product). As the
  norms of P(W_b) do not depend on P, maximising it minimises ``||A - P(B)||^2``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .assignment import AssignmentState, solve_assignment
from .models import architecture_of

Weights = dict[str, Tensor]  # a model's state dict (its weights; "params" names the experiment settings)

# A perm whose previous solve re-assigned more than this share of its rows (the cold first sweep,
# the early sweeps of a matching) is solved without the certificate search: such a change is
# rarely undone by a few exchanges. Measured at one thread, each warm solve timed both ways on
# the same matrix and state (hot caches, alternating order): after a solve that re-assigned
# 20-50% of the rows, the search and repair took 1.98 s against 1.62 s for the repair alone
# (1414 solves of a 3-pass MergeMany of 16 digits models, paper widths) and 0.57 s against
# 0.47 s (305 solves of a MergeMany of 4 MNIST models); up to 10% the search wins (1.37 s
# against 1.56 s, 1298 solves), and 10-20% is rare (15 solves) and even. Whole runs, interleaved:
# 10.1-10.9 s against 10.4-10.9 s and 3.2-3.4 s against 3.4-3.6 s with the limit at 50%. Where
# the optimum is tied, the repair may return another of the optima than the search would have kept.
REPAIRED_CERTIFY_LIMIT = 0.2

# Minimum objective gain that counts as progress (same threshold as the reference code). The
# objective is O(1e1..1e4) for trained MLPs, so float64 rounding (~1e-16 relative) stays far below.
IMPROVEMENT_TOL = 1e-12


@dataclass(frozen=True)
class PermutationSpec:
    """Which permutation acts on which axis of which parameter.

    ``axes_to_perm[name][axis]`` is the permutation name acting on that axis, or None.
    Parameters not listed (normalization buffers) are never permuted.
    """

    axes_to_perm: dict[str, tuple[str | None, ...]]
    perm_to_axes: dict[str, list[tuple[str, int]]] = field(init=False)

    def __post_init__(self):
        p2a: dict[str, list[tuple[str, int]]] = {}
        for name, axes in self.axes_to_perm.items():
            for axis, perm in enumerate(axes):
                if perm is not None:
                    p2a.setdefault(perm, []).append((name, axis))
        object.__setattr__(self, "perm_to_axes", p2a)

    @property
    def perm_names(self) -> list[str]:
        return sorted(self.perm_to_axes)

    def perm_sizes(self, params: Mapping[str, Tensor]) -> dict[str, int]:
        return {p: int(params[k].shape[ax]) for p, [(k, ax), *_] in self.perm_to_axes.items()}


def mlp_permutation_spec(model: nn.Module | Mapping[str, Tensor]) -> PermutationSpec:
    """Spec of an `audit.models.MLP` of any depth: hidden layer l's units are permuted by ``P_l``.

    ``hidden.l.weight`` (out, in): rows by P_l, columns by P_{l-1}; ``hidden.l.bias`` by P_l;
    the input side of the first layer and the logits are not permuted.
    """
    params = model.state_dict() if isinstance(model, nn.Module) else model
    n_hidden = len(architecture_of(params)["widths"])
    axes: dict[str, tuple[str | None, ...]] = {}
    for layer in range(n_hidden):
        prev = f"P_{layer - 1}" if layer else None
        axes[f"hidden.{layer}.weight"] = (f"P_{layer}", prev)
        axes[f"hidden.{layer}.bias"] = (f"P_{layer}",)
    axes["head.weight"] = (None, f"P_{n_hidden - 1}")
    axes["head.bias"] = (None,)
    return PermutationSpec(axes)


def check_compatible(params_a: Mapping[str, Tensor], params_b: Mapping[str, Tensor],
                     names: tuple[str, str] = ("A", "B")) -> None:
    """ValueError naming the models and the first differing key/shape if they cannot be merged."""
    ka, kb = set(params_a), set(params_b)
    if ka != kb:
        diff = sorted(ka ^ kb)
        raise ValueError(f"models {names[0]} and {names[1]} have different parameters: {diff[:3]}")
    for k in sorted(ka):
        if params_a[k].shape != params_b[k].shape:
            raise ValueError(f"models {names[0]} and {names[1]} differ in architecture: {k} has shape "
                             f"{tuple(params_a[k].shape)} vs {tuple(params_b[k].shape)}")


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> Weights:
    """Return a new state dict with every listed axis permuted; unlisted tensors are shared, not copied."""
    out: Weights = {}
    for name, w in params.items():
        for axis, p in enumerate(spec.axes_to_perm.get(name, ())):
            if p is not None:
                w = w.index_select(axis, perms[p].to(w.device))
        out[name] = w
    return out


def interpolate(params_a: Mapping[str, Tensor], params_b: Mapping[str, Tensor], lam: float) -> Weights:
    """``(1 - lam) * A + lam * B`` for floating tensors; lam 0 and 1 return the endpoints exactly."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    check_compatible(params_a, params_b)
    if lam == 0.0:
        return {k: v.clone() for k, v in params_a.items()}
    if lam == 1.0:
        return {k: v.clone() for k, v in params_b.items()}
    return {k: (1 - lam) * a + lam * params_b[k] if a.is_floating_point() else a.clone()
            for k, a in params_a.items()}


def invert_permutation(perm: Tensor) -> Tensor:
    return torch.argsort(perm)


def identity_perms(spec: PermutationSpec, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {p: torch.arange(n) for p, n in spec.perm_sizes(params).items()}


@dataclass
class MatchResult:
    """Outcome of `weight_matching`.

    perms: int64 CPU vectors moving B onto A. objective: the objective after each sweep
    (objective_init is the starting point's; see `match_terms` for gains only). converged:
    stopped by the improvement rule, not max_iter. solves: linear assignments actually solved
    (skipped ones not counted); certified: of those, the ones where a dual certificate proved
    the previous assignment still optimal; exchanged: the ones it proved optimal after improving
    exchanges, also without augmenting. states: each perm's last solver state (assignment and
    duals, in B's unpermuted unit order), to warm-start a later matching.
    """

    perms: dict[str, Tensor]
    objective: list[float]
    objective_init: float
    sweeps: int
    converged: bool
    seed: int
    solves: int
    certified: int = 0
    exchanged: int = 0
    states: dict[str, AssignmentState] = field(default_factory=dict, repr=False)


def weight_matching(spec: PermutationSpec, params_a: Mapping[str, Tensor], params_b: Mapping[str, Tensor],
                    *, seed: int = 0, max_iter: int = 100, init_perms: Mapping[str, Tensor] | None = None,
                    warm: Mapping[str, AssignmentState] | None = None) -> MatchResult:
    """Coordinate descent over the permutations (Ainsworth et al. Alg. 1).

    Each sweep visits the permutations in a random order drawn from ``seed``; for ``P_l`` it builds
    ``S = sum_k W_a^k @ W_b^k.T`` over the parameters touching ``P_l`` (the other axes of W_b
    already permuted, biases included) and solves the linear assignment maximising ``trace``.
    A new assignment is accepted only if it raises the objective by more than 1e-12, so a sweep
    without progress changes nothing and ends the search: it always terminates.
    Similarities are computed in float64 on the device of ``params_a``; the assignment on CPU.

    ``init_perms`` is the starting point (identity by default). ``warm`` (e.g.
    ``MatchResult.states`` of an earlier matching, in B's unit order) seeds each perm's first
    solve; it changes how fast, never what is found.

    The result is exactly that of visiting the perms one by one; four shortcuts make it faster:
    * every assignment is warm-started from the previous solve of the same perm
      (`audit.assignment`): a dual certificate proves the old assignment still optimal in O(n^2),
      or optimal after the improving exchanges it finds; otherwise (and at once, without the
      search, after a solve that re-assigned more than 20% of the rows) only the rows the change
      broke are re-augmented; a perm's first solve starts with row reduction (about half the
      time of scipy's augmentations alone);
    * each perm's S is kept and corrected in place where its neighbours moved (`SimilarityTerms`);
      terms whose parameter has no other permuted axis are computed once;
    * a perm whose neighbours (perms sharing a parameter with it) have not moved since it was last
      solved is skipped: its S is unchanged, so its current assignment is still optimal;
    * consecutive perms in the visiting order that share no parameter are solved concurrently
      (the solver releases the GIL) when torch may use more than one thread: neither's
      similarity depends on the other's outcome.
    """
    check_compatible(params_a, params_b)
    terms = SimilarityTerms(spec, params_a, params_b)
    return match_terms(terms, seed=seed, max_iter=max_iter, init_perms=init_perms, warm=warm)


def match_terms(terms: "SimilarityTerms", *, seed: int = 0, max_iter: int = 100,
                init_perms: Mapping[str, Tensor] | None = None,
                warm: Mapping[str, AssignmentState] | None = None, absolute: bool = True) -> MatchResult:
    """`weight_matching` of the models ``terms`` holds. A caller matching one model B to a
    target that changes a little (MergeMany) keeps the terms and calls `SimilarityTerms.retarget`
    between matchings, so the kept products are updated instead of recomputed.

    ``absolute=False`` skips evaluating the starting objective (a pass over every parameter):
    ``objective_init`` is then 0 and ``objective`` holds the gains since the start, which is all
    the stopping rule reads."""
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    spec, dev = terms.spec, terms.device
    perms = {p: t.to(dev) for p, t in (init_perms or identity_perms(spec, terms.a)).items()}

    solves = certified = exchanged = 0  # assignments solved; of those, proven by a certificate (as they were / after exchanges)
    states: dict[str, AssignmentState] = dict(warm or {})
    changes = dict.fromkeys(perms, 0)  # how often each perm has moved
    seen: dict[str, dict[str, int]] = {}  # perm -> its neighbours' change counts when last solved

    def dirty(p: str) -> bool:
        return seen.get(p) != {q: changes[q] for q in terms.neighbours[p]}

    def solve(batch: list[str]) -> float:
        """Solve mutually independent perms from the current state and return the objective gain;
        the same as solving them one after another, which is what happens at one thread: a task
        given one core (merge workers = cores) has no core for a second solve, and there threads
        only add hand-offs (16 digits models, 3 passes, two such processes on 2 cores: 11.5-13.4 s
        serially against 13.5-15.1 s in threads)."""
        sims = []
        for p in batch:
            seen[p] = {q: changes[q] for q in terms.neighbours[p]}
            sims.append(terms.similarity(p, perms, copy=False).cpu().numpy())
        warms = [states.get(p) for p in batch]
        certify = [w is None or w.repaired <= REPAIRED_CERTIFY_LIMIT * len(w.col) for w in warms]
        done = (list(_pool().map(_solve, sims, warms, certify)) if len(batch) > 1 and torch.get_num_threads() > 1
                else list(map(_solve, sims, warms, certify)))
        nonlocal solves, certified, exchanged
        solves += len(batch)
        gain = 0.0
        for p, s, state, searched in zip(batch, sims, done, certify):
            states[p] = state
            certified += state.certified and searched  # a repair that re-assigned no row is no certificate
            exchanged += state.exchanges > 0
            col, cur = state.col, perms[p].cpu().numpy()
            if np.array_equal(col, cur):  # no gain; spares two scattered reads of S (~0.1 ms at n = 512)
                continue
            rows = np.arange(len(col))
            new, old = s[rows, col].sum(), s[rows, cur].sum()
            if new > old + IMPROVEMENT_TOL:
                perms[p] = torch.from_numpy(col).to(dev)
                changes[p] += 1
                gain += new - old
        return gain

    rng = np.random.default_rng(seed)
    # The objective moves by exactly the accepted gains (terms not touching the solved perm are
    # unchanged), so it is tracked incrementally instead of re-permuting every parameter.
    history: list[float] = []
    cur = init = terms.objective(perms) if absolute else 0.0
    converged = False
    for _ in range(max_iter):
        gain, batch = 0.0, []
        for p in rng.permutation(spec.perm_names):
            if any(p in terms.neighbours[q] for q in batch):  # p depends on the batch's outcome
                gain += solve(batch)
                batch = []
            if dirty(p):
                batch.append(p)
        if batch:
            gain += solve(batch)
        cur += gain
        history.append(cur)
        if gain <= IMPROVEMENT_TOL:
            converged = True
            break
    return MatchResult({p: t.cpu() for p, t in perms.items()}, history, init, len(history), converged, seed,
                       solves, certified, exchanged, states)


class SimilarityTerms:
    """Every perm's similarity matrix, kept up to date as the perms of B and the model A change.

    Holds A and B in float64 on A's device. For a parameter touching perm p on ``axis`` it views
    W_a as an (n, rest) matrix. If no other axis is permuted, its product with W_b is constant in
    the perms (a "const" term). Otherwise the parameter is a matrix whose other axis is permuted
    by q (a "varying" term), and W_b is kept transposed, (rest, n), so that permuting by q is a
    cheap row gather (a column gather costs ~10x more).

    Perm p's similarity ``S_p = sum of its terms`` is kept as one matrix, with the perm each
    varying term was last evaluated at. When q has since moved on units K, S_p is corrected in
    place by the rank-|K| update ``A[:, K] @ (B_t[q_new[K]] - B_t[q_old[K]])`` (a term is a sum
    over q's units): late sweeps move a handful of units, so this costs |K|/n of a product, and
    nothing is re-summed. When A is replaced (`retarget`), S_p is corrected the same way on the
    rows and columns at the units where A changed. Rounding drift is bounded by recomputing S_p
    from scratch after ``REFRESH`` corrections.
    """

    # A retarget's sparse correction's two products cost |R|/n + |C|/m of the dense one (D is
    # n x m); past this fraction the gathers and the scatter make it the slower one.
    DENSE_FRACTION = 0.6
    # Past REFRESH corrections S_p is recomputed: each adds float64 rounding of ~1e-16 of the
    # entries, and they mostly cancel. Measured on a MergeMany of 8 MNIST models (37 passes, up to
    # 240 corrections of one S_p without a refresh): kept S_p within 1.4e-14 of a fresh sum
    # (relative to its largest entry), against 9e-15 with refreshes every 64, the scale at which
    # the plain algorithm's own products differ by summation order. A refresh costs every term of
    # p afresh (2-3 products, ~15% of that MergeMany's flops at 64), so it is kept rare.
    REFRESH = 256

    def __init__(self, spec: PermutationSpec, params_a: Mapping[str, Tensor], params_b: Mapping[str, Tensor]):
        self.spec = spec
        self.device = next(iter(params_a.values())).device
        keys = list(spec.axes_to_perm)
        # A is owned (a copy even when already float64 on the device): `retarget` writes into it
        self.a = {k: params_a[k].detach().to(self.device, torch.float64, copy=True) for k in keys}
        # A's matrices also kept transposed: gathering columns costs ~10x gathering rows (measured:
        # 20 of 512 float64 columns 27 us, rows 4 us), and the corrections gather both (`_slice`)
        self.a_t = {k: v.T.contiguous() for k, v in self.a.items() if v.ndim == 2}
        self.b = {k: params_b[k].detach().to(self.device, torch.float64) for k in keys}
        self.sizes = spec.perm_sizes(self.a)
        self.const_parts: dict[str, list[tuple[str, int]]] = {}  # (param, axis) of p's const terms
        self.varying: dict[str, list[tuple[str, int, Tensor, str]]] = {}  # (param, axis, B_t, q)
        self.neighbours: dict[str, set[str]] = {}
        self.sums: dict[str, Tensor] = {}  # p -> S_p, kept
        self.used: dict[str, list[Tensor]] = {}  # p -> each varying term's q when S_p was last updated
        self.corrections: dict[str, int] = {}  # p -> corrections since S_p was computed afresh
        self._permuted: dict[str, tuple[list[Tensor], Tensor]] = {}  # param -> (perms used, permuted B)
        for p, touching in spec.perm_to_axes.items():
            n = self.sizes[p]
            self.const_parts[p], self.varying[p], self.neighbours[p] = [], [], set()
            for k, axis in touching:
                others = [(ax, q) for ax, q in enumerate(spec.axes_to_perm[k]) if q is not None and ax != axis]
                self.neighbours[p] |= {q for _, q in others}
                if not others:
                    self.const_parts[p].append((k, axis))
                elif self.a[k].ndim == 2:
                    self.varying[p].append((k, axis, _rows(self.b[k], axis, n).T.contiguous(), others[0][1]))
                else:
                    raise ValueError(f"weight matching supports permuted matrices and vectors; {k} has "
                                     f"{self.a[k].ndim} axes")

    def _fresh(self, p: str, perms: Mapping[str, Tensor]) -> Tensor:
        n = self.sizes[p]
        sim = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        for k, axis in self.const_parts[p]:
            sim += _rows(self.a[k], axis, n) @ _rows(self.b[k], axis, n).T
        for k, axis, b_t, q in self.varying[p]:
            sim.addmm_(_rows(self.a[k], axis, n), b_t.index_select(0, perms[q]))
        self.sums[p] = sim
        self.used[p] = [perms[q].clone() for *_, q in self.varying[p]]
        self.corrections[p] = 0
        return sim

    def similarity(self, p: str, perms: Mapping[str, Tensor], copy: bool = True) -> Tensor:
        """Perm p's similarity matrix for the current perms of B's other axes. ``copy=False``
        returns the kept matrix itself (no 2 MB copy a solve at n = 512): it stays valid until
        the next `similarity` of p or `retarget`, and must not be written to."""
        sim = self.sums.get(p)
        if sim is None or self.corrections[p] >= self.REFRESH:
            sim = self._fresh(p, perms)
        else:
            for t, (k, axis, b_t, q) in enumerate(self.varying[p]):
                perm, used = perms[q], self.used[p][t]
                moved = (perm != used).nonzero().flatten()
                if moved.numel() == 0:
                    continue
                sim.addmm_(self._slice(k, axis, moved, rows=False), b_t[perm[moved]] - b_t[used[moved]])
                self.used[p][t] = perm.clone()
                self.corrections[p] += 1
        return sim.clone() if copy else sim

    def retarget(self, params_a: Mapping[str, Tensor], moved: Mapping[str, Tensor]) -> None:
        """Replace model A (same shapes), keeping B, where A changed only at ``moved``: for each
        perm, the units (indices along its axes) where A may differ (MergeMany: the mean of the
        other models moves where their permutations moved a few units). A is taken to differ
        only on those rows and columns of each parameter; nothing else of ``params_a`` is read.
        Every kept S_p is corrected by the change ``D = A_new - A_old`` of its terms: ``D[R] @ X``
        on p's changed units R and ``D[:, C] @ X[C]`` on the other axis' changed units C, or,
        past DENSE_FRACTION of the flops, by the dense ``D @ X`` (as costly as a fresh product)."""
        # distinct units: a repeated one would be corrected twice (index_add_)
        moved = {q: torch.unique(u.to(self.device)) for q, u in moved.items() if u.numel()}
        # Each parameter's change is computed once, in its own layout, and shared by the terms of
        # both perms it touches: ``dense`` holds D whole, ``slices`` its changed rows/columns as
        # {axis: (units, new values there, their change)}.
        dense: dict[str, Tensor] = {}
        slices: dict[str, dict[int, tuple[Tensor, Tensor, Tensor]]] = {}
        for k, axes in self.spec.axes_to_perm.items():
            if not any(q in moved for q in axes):
                continue
            w = params_a[k].detach()
            if w.shape != self.a[k].shape:
                raise ValueError(f"retarget: {k} has shape {tuple(w.shape)}, expected {tuple(self.a[k].shape)}")
            if any(q in moved and moved[q].numel() == self.sizes[q] for q in axes):
                # every unit of one of its axes moved (early MergeMany passes): all of k may
                # differ, so it is read whole, without gathers or scatters
                new = w.to(self.device, torch.float64, copy=True)
                dense[k] = new - self.a[k]
                self.a[k] = new
                if new.ndim == 2:
                    self.a_t[k] = new.T.contiguous()
                continue
            slices[k] = {}
            for axis, q in enumerate(axes):
                if q in moved:
                    units = moved[q]
                    values = w.index_select(axis, units.to(w.device)).to(self.device, torch.float64)
                    old = self._slice(k, 0, units, rows=axis == 0)  # A's rows (axis 0) or columns there
                    slices[k][axis] = (units, values, values - old.reshape(values.shape))
            if sum(u.numel() / self.a[k].shape[ax] for ax, (u, _, _) in slices[k].items()) > self.DENSE_FRACTION:
                d = torch.zeros_like(self.a[k])
                for ax, (u, _, du) in slices[k].items():
                    d.index_copy_(ax, u, du)
                dense[k] = d
        for p, sim in list(self.sums.items()):
            n = self.sizes[p]
            for k, axis, x, gather in ([(k, axis, _rows(self.b[k], axis, n).T, None) for k, axis in self.const_parts[p]]
                                       + [(k, axis, b_t, used) for (k, axis, b_t, _), used
                                          in zip(self.varying[p], self.used[p])]):
                if k in dense:
                    sim.addmm_(_rows(dense[k], axis, n), x if gather is None else x.index_select(0, gather))
                    self.corrections[p] += 1
                elif k in slices:
                    self._correct_slices(sim, axis, slices[k], x, gather)
                    self.corrections[p] += 1
        for k, by_axis in slices.items():
            for axis, (units, values, _) in by_axis.items():
                self.a[k].index_copy_(axis, units, values)
                if k in self.a_t:
                    self.a_t[k].index_copy_(1 - axis, units, values.T)

    def _slice(self, k: str, axis: int, units: Tensor, rows: bool) -> Tensor:
        """Rows (or columns) ``units`` of A's parameter k viewed as an (n, rest) matrix along
        ``axis``, gathered as rows of whichever of A and its transpose holds them as rows."""
        if k not in self.a_t:  # a vector: (n, 1)
            return self.a[k].index_select(0, units).unsqueeze(1)
        if rows:
            return (self.a[k] if axis == 0 else self.a_t[k]).index_select(0, units)
        return (self.a_t[k] if axis == 0 else self.a[k]).index_select(0, units).T

    @staticmethod
    def _correct_slices(sim: Tensor, axis: int, by_axis: dict, x: Tensor, gather: Tensor | None = None) -> None:
        """Add ``D @ x[gather]`` to ``sim``, D the change of a parameter viewed along ``axis``
        (an (n, rest) matrix), nonzero only on the slices ``by_axis`` holds: its rows R at p's
        units, its columns C at the other axis' units. ``D[R] @ x`` is added to rows R, and the
        columns' part, with rows R zeroed, as ``D[:, C] @ x[C]``."""
        n = sim.shape[0]
        rows = by_axis.get(axis)
        other = [a for a in by_axis if a != axis]
        if rows is not None:
            units, _, du = rows
            dr = _rows(du, axis, units.numel())
            if gather is not None:  # d[r] @ x[gather] == d[r][:, gather^-1] @ x: gathers |r| rows, not all of x
                dr = dr.index_select(1, torch.argsort(gather))
            sim.index_add_(0, units, dr @ x)
        if other:
            units, _, du = by_axis[other[0]]
            dc = _rows(du, axis, n)
            if rows is not None:  # rows R were added whole above; zero rows add exactly 0.0
                dc = dc.index_fill(0, rows[0], 0.0)
            sim.addmm_(dc, x[units] if gather is None else x.index_select(0, gather[units]))

    def objective(self, perms: Mapping[str, Tensor]) -> float:
        # B permuted is kept per parameter with the perms it was permuted by: a later call (the
        # next MergeMany matching) re-permutes only the parameters whose perms moved.
        total = 0.0
        for k, axes in self.spec.axes_to_perm.items():
            used = [perms[q] for q in axes if q is not None]
            kept = self._permuted.get(k)
            if kept is None or any(not torch.equal(u, v) for u, v in zip(used, kept[0])):
                w = self.b[k]
                for axis, q in enumerate(axes):
                    if q is not None:
                        w = w.index_select(axis, perms[q])
                kept = self._permuted[k] = ([u.clone() for u in used], w)
            total += float(torch.vdot(self.a[k].flatten(), kept[1].flatten()))
        return total


def _solve(sim: np.ndarray, warm: AssignmentState | None, certify: bool) -> AssignmentState:
    """`solve_assignment` with ``certify`` positional, as the pool's ``map`` passes it; a perm's
    first solve (no state yet) starts with row reduction."""
    return solve_assignment(sim, warm, certify=certify, reduce_cold=True)


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    return _POOL


def _rows(w: Tensor, axis: int, n: int) -> Tensor:
    """``w`` as an (n, -1) matrix whose rows index ``axis``."""
    return w.movedim(axis, 0).reshape(n, -1)


def weight_matching_plain(spec: PermutationSpec, params_a: Mapping[str, Tensor], params_b: Mapping[str, Tensor],
                          *, seed: int = 0, max_iter: int = 100) -> tuple[dict[str, Tensor], list[float]]:
    """Algorithm 1 of Ainsworth et al. as written: every perm solved cold (scipy) in every sweep,
    the objective recomputed from scratch. The reference `weight_matching` is tested equal to
    (same perms, same objective per sweep) and the benchmarks time against; returns the perms
    moving B onto A and the objective after each sweep."""
    from scipy.optimize import linear_sum_assignment  # here: ~0.3 s to import, which merge workers need not pay

    a = {k: params_a[k].detach().double().cpu() for k in spec.axes_to_perm}
    b = {k: params_b[k].detach().double().cpu() for k in spec.axes_to_perm}
    perms = identity_perms(spec, a)
    rng = np.random.default_rng(seed)

    def objective() -> float:
        pb = apply_permutation(spec, perms, b)
        return sum(float((a[k] * pb[k]).sum()) for k in a)

    history, prev = [], objective()
    for _ in range(max_iter):
        for p in rng.permutation(spec.perm_names):
            n = perms[p].numel()
            sim = torch.zeros(n, n, dtype=torch.float64)
            for k, axis in spec.perm_to_axes[p]:
                w_b = b[k]
                for ax, q in enumerate(spec.axes_to_perm[k]):  # B's other permuted axes, as they are now
                    if q is not None and ax != axis:
                        w_b = w_b.index_select(ax, perms[q])
                sim += _rows(a[k], axis, n) @ _rows(w_b, axis, n).T
            s = sim.numpy()
            col = linear_sum_assignment(s, maximize=True)[1]
            rows = np.arange(n)
            if s[rows, col].sum() > s[rows, perms[p].numpy()].sum() + IMPROVEMENT_TOL:
                perms[p] = torch.from_numpy(col)
        cur = objective()
        history.append(cur)
        if cur - prev <= IMPROVEMENT_TOL:
            break
        prev = cur
    return perms, history
