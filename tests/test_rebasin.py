import numpy as np
import pytest
import torch

from audit.models import MLP
from audit.rebasin import (
    apply_permutation,
    check_compatible,
    identity_perms,
    interpolate,
    invert_permutation,
    mlp_permutation_spec,
    weight_matching,
    weight_matching_plain,
)

ARCHS = [(12, (7,), 3), (20, (16, 8), 4), (30, (9, 9, 9), 5), (784, "rebasin", 10), (3072, "paper", 10)]


def random_perms(spec, params, seed):
    g = torch.Generator().manual_seed(seed)
    return {p: torch.randperm(n, generator=g) for p, n in spec.perm_sizes(params).items()}


@pytest.mark.parametrize("in_features,widths,n_classes", ARCHS)
def test_permuting_hidden_units_leaves_logits_unchanged(in_features, widths, n_classes):
    torch.manual_seed(0)
    model = MLP(in_features, widths, n_classes, mean=0.4, std=0.3)
    spec = mlp_permutation_spec(model)
    params = model.state_dict()
    permuted = apply_permutation(spec, random_perms(spec, params, 1), params)
    assert any(not torch.equal(params[k], permuted[k]) for k in params)  # the weights did move
    x = torch.rand(32, in_features)
    diff = (model(x) - MLP.from_state_dict(permuted)(x)).abs().max()
    assert diff < 1e-5


