import pytest
import torch

from audit.merge import hierarchical_merge, merge_many, naive_merge, pairwise_merge
from audit.models import MLP
from audit.rebasin import apply_permutation, mlp_permutation_spec
from audit.zoo import evaluate_params


def small_model(seed=0):
    torch.manual_seed(seed)
    return MLP(24, (16, 12, 8), 5, mean=0.5, std=0.25).state_dict()


def permuted_copies(params, k, seed=0):
    """k functionally identical models: the same network under k random hidden-unit permutations."""
    spec = mlp_permutation_spec(params)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        perms = {p: torch.randperm(n, generator=g) for p, n in spec.perm_sizes(params).items()}
        out.append(apply_permutation(spec, perms, params))
    return spec, out


def logits(params, x):
    return MLP.from_state_dict(params)(x)


def assert_same_params(a, b):
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_merging_identical_models_returns_that_model(k):
    p = small_model()
    spec = mlp_permutation_spec(p)
    models = [{n: t.clone() for n, t in p.items()} for _ in range(k)]
    assert_same_params(naive_merge(models).params, p)
    assert_same_params(merge_many(models, spec).params, p)
    assert_same_params(hierarchical_merge(models, spec).params, p)
    if k == 2:
        for side in ("first", "second"):
            assert_same_params(pairwise_merge(*models, spec, permute=side).params, p)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_rebasin_merges_of_permuted_copies_recover_the_function(k):
    """Permuted copies sit in the same basin up to permutation: every Re-Basin method must align
    them exactly, so the merge computes the original function; naive averaging does not."""
    p = small_model(1)
    spec, copies = permuted_copies(p, k, seed=k)
    x = torch.rand(64, 24)
    want = logits(p, x)
    for res in (hierarchical_merge(copies, spec, seed=1), merge_many(copies, spec, seed=1),
                hierarchical_merge(copies, spec, seed=2, pairing="random", permute="first")):
        torch.testing.assert_close(logits(res.params, x), want, rtol=1e-5, atol=1e-5)
    assert (logits(naive_merge(copies).params, x) - want).abs().max() > 1e-2


def test_pairwise_sides_and_lam():
    a, b = small_model(2), small_model(3)
    spec = mlp_permutation_spec(a)
    second = pairwise_merge(a, b, spec, names=("a", "b"))
    first = pairwise_merge(a, b, spec, permute="first", names=("a", "b"))
    assert (second.provenance["permuted"], second.provenance["onto"]) == ("b", "a")
    assert (first.provenance["permuted"], first.provenance["onto"]) == ("a", "b")
    # lam = 0 keeps A untouched when B is the one permuted.
    assert_same_params(pairwise_merge(a, b, spec, lam=0.0).params, a)
    with pytest.raises(ValueError, match="permute must be one of"):
        pairwise_merge(a, b, spec, permute="both")


def test_hierarchical_tree_and_provenance():
    models = [small_model(s) for s in range(8)]
    spec = mlp_permutation_spec(models[0])
    res = hierarchical_merge(models, spec, seed=3, names=[f"z{i}" for i in range(8)])
    prov = res.provenance
    assert [len(s) for s in prov["stages"]] == [4, 2, 1]
    assert prov["tree"] == "(((z0+z1)+(z2+z3))+((z4+z5)+(z6+z7)))"
    first = prov["stages"][0][0]
    assert (first["permuted"], first["onto"]) == ("z1", "z0")
    # Stage outputs feed the next stage, disjointly.
    assert {m["output"] for m in prov["stages"][0]} == {x for m in prov["stages"][1] for x in (m["left"], m["right"])}

    rnd = hierarchical_merge(models, spec, seed=3, pairing="random").provenance
    base = [x for m in rnd["stages"][0] for x in (m["left"], m["right"])]
    assert sorted(base) == [f"m{i}" for i in range(8)]  # every base model used exactly once
    assert rnd["tree"] != "(((m0+m1)+(m2+m3))+((m4+m5)+(m6+m7)))"  # seed 3 draws another tree
    assert hierarchical_merge(models, spec, seed=3, pairing="random").provenance == rnd


def test_hierarchical_needs_a_power_of_two():
    models = [small_model(s) for s in range(6)]
    with pytest.raises(ValueError, match="power-of-two number of models, got 6"):
        hierarchical_merge(models, mlp_permutation_spec(models[0]))


def test_merge_many_provenance_and_determinism():
    models = [small_model(s) for s in range(4)]
    spec = mlp_permutation_spec(models[0])
    res = merge_many(models, spec, seed=4)
    prov = res.provenance
    assert prov["converged"] and prov["iterations"] == len(prov["history"]) >= 2
    assert prov["history"][-1]["changed"] == []  # stopped because nothing moved
    assert sorted(prov["history"][0]["order"]) == ["m0", "m1", "m2", "m3"]
    again = merge_many(models, spec, seed=4)
    assert all(torch.equal(res.params[k], again.params[k]) for k in res.params)


