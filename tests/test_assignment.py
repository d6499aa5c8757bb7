"""The warm-started assignment solver against scipy: random, tied, degenerate and real matrices."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from audit.assignment import AssignmentState, solve_assignment
from audit.rebasin import SimilarityTerms, identity_perms, mlp_permutation_spec


def scipy_value(m, maximize=True):
    r, c = linear_sum_assignment(m, maximize=maximize)
    return m[r, c].sum(), c


def value(m, col):
    return m[np.arange(len(col)), col].sum()


def check_duals(m, st: AssignmentState, maximize=True):
    """The returned duals prove optimality: feasible everywhere, tight on the assignment."""
    cost = -m if maximize else m
    reduced = cost - st.u[:, None] - st.v[None, :]
    scale = 1e-9 * max(1.0, np.abs(cost).max())
    assert reduced.min() >= -scale
    assert np.abs(reduced[np.arange(len(st.col)), st.col]).max() <= scale


def mixed_matrices(seed: int, count: int = 1500):
    """(kind, matrix, maximize): normal, tied integer (kind 1) and wide-ranged exponential
    square matrices of 1-39 rows, in turn, maximised every other time."""
    rng = np.random.default_rng(seed)
    for t in range(count):
        n = int(rng.integers(1, 40))
        kind = t % 3
        m = (rng.normal(size=(n, n)) if kind == 0 else rng.integers(0, 3, size=(n, n)).astype(float)
             if kind == 1 else rng.exponential(size=(n, n)) * 1e3)
        yield kind, m, bool(t % 2)


def test_cold_solves_equal_scipy_exactly_ties_included():
    """A cold solve performs scipy's augmentations in scipy's order: the same assignment even
    where several are optimal (integer matrices with many ties)."""
    for _, m, maximize in mixed_matrices(0):
        n = len(m)
        st = solve_assignment(m, maximize=maximize)
        np.testing.assert_array_equal(st.col, linear_sum_assignment(m, maximize=maximize)[1])
        assert sorted(st.col) == list(range(n))
        check_duals(m, st, maximize)


def test_cold_solves_starting_with_row_reduction_are_optimal():
    """``reduce_cold``: row reduction, then augmentations. Optimal with valid duals on random,
    tied and wide-ranged matrices; scipy's assignment where the optimum is unique (continuous
    entries); on tied matrices an optimum of scipy's value, not necessarily scipy's."""
    differs = 0
    for kind, m, maximize in mixed_matrices(4):
        n = len(m)
        st = solve_assignment(m, maximize=maximize, reduce_cold=True)
        best, col = scipy_value(m, maximize)
        assert sorted(st.col) == list(range(n)) and st.repaired == n
        check_duals(m, st, maximize)
        if kind == 1:
            assert value(m, st.col) == best
            differs += not np.array_equal(st.col, col)
        else:
            np.testing.assert_array_equal(st.col, col)
    assert differs  # the ties were real: another optimum than scipy's was returned
    for m in (np.zeros((5, 5)), np.eye(6), np.full((8, 8), 1e12), np.array([[2.5]])):
        st = solve_assignment(m, reduce_cold=True)
        assert value(m, st.col) == pytest.approx(scipy_value(m)[0])
        check_duals(m, st)
    assert solve_assignment(np.zeros((0, 0)), reduce_cold=True).col.size == 0


@pytest.mark.parametrize("scale", [0.0, 1e-9, 1e-6, 1e-3, 1e-1, 10.0])
def test_warm_solves_are_optimal_after_any_change(scale):
    """Warm-started from the previous matrix's state: optimal for the new matrix, the same
    assignment as scipy (continuous entries: the optimum is unique), valid duals; with the
    certificate search or without it (``certify=False``: repaired at once)."""
    rng = np.random.default_rng(1)
    for t in range(300):
        n = int(rng.integers(1, 60))
        m = rng.normal(size=(n, n))
        prev = solve_assignment(m)
        m2 = m + scale * rng.normal(size=(n, n))
        st = solve_assignment(m2, prev)
        best, col = scipy_value(m2)
        np.testing.assert_array_equal(st.col, col)
        check_duals(m2, st)
        if scale == 0.0:
            assert st.certified  # an unchanged matrix is proven optimal without solving
        repaired = solve_assignment(m2, prev, certify=False)  # the repair alone finds it too
        np.testing.assert_array_equal(repaired.col, col)
        check_duals(m2, repaired)
        assert repaired.exchanges == 0


def test_certificate_applies_planted_improving_exchanges():
    """The old optimum plus a planted improving cycle (k rows each gaining on the next one's
    column): the certificate search closes the cycle and proves the exchanged assignment
    optimal, without augmenting, in most cases; every result equals scipy's with valid duals."""
    rng = np.random.default_rng(4)
    paths = {"exchanged": 0, "augmented": 0}
    for t in range(400):
        n = int(rng.integers(2, 80))
        m = rng.normal(size=(n, n))
        prev = solve_assignment(m)
        k = int(rng.integers(2, min(n, 6) + 1))
        rows = rng.choice(n, k, replace=False)
        m2 = m.copy()
        for a, b in zip(rows, np.roll(rows, -1)):
            m2[a, prev.col[b]] = m[a, prev.col[a]] + rng.uniform(0.1, 1.0)  # each mover gains
        st = solve_assignment(m2, prev)
        np.testing.assert_array_equal(st.col, scipy_value(m2)[1])
        check_duals(m2, st)
        assert not st.certified  # the old assignment is no longer optimal
        paths["exchanged" if st.exchanges else "augmented"] += 1
    assert paths["exchanged"] > 0.5 * 400, paths  # 276 of 400 here


