"""Exact linear assignment with warm starts (shortest augmenting paths, numba-compiled).

Weight matching solves the same assignment problem over and over while the similarity matrix
changes a little between solves (late coordinate-descent sweeps, late MergeMany passes). A cold
solver redoes all n augmentations every time; this one keeps the previous solve's assignment and
dual variables and repairs only what the change broke:

* first, the old assignment is tested with the column duals as potentials (a label-correcting
  shortest-path search over the columns): when it ends, the duals prove the old assignment still
  optimal in O(n^2), without solving (a dual certificate); a cycle the search closes is an
  exchange of columns among a few rows that lowers the cost, so it is applied and the search goes
  on, and when it ends the duals prove the exchanged assignment optimal;
* where that takes too long, every row dual is reset to ``u_i = min_j (C_ij - v_j)``, which makes
  the duals feasible for the new costs (every reduced cost ``C_ij - u_i - v_j >= 0``); a row whose
  column still attains that minimum keeps it (its edge is tight, so the kept part of the
  assignment satisfies complementary slackness); the other rows are re-assigned by
  Jonker-Volgenant's augmenting row reduction (O(n) a step) and, what that leaves free, by the
  shortest augmenting path step as scipy implements it (Crouse 2016); both keep the duals
  feasible and the assignment tight.

Every exit is an optimal assignment, so results equal scipy's wherever the optimum is unique; a
cold call (no warm state) performs exactly scipy's sequence of augmentations, ties broken the
same way, unless it is asked to start with row reduction (faster, see `solve_assignment`).

Why hand-written: scipy's ``linear_sum_assignment`` returns no duals and takes no starting
point, and the packages on PyPI that do (lap, lapx, lapsolver) were 2-5x slower than scipy on
this project's real 512x512 similarity matrices and also start cold. numba compiles it; the
compiled code releases the GIL, so independent solves run concurrently in threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from numba import njit


@dataclass
class AssignmentState:
    """What a solve leaves for the next one: its assignment and its dual variables.

    For a cost matrix C (n x n, minimised), ``u[i] + v[j] <= C[i, j]`` everywhere with equality
    on ``(i, col[i])``. ``repaired``: rows whose column the solve changed or re-assigned (n when
    cold, 0 when the warm start's assignment was certified optimal). ``exchanges``: improving
    column exchanges (negative cycles) the certificate search applied before it proved the
    result optimal; a solve that needed augmenting paths has none.
    """

    col: np.ndarray  # int64, row i -> column col[i]
    u: np.ndarray  # float64 row duals
    v: np.ndarray  # float64 column duals
    repaired: int = 0
    exchanges: int = 0

    @property
    def certified(self) -> bool:
        return self.repaired == 0

    def reindexed(self, perm: np.ndarray) -> "AssignmentState":
        """The same state after the columns are reordered so that new column k is old column
        ``perm[k]`` (what applying a permutation to model B does to its units)."""
        inv = np.empty_like(perm)
        inv[perm] = np.arange(perm.size)
        return AssignmentState(inv[self.col], self.u.copy(), self.v[perm].copy(), self.repaired, self.exchanges)


def solve_assignment(sim: np.ndarray, warm: AssignmentState | None = None, *,
                     maximize: bool = True, certify: bool = True, reduce_cold: bool = False) -> AssignmentState:
    """Optimal assignment of a square matrix ``sim`` (maximised by default), warm-started from
    ``warm`` (a state of an earlier solve of a matrix of the same size) when given.
    ``certify=False`` skips the certificate search and repairs the warm start at once: an optimum
    as well (the same one wherever it is unique), faster where the old assignment is known to be
    far from it. ``reduce_cold=True`` starts a cold solve with two rounds of augmenting row
    reduction from zero column duals and augments only the rows they leave free (Jonker &
    Volgenant's initialisation, without their column reduction, which was slower here): on the
    first 512x512 similarity matrices of 4 pairs of trained MNIST MLPs (1 thread, medians of 7)
    3.5-8.4 ms against 8.7-14 ms for scipy's augmentations alone (this function's default) and
    7.7-12 ms for scipy itself. An optimum as well, the same one wherever it is unique; under
    ties not necessarily scipy's.

    Returns the state: ``col[i]`` is the column of row i. Duals refer to the minimised cost
    ``-sim`` when maximising.
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"solve_assignment needs a square matrix, got shape {sim.shape}")
    n = sim.shape[0]
    cost = _cost_buffer(n)
    if maximize:
        np.negative(sim, out=cost)  # exact
    else:
        np.copyto(cost, sim)
    # numpy's max and min propagate NaN and vectorize: this and the copy take ~0.12 ms at
    # n = 512, against ~0.27 ms for one compiled loop that also checks each entry
    top, bottom = (cost.max(), cost.min()) if n else (0.0, 0.0)
    if not (np.isfinite(top) and np.isfinite(bottom)):
        raise ValueError("solve_assignment: the matrix has NaN or infinite entries")
    largest = max(float(top), -float(bottom))
    col4row = np.full(n, -1, dtype=np.int64)
    row4col = np.full(n, -1, dtype=np.int64)
    u = np.zeros(n)
    v = np.zeros(n)
    if warm is not None:
        if warm.col.shape != (n,):
            raise ValueError(f"warm state is for {warm.col.size} rows, the matrix has {n}")
        if n == 0:  # nothing to assign (and no dual to shift: max() of nothing is undefined)
            return AssignmentState(np.zeros(0, dtype=np.int64), u, v)
        old = np.ascontiguousarray(warm.col, dtype=np.int64)
        if old.min() < 0 or old.max() >= n or np.bincount(old, minlength=n).max() > 1:
            raise ValueError("warm state's assignment is not a permutation of the columns")
        col = old.copy()
        # Column duals only ever fall (every step below lowers them), so over many warm solves
        # they drift away from the costs' scale; shifting them all by one constant changes no
        # reduced cost, and keeps the labels' rounding at the scale the tolerance assumes.
        start = warm.v - warm.v.max()
        v[:] = start
        # Certificate first: is the old assignment, after the improving exchanges the search
        # finds, optimal? Then no augmentation at all.
        tol = CERTIFY_ULPS * np.finfo(np.float64).eps * max(1.0, largest, float(-start.min()))
        exchanges = _certify(cost, col, v, CERTIFY_SCANS * n, max(1, n // CYCLE_CHECKS), tol) if certify else -1
        if exchanges >= 0:
            return AssignmentState(col, cost[np.arange(n), col] - v[col], v, int((col != old).sum()), int(exchanges))
        # Repair from the exchanged assignment (never worse than the old one) and the old duals:
        # the certificate's labels, lowered along cycles it did not close, break more rows.
        v[:] = start
        _warm_start(cost, v, col, u, col4row, row4col)
        freed = (col4row == -1) | (col != old)  # rows the repair re-assigns or the exchanges moved
        # Two rounds of row reduction, as in Jonker & Volgenant's own code: on MergeMany's warm
        # solves the second leaves 7 free rows where one left 18 (medians), and a free row's
        # augmenting path costs far more than a reduction step (replayed: -0.23 s of paths for
        # +0.08 s of reduction over the 358 repairs of a MergeMany of 4 MNIST models).
        _row_reduction(cost, v, col4row, row4col)
        _row_reduction(cost, v, col4row, row4col)
        _row_duals(cost, v, u)
        _augment_free_rows(cost, u, v, col4row, row4col)
        return AssignmentState(col4row, u, v, int((freed | (col4row != old)).sum()))
    if reduce_cold:
        _row_reduction(cost, v, col4row, row4col)
        _row_reduction(cost, v, col4row, row4col)
        _row_duals(cost, v, u)
    _augment_free_rows(cost, u, v, col4row, row4col)
    return AssignmentState(col4row, u, v, n)


_BUFFERS = threading.local()


def _cost_buffer(n: int) -> np.ndarray:
    """This thread's (n, n) cost matrix, reused by its next solve of that size: nothing of it
    outlives a solve, and a fresh 2 MB array a solve (n = 512) costs ~0.3 ms in page faults."""
    bufs = getattr(_BUFFERS, "by_size", None)
    if bufs is None:
        bufs = _BUFFERS.by_size = {}
    if n not in bufs:
        bufs[n] = np.empty((n, n))
    return bufs[n]


# Row scans (O(n) each, in units of n) the certificate search may spend before it gives up and
# repairs instead, and how often (times per n scans) it looks for a closed cycle. Measured on the
# 851 warm solves of a MergeMany of four 784-512x3-10 MNIST MLPs, replayed on 1 thread: 4 n scans
# with a look every n/8 left 338 of them to the repair; the kernels took 1.23 s in all against
# 1.73 s for a plain certificate (3 n scans, no exchanges) followed by the repair whenever the
# assignment had changed (whole solves: 1.39-1.48 s against 1.57-1.68 s); 6 n or 2 n scans were
# slower (1.35 s, 1.29 s).
CERTIFY_SCANS = 4
CYCLE_CHECKS = 8
# A label must fall by more than this many units of float64 rounding of the largest entry to
# count: rounding alone makes zero-weight exchange cycles (ties) look slightly negative, which
# would lower labels forever. An exchange the certificate can miss gains less than n times this
# (5e-13 relative for n = 512), below what scipy's own float arithmetic resolves.
CERTIFY_ULPS = 8


@njit(cache=True, nogil=True)
def _certify(cost, col, v, max_scans, every, tol):
    """Prove the assignment ``col`` optimal for ``cost``, exchanging columns where that lowers the
    cost, starting from column potentials ``v``; ``col`` and ``v`` are updated in place.

    The assignment is optimal iff potentials exist with ``C_ij - u_i - v_j >= 0`` for all i, j and
    equality on the assignment, i.e. with ``u_i = C_i,col(i) - v_col(i)``:
    ``v_j <= v_col(i) + C_ij - C_i,col(i)``. That is a shortest-path system on the columns (edge
    col(i) -> j of weight C_ij - C_i,col(i): row i moving to column j) with a solution iff there is
    no negative cycle, i.e. no improving exchange. Label-correcting (a FIFO queue of rows whose
    column label fell) from the old potentials: they are nearly right, so few labels move.

    Every ``every`` scans the parent graph (column j -> the column whose row last lowered j's
    label) is searched for a cycle. A cycle there has weight below ``-tol`` (each label on it was
    lowered by more than ``tol`` after its successor's was set; Cherkassky & Goldberg 1999), so
    moving each of its rows to the column it points at lowers the cost: it is applied, the moved
    rows are queued again and the search goes on. Returns the number of exchanges once no label
    can fall (``v`` is then the proof), or -1 when ``max_scans`` ran out.
    """
    n = cost.shape[0]
    row4col = np.empty(n, dtype=np.int64)
    for i in range(n):
        row4col[col[i]] = i
    pred = np.full(n, -1, dtype=np.int64)  # row whose scan last lowered v[j]; -1: none since the last exchange
    stamp = np.zeros(n, dtype=np.int64)
    cycle = np.empty(n, dtype=np.int64)
    movers = np.empty(n, dtype=np.int64)
    queue = np.arange(n)
    queued = np.ones(n, dtype=np.bool_)
    head = 0
    count = n
    scans = 0
    exchanges = 0
    while count > 0:
        i = queue[head]
        head = (head + 1) % n
        count -= 1
        queued[i] = False
        scans += 1
        if scans > max_scans:
            return -1
        j0 = col[i]
        base = v[j0] - cost[i, j0]
        for j in range(n):
            cand = base + cost[i, j]
            if cand < v[j] - tol:
                v[j] = cand
                pred[j] = i
                k = row4col[j]
                if not queued[k]:
                    queue[(head + count) % n] = k
                    queued[k] = True
                    count += 1
        if scans % every or count == 0:
            continue
        # Walk the parent graph from every labelled column; meeting the current walk's own stamp
        # closes a cycle, meeting an earlier walk's means none through here.
        found = -1
        for s in range(n):
            if stamp[s] != 0 or pred[s] == -1:
                continue
            j = s
            while j != -1 and stamp[j] == 0:
                stamp[j] = s + 1
                j = col[pred[j]] if pred[j] != -1 else -1
            if j != -1 and stamp[j] == s + 1:
                found = j
                break
        stamp[:] = 0
        if found == -1:
            continue
        m = 0
        j = found
        while True:
            cycle[m] = j
            movers[m] = pred[j]
            m += 1
            j = col[pred[j]]
            if j == found:
                break
        for t in range(m):  # row movers[t] leaves col[movers[t]] (on the cycle) for cycle[t]
            col[movers[t]] = cycle[t]
            row4col[cycle[t]] = movers[t]
        exchanges += 1
        pred[:] = -1
        for t in range(m):
            r = movers[t]
            if not queued[r]:
                queue[(head + count) % n] = r
                queued[r] = True
                count += 1
    return exchanges


@njit(cache=True, nogil=True)
def _warm_start(cost, v, old_col, u, col4row, row4col):
    """Feasible row duals for the new costs; keep each row's old column where it is still tight."""
    n = cost.shape[0]
    kept = 0
    _row_duals(cost, v, u)
    for i in range(n):
        j0 = old_col[i]
        if cost[i, j0] - v[j0] <= u[i]:  # attains the minimum: reduced cost 0
            col4row[i] = j0
            row4col[j0] = i
            kept += 1
    return kept


@njit(cache=True, nogil=True)
def _row_reduction(cost, v, col4row, row4col):
    """Jonker-Volgenant's augmenting row reduction: a free row takes its cheapest column (for the
    current ``v``), lowering that column's dual to the second-cheapest reduced cost so the row is
    indifferent between the two, and displaces the column's row. Cheap (O(n) a step), it settles
    most rows a small change freed; what it leaves free goes to the shortest augmenting paths.
    Only column duals change and only downwards, so reduced costs stay feasible, and every
    assigned row stays tight on its column (u is taken as the row minimum afterwards)."""
    n = cost.shape[0]
    free = np.empty(n, dtype=np.int64)
    nfree = 0
    for i in range(n):
        if col4row[i] == -1:
            free[nfree] = i
            nfree += 1
    steps = 0
    limit = 2 * nfree + n  # JV's bound against long displacement chains
    k = 0
    while k < nfree and steps < limit:
        steps += 1
        i = free[k]
        k += 1
        u1 = np.inf
        u2 = np.inf
        j1 = -1
        j2 = -1
        for j in range(n):
            h = cost[i, j] - v[j]
            if h < u2:
                if h >= u1:
                    u2 = h
                    j2 = j
                else:
                    u2 = u1
                    j2 = j1
                    u1 = h
                    j1 = j
        i0 = row4col[j1]
        if u1 < u2 and j2 != -1:  # (a 1x1 matrix has no second column: nothing to balance)
            v[j1] -= u2 - u1
        elif i0 != -1 and j2 != -1:
            j1 = j2
            i0 = row4col[j1]
        if i0 != -1:
            col4row[i0] = -1
            if u1 < u2:  # the displaced row is handled next
                k -= 1
                free[k] = i0
            # on a tie it stays free for the augmenting paths (no cycling)
        col4row[i] = j1
        row4col[j1] = i


@njit(cache=True, nogil=True)
def _row_duals(cost, v, u):
    """Row duals as row minima of the reduced costs (feasible for any v); tight on assigned rows
    when they hold a cheapest column, which row reduction keeps true."""
    n = cost.shape[0]
    for i in range(n):
        best = np.inf
        for j in range(n):
            r = cost[i, j] - v[j]
            if r < best:
                best = r
        u[i] = best


@njit(cache=True, nogil=True)
def _augment_free_rows(cost, u, v, col4row, row4col):
    """Assign every free row by one shortest augmenting path each (scipy's rectangular_lsap
    step for a square matrix), updating the duals so that they stay feasible and tight."""
    n = cost.shape[0]
    path = np.full(n, -1, dtype=np.int64)
    remaining = np.empty(n, dtype=np.int64)
    shortest = np.empty(n)
    sr = np.zeros(n, dtype=np.bool_)
    sc = np.zeros(n, dtype=np.bool_)
    for cur in range(n):
        if col4row[cur] != -1:
            continue
        # Dijkstra over reduced costs from row `cur` to the nearest free column.
        min_val = 0.0
        num_remaining = n
        for it in range(n):
            remaining[it] = n - it - 1
            shortest[it] = np.inf
            sr[it] = False
            sc[it] = False
        i = cur
        sink = -1
        while sink == -1:
            index = -1
            lowest = np.inf
            sr[i] = True
            for it in range(num_remaining):
                j = remaining[it]
                r = min_val + cost[i, j] - u[i] - v[j]
                if r < shortest[j]:
                    path[j] = i
                    shortest[j] = r
                if shortest[j] < lowest or (shortest[j] == lowest and row4col[j] == -1):
                    lowest = shortest[j]
                    index = it
            min_val = lowest
            j = remaining[index]
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            sc[j] = True
            num_remaining -= 1
            remaining[index] = remaining[num_remaining]
        # Dual update: every edge on the search tree becomes tight, none goes negative.
        u[cur] += min_val
        for r in range(n):
            if sr[r] and r != cur:
                u[r] += min_val - shortest[col4row[r]]
        for c in range(n):
            if sc[c]:
                v[c] -= min_val - shortest[c]
        # Flip the path.
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            nxt = col4row[i]
            col4row[i] = j
            j = nxt
            if i == cur:
                break