def test_merging_models_of_different_architectures_names_both():
    a = MLP(24, (16,), 5).state_dict()
    b = MLP(24, (12,), 5).state_dict()
    with pytest.raises(ValueError, match="models m0 and m1 differ in architecture"):
        naive_merge([a, b])


@pytest.mark.slow
def test_weight_matched_midpoint_is_far_better_than_naive_on_real_data(trained_pair):
    data, (a, b) = trained_pair
    spec = mlp_permutation_spec(a)
    end_losses = [evaluate_params(p, data.x_test, data.y_test)[1] for p in (a, b)]
    naive_loss = evaluate_params(naive_merge([a, b]).params, data.x_test, data.y_test)[1]
    wm_loss = evaluate_params(pairwise_merge(a, b, spec).params, data.x_test, data.y_test)[1]
    naive_barrier = naive_loss - sum(end_losses) / 2
    wm_barrier = wm_loss - sum(end_losses) / 2
    assert wm_loss < 0.5 * naive_loss
    assert wm_barrier < 0.25 * naive_barrier


def test_depth_one_side_is_an_identity_on_trained_models(trained_pair):
    """Matching B onto A or A onto B gives one network up to a permutation: the logits agree,
    which is why a depth-1 side ablation is refused (it cannot fail)."""
    data, (a, b) = trained_pair
    spec = mlp_permutation_spec(a)
    x = torch.as_tensor(data.x_test[:500])
    logits = [MLP.from_state_dict(pairwise_merge(a, b, spec, seed=3, permute=side).params)(x)
              for side in ("second", "first")]
    assert (logits[0] - logits[1]).abs().max() < 1e-5


def test_side_matters_from_depth_two():
    """From 4 models on, the side changes where the second stage starts its search: not an
    identity, so the side ablation is informative there."""
    torch.manual_seed(0)
    models = [MLP(20, (32, 32), 5).state_dict() for _ in range(4)]
    spec = mlp_permutation_spec(models[0])
    x = torch.rand(64, 20)
    logits = [MLP.from_state_dict(hierarchical_merge(models, spec, seed=1, permute=side).params)(x)
              for side in ("second", "first")]
    assert (logits[0] - logits[1]).abs().max() > 1e-3


def merge_many_plain(models, spec, seed, max_iter=100):
    """MergeMany (Ainsworth et al. Alg. 3) with the plain Algorithm 1 for every matching and
    fresh means: the reference the fast `merge_many` (warm solver states, kept similarity terms)
    must equal."""
    import numpy as np

    from audit.merge import _child_seed, _mean
    from audit.rebasin import weight_matching_plain

    rng = np.random.default_rng(seed)
    current = [dict(m) for m in models]
    for _ in range(max_iter):
        changed = False
        for i in rng.permutation(len(models)).tolist():
            others = _mean([current[j] for j in range(len(models)) if j != i])
            perms, _ = weight_matching_plain(spec, others, current[i], seed=_child_seed(rng))
            if any((t != torch.arange(t.numel())).any() for t in perms.values()):
                current[i] = apply_permutation(spec, perms, current[i])
                changed = True
        if not changed:
            break
    return _mean(current)


@pytest.mark.parametrize("threads", [1, 2])
def test_fast_merge_many_equals_the_plain_algorithm_on_small_random_models(monkeypatch, threads):
    """The fast MergeMany, whose targets are re-averaged only on the slices other models' moves
    changed (or whole where more than a quarter moved), equals the plain algorithm bitwise: 3 to 6
    random MLPs, several seeds, with both kinds of re-averaging taking place, independent perms
    solved in threads (P_0 and P_2 share no parameter) or, at one torch thread, one after another."""
    import audit.rebasin as rebasin
    from audit.rebasin import SimilarityTerms

    pool, pooled = rebasin._pool, []
    monkeypatch.setattr(rebasin, "_pool", lambda: pooled.append(1) or pool())

    partial = []
    inner = SimilarityTerms.retarget

    def spy(self, params_a, moved=None):  # did a retarget name fewer units than the whole model?
        partial.append(moved is not None and sum(u.numel() for u in moved.values()) < sum(self.sizes.values()))
        return inner(self, params_a, moved)

    monkeypatch.setattr(SimilarityTerms, "retarget", spy)
    import audit.merge as merge_module

    reaverage, checked, ways = merge_module._reaverage, [], set()

    average, whole = merge_module._average, set()

    def average_spy(tensors):  # averaged whole: the models' own tensors, not gathered slices
        ways.add(tensors[0].data_ptr() in whole)
        return average(tensors)

    def fresh_check(target, rest, spec, units):  # a re-averaged target is bitwise a fresh mean
        whole.clear()
        whole.update(t.data_ptr() for m in rest for t in m.values())
        monkeypatch.setattr(merge_module, "_average", average_spy)
        reaverage(target, rest, spec, units)
        monkeypatch.setattr(merge_module, "_average", average)
        fresh = merge_module._mean(rest)
        checked.append(all(torch.equal(target[k], fresh[k]) for k in target))

    monkeypatch.setattr(merge_module, "_reaverage", fresh_check)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, seed in [(3, 0), (4, 1), (5, 2), (6, 3)]:
            torch.manual_seed(seed)
            models = [MLP(12, (10, 8, 6), 3).state_dict() for _ in range(n)]
            spec = mlp_permutation_spec(models[0])
            fast = merge_many(models, spec, seed=seed)
            plain = merge_many_plain(models, spec, seed)
            assert fast.provenance["converged"]
            for k in plain:
                assert torch.equal(fast.params[k], plain[k]), (n, seed, k)
    finally:
        torch.set_num_threads(before)
    assert any(partial)  # some retargets left units out
    assert checked and all(checked)
    assert ways == {True, False}  # parameters re-averaged whole and by their moved slices
    assert bool(pooled) == (threads > 1)  # solved in threads only where torch has more than one