def test_spec_of_the_paper_mlp():
    spec = mlp_permutation_spec(MLP(3072, "paper", 10))
    assert spec.perm_names == ["P_0", "P_1", "P_2", "P_3"]
    assert spec.axes_to_perm["hidden.0.weight"] == ("P_0", None)  # input pixels are not permuted
    assert spec.axes_to_perm["hidden.2.weight"] == ("P_2", "P_1")
    assert spec.axes_to_perm["head.weight"] == (None, "P_3")  # logits are not permuted
    assert "norm.mean" not in spec.axes_to_perm


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_permutation_is_recovered(seed):
    torch.manual_seed(seed)
    a = MLP(40, (24, 16, 12), 6).state_dict()
    spec = mlp_permutation_spec(a)
    planted = random_perms(spec, a, seed + 10)
    b = apply_permutation(spec, planted, a)
    b = {k: v + 1e-4 * torch.randn_like(v) if k in spec.axes_to_perm else v for k, v in b.items()}
    res = weight_matching(spec, a, b, seed=seed)
    assert res.converged
    for p in planted:  # B = P(A), so the perms moving B onto A are P^-1
        assert torch.equal(res.perms[p], invert_permutation(planted[p]))
    solution = {p: invert_permutation(t) for p, t in planted.items()}
    planted_obj = sum(float((a[k].double() * v.double()).sum())
                      for k, v in apply_permutation(spec, solution, b).items() if k in spec.axes_to_perm)
    assert res.objective[-1] == pytest.approx(planted_obj, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_shortcuts_give_exactly_the_plain_algorithm(trained_pair, seed, monkeypatch):
    """Caching, skipping and solving without the certificate search after a solve that
    re-assigned more than 20% of the rows must not change a single decision. (These 2-hidden-layer
    models have no independent perms to solve concurrently: see the MergeMany tests of
    3-hidden-layer models.)"""
    import audit.rebasin as rebasin

    _, (a, b) = trained_pair
    spec = mlp_permutation_spec(a)
    ref_perms, ref_hist = weight_matching_plain(spec, a, b, seed=seed)
    calls, solve = [], rebasin._solve
    monkeypatch.setattr(rebasin, "_solve", lambda sim, warm, certify: calls.append((warm, certify)) or
                        solve(sim, warm, certify))
    res = weight_matching(spec, a, b, seed=seed)
    assert res.sweeps == len(ref_hist) > 1
    warm = [(w, c) for w, c in calls if w is not None]
    assert warm and not all(c for _, c in warm)  # solved without the search (with it: the MergeMany test)
    assert all(c == (w.repaired <= rebasin.REPAIRED_CERTIFY_LIMIT * w.col.size) for w, c in warm)
    for p in ref_perms:
        assert torch.equal(res.perms[p], ref_perms[p])
    np.testing.assert_allclose(res.objective, ref_hist, rtol=1e-12)


def test_objective_never_decreases_and_seed_is_deterministic(trained_pair):
    _, (a, b) = trained_pair
    spec = mlp_permutation_spec(a)
    res = weight_matching(spec, a, b, seed=5)
    steps = np.diff([res.objective_init, *res.objective])
    assert (steps >= 0).all() and steps[0] > 0
    again = weight_matching(spec, a, b, seed=5)
    assert all(torch.equal(res.perms[p], again.perms[p]) for p in res.perms)
    assert res.objective == again.objective


def test_max_iter_caps_the_sweeps(trained_pair):
    _, (a, b) = trained_pair
    spec = mlp_permutation_spec(a)
    res = weight_matching(spec, a, b, seed=0, max_iter=1)
    assert res.sweeps == 1 and not res.converged
    with pytest.raises(ValueError, match="max_iter"):
        weight_matching(spec, a, b, max_iter=0)


def test_interpolate_endpoints_are_exact_and_midpoint_is_the_mean():
    torch.manual_seed(0)
    a, b = MLP(10, (6,), 3).state_dict(), MLP(10, (6,), 3).state_dict()
    for k, v in interpolate(a, b, 0.0).items():
        assert torch.equal(v, a[k])
    for k, v in interpolate(a, b, 1.0).items():
        assert torch.equal(v, b[k])
    mid = interpolate(a, b, 0.5)
    torch.testing.assert_close(mid["hidden.0.weight"], (a["hidden.0.weight"] + b["hidden.0.weight"]) / 2)
    with pytest.raises(ValueError, match="lam must be in"):
        interpolate(a, b, 1.5)


def test_incompatible_models_name_the_key_and_shapes():
    a, b = MLP(10, (6,), 3).state_dict(), MLP(10, (8,), 3).state_dict()
    with pytest.raises(ValueError, match=r"models A and B differ in architecture: head.weight has shape \(3, 6\) vs \(3, 8\)"):
        check_compatible(a, b)
    with pytest.raises(ValueError, match="different parameters"):
        check_compatible(a, MLP(10, (6, 6), 3).state_dict())


@pytest.mark.parametrize("moved", [3, 40, 200])
def test_retargeted_similarities_equal_fresh_ones(trained_pair, moved):
    """MergeMany keeps one model's similarity terms and moves the target: after `retarget` to a
    target permuted on `moved` units per layer (few: corrected on those rows and columns; many:
    a dense correction), every similarity equals the one built from scratch for the new target."""
    from audit.rebasin import SimilarityTerms

    _, (a, b) = trained_pair
    spec = mlp_permutation_spec(a)
    g = torch.Generator().manual_seed(moved)
    perms = random_perms(spec, b, 2)
    terms = SimilarityTerms(spec, a, b)
    for p in spec.perm_names:  # fill the product cache at the current perms
        terms.similarity(p, perms)
    shuffle, units = {}, {}
    for p, n in spec.perm_sizes(a).items():
        idx = torch.randperm(n, generator=g)[:moved]
        s = torch.arange(n)
        s[idx] = idx[torch.randperm(moved, generator=g)]
        shuffle[p], units[p] = s, idx
    target = apply_permutation(spec, shuffle, a)
    kept = {p: terms.similarity(p, perms, copy=False) for p in spec.perm_names}
    terms.retarget(target, units)
    for p in spec.perm_names:  # corrected in place (sparsely or densely), not dropped
        assert terms.similarity(p, perms, copy=False) is kept[p]
    fresh = SimilarityTerms(spec, target, b)
    for p in spec.perm_names:
        got, want = terms.similarity(p, perms), fresh.similarity(p, perms)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
    with pytest.raises(ValueError, match="hidden.0.weight has shape"):
        terms.retarget({**target, "hidden.0.weight": target["hidden.0.weight"][:-1]}, units)


def test_kept_similarities_stay_equal_to_fresh_ones_over_many_corrections(trained_pair):
    """Each perm's similarity is one matrix kept and corrected in place as B's perms move and the
    target is replaced. Over 400 steps (past REFRESH corrections, so both long runs of corrections
    and refreshed states are compared) it equals the matrix built from scratch to 1e-12 relative."""
    from audit.rebasin import SimilarityTerms

    _, (a, b) = trained_pair
    spec = mlp_permutation_spec(a)
    g = torch.Generator().manual_seed(7)
    perms = identity_perms(spec, b)
    target = dict(a)
    terms = SimilarityTerms(spec, target, b)
    most, refreshed, last = 0, False, {}  # refreshed: some S_p was recomputed (its count fell)
    for step in range(400):
        q = spec.perm_names[int(torch.randint(len(spec.perm_names), (1,), generator=g))]
        k = int(torch.randint(2, 9, (1,), generator=g))
        idx = torch.randperm(perms[q].numel(), generator=g)[:k]
        perms[q] = perms[q].clone()
        perms[q][idx] = perms[q][idx[torch.randperm(k, generator=g)]]
        if step % 7 == 3:  # the target moves too, on a few units of one layer
            shuffle = identity_perms(spec, a)
            shuffle[q][idx] = idx[torch.randperm(k, generator=g)]
            target = apply_permutation(spec, shuffle, target)
            terms.retarget(target, {q: idx})
        for p in spec.perm_names:
            got = terms.similarity(p, perms)
            want = SimilarityTerms(spec, target, b).similarity(p, perms)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
            refreshed |= terms.corrections[p] < last.get(p, 0)
            last[p] = terms.corrections[p]
            most = max(most, terms.corrections[p])
    assert most >= SimilarityTerms.REFRESH - 8  # long runs of corrections were compared, not only fresh sums
    assert refreshed
    kept = terms.similarity(spec.perm_names[0], perms, copy=False)
    assert terms.similarity(spec.perm_names[0], perms, copy=False) is kept
    assert terms.similarity(spec.perm_names[0], perms).data_ptr() != kept.data_ptr()  # the default is a copy


@pytest.mark.parametrize("moved", [3, 40, 300, 512])
def test_retarget_with_moved_units_reads_only_those_slices(trained_pair, moved):
    """`retarget(target, moved)`: A is taken to differ only on the rows and columns at the named
    units of each perm. Those slices are corrected (sparsely; densely past DENSE_FRACTION at 300
    of 512 units; whole where all 512 moved) and nothing else is read: the other entries hold NaN
    here. Afterwards every similarity, kept or computed afresh later, equals the one built for
    the target."""
    from audit.rebasin import SimilarityTerms

    _, (a, b) = trained_pair
    spec = mlp_permutation_spec(a)
    g = torch.Generator().manual_seed(moved)
    perms = random_perms(spec, b, 3)
    terms = SimilarityTerms(spec, a, b)
    for p in spec.perm_names:
        terms.similarity(p, perms)
    units = {p: torch.randperm(n, generator=g)[:moved].sort().values for p, n in spec.perm_sizes(a).items()}
    units.pop(spec.perm_names[0])  # a perm none of whose units moved
    target, given = {}, {}
    for k, v in a.items():
        seen = torch.zeros(v.shape, dtype=torch.bool)
        for axis, q in enumerate(spec.axes_to_perm.get(k, ())):  # normalization buffers: never permuted
            if q in units:
                seen.index_fill_(axis, units[q], True)
        noise = torch.randn(v.shape, generator=g, dtype=v.dtype)
        target[k] = torch.where(seen, v + 0.01 * noise, v)
        given[k] = torch.where(seen, target[k], float("nan"))
    terms.retarget(given, {q: torch.cat([u, u[:2]]) for q, u in units.items()})  # a unit named twice counts once
    for p in spec.perm_names:
        want = SimilarityTerms(spec, target, b).similarity(p, perms)
        torch.testing.assert_close(terms.similarity(p, perms), want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
        torch.testing.assert_close(terms._fresh(p, perms), want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