@pytest.mark.parametrize("shift", [0.0, 1e2, 1e4])
def test_drifted_duals_do_not_loosen_the_certificate(shift):
    """Duals shifted by a constant (u + s, v - s) are the same certificate; column duals drift
    that way over many warm solves. Near-ties 1e-11 apart are still told apart: the result is
    scipy's optimum, not an assignment the labels' rounding at scale s let through."""
    rng = np.random.default_rng(1)
    n = 128
    m = rng.normal(size=n)[:, None] + rng.normal(size=n)[None, :] + 1e-11 * rng.normal(size=(n, n))
    st = solve_assignment(m)
    again = solve_assignment(m, AssignmentState(st.col.copy(), st.u + shift, st.v - shift))
    best, col = scipy_value(m)
    assert value(m, again.col) == best
    check_duals(m, again)


def test_warm_start_from_an_unrelated_state_and_with_ties_is_still_optimal():
    rng = np.random.default_rng(2)
    for t in range(600):
        n = int(rng.integers(1, 30))
        m = rng.integers(0, 4, size=(n, n)).astype(float)  # many optimal assignments
        junk = AssignmentState(rng.permutation(n), rng.normal(size=n) * 5, rng.normal(size=n) * 5)
        for warm in (junk, solve_assignment(rng.integers(0, 4, size=(n, n)).astype(float))):
            st = solve_assignment(m, warm)
            assert sorted(st.col) == list(range(n))
            assert value(m, st.col) == pytest.approx(scipy_value(m)[0], abs=1e-9)
            check_duals(m, st)


@pytest.mark.parametrize("m", [np.zeros((5, 5)), np.ones((7, 7)) * -3.0, np.eye(6), np.array([[2.5]]),
                               np.arange(16.0).reshape(4, 4), np.full((8, 8), 1e12)])
@pytest.mark.parametrize("reduce_cold", [False, True])
def test_degenerate_matrices(m, reduce_cold):
    for warm in (None, solve_assignment(m, reduce_cold=reduce_cold)):
        st = solve_assignment(m, warm, reduce_cold=reduce_cold)
        assert value(m, st.col) == pytest.approx(scipy_value(m)[0])
        check_duals(m, st)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="square"):
        solve_assignment(np.zeros((2, 3)))
    for bad in (np.nan, np.inf, -np.inf):  # each caught whether the matrix is negated or not
        for maximize in (True, False):
            with pytest.raises(ValueError, match="NaN or infinite"):
                solve_assignment(np.array([[0.0, bad], [1.0, 2.0]]), maximize=maximize)
    empty = solve_assignment(np.zeros((0, 0)))
    assert empty.col.size == 0
    for certify in (True, False):  # warm-started from an empty problem's state: still nothing to assign
        assert solve_assignment(np.zeros((0, 0)), empty, certify=certify).col.size == 0
    with pytest.raises(ValueError, match="warm state is for 3 rows"):
        solve_assignment(np.zeros((2, 2)), solve_assignment(np.zeros((3, 3))))
    for col in ([0, 0, 2], [0, 1, 3], [-1, 1, 2]):  # a repeated column, one past the end, a negative one
        with pytest.raises(ValueError, match="not a permutation"):
            solve_assignment(np.zeros((3, 3)), AssignmentState(np.array(col), np.zeros(3), np.zeros(3)))


def test_reindexed_state_follows_a_permutation_of_the_columns():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(20, 20))
    st = solve_assignment(m)
    perm = st.col  # permuting the columns by the solution makes it the identity
    moved = st.reindexed(perm)
    np.testing.assert_array_equal(moved.col, np.arange(20))
    again = solve_assignment(m[:, perm], moved)
    assert again.certified
    np.testing.assert_array_equal(again.col, np.arange(20))


@pytest.mark.parametrize("reduce_cold", [False, True])
def test_real_similarity_matrices_along_a_matching(trained_pair, reduce_cold):
    """The similarity matrices weight matching meets on trained models, perm by perm and under
    many random states of the neighbouring perms: warm solves equal scipy's, after a first solve
    of each perm with scipy's augmentations or (as weight matching does) row reduction first."""
    _, (a, b) = trained_pair
    spec = mlp_permutation_spec(a)
    keys = list(spec.axes_to_perm)
    a64 = {k: a[k].double() for k in keys}
    b64 = {k: b[k].double() for k in keys}
    perms = identity_perms(spec, a64)
    terms = SimilarityTerms(spec, a64, b64)
    g = torch.Generator().manual_seed(0)
    states, checked = {}, 0
    for step in range(40):
        p = spec.perm_names[step % len(spec.perm_names)]
        for q in terms.neighbours[p]:  # move a few units of the neighbours, as late sweeps do
            k = int(torch.randint(1, 12, (1,), generator=g))
            idx = torch.randperm(perms[q].numel(), generator=g)[:k]
            perms[q] = perms[q].clone()
            perms[q][idx] = perms[q][idx[torch.randperm(k, generator=g)]]
        sim = terms.similarity(p, perms).numpy()
        states[p] = solve_assignment(sim, states.get(p), reduce_cold=reduce_cold)
        np.testing.assert_array_equal(states[p].col, linear_sum_assignment(sim, maximize=True)[1])
        check_duals(sim, states[p])
        checked += 1
    assert checked == 40