@pytest.mark.slow
def test_fast_merge_many_equals_the_plain_algorithm_on_trained_models(real_data, monkeypatch):
    import audit.rebasin as rebasin
    from audit.zoo import TrainConfig, train_batched

    models = [m.params for m in train_batched(real_data, (96, 96), TrainConfig(epochs=2, lr=1e-3, batch_size=128),
                                              [10, 11, 12, 13])]
    spec = mlp_permutation_spec(models[0])
    calls, solve = [], rebasin._solve
    monkeypatch.setattr(rebasin, "_solve", lambda sim, warm, certify: calls.append((warm, certify)) or
                        solve(sim, warm, certify))
    for seed in (0, 1):
        fast = merge_many(models, spec, seed=seed)
        warm = [(w, c) for w, c in calls if w is not None]
        # warm solves with the certificate search and without it, each where the rule says
        assert {c for _, c in warm} == {True, False}
        assert all(c == (w.repaired <= rebasin.REPAIRED_CERTIFY_LIMIT * w.col.size) for w, c in warm)
        calls.clear()
        assert fast.provenance["converged"] and fast.provenance["iterations"] > 2  # several passes ran
        # every shortcut was taken at least once in the run compared: certificates, exchanges, skips
        h = fast.provenance["history"]
        assert all(sum(x[key] for x in h) > 0 for key in ("inner_certified", "inner_exchanged", "skipped")), h
        plain = merge_many_plain(models, spec, seed)
        for k in plain:
            assert torch.equal(fast.params[k], plain[k]), k


def test_tree_nodes_are_the_groups_merges_and_a_subtree_gives_the_same_nodes():
    from audit.merge import hierarchical_tree

    torch.manual_seed(0)
    models = [MLP(12, (10, 8), 3).state_dict() for _ in range(8)]
    spec = mlp_permutation_spec(models[0])
    tree = hierarchical_tree(models, spec, seed=4, names=[f"s{i}" for i in range(8)])
    assert sorted(tree) == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (3, 0)]
    assert tree[(2, 1)].provenance["models"] == ["s4", "s5", "s6", "s7"]
    assert [len(st) for st in tree[(3, 0)].provenance["stages"]] == [4, 2, 1]
    # the depth-2 node of group 1 from its own subtree (leaves 4..7) is bit-identical
    sub = hierarchical_tree(models[4:], spec, seed=4, names=[f"s{i}" for i in range(4, 8)], first_leaf=4)
    for k in tree[(2, 1)].params:
        assert torch.equal(sub[(2, 1)].params[k], tree[(2, 1)].params[k])
    assert sub[(2, 1)].provenance == tree[(2, 1)].provenance
    # each node is the pairwise merge of its two children, base weights 2^-d (equal models: the mean)
    same = [models[0]] * 4
    node = hierarchical_tree(same, spec, seed=0)[(2, 0)]
    for k, v in node.params.items():
        torch.testing.assert_close(v, models[0][k])
    with pytest.raises(ValueError, match="does not fit"):
        hierarchical_tree(models[2:6], spec, first_leaf=2)


def test_every_registered_method_has_a_runner_and_nothing_else_does():
    from audit.merge import RUNNERS
    from audit.methods import METHODS, get

    assert set(RUNNERS) == set(METHODS)
    with pytest.raises(ValueError, match="unknown merge method 'ties'; registered: hierarchical, mergemany, naive"):
        get("ties")
