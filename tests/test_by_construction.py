"""Which claims hold by construction (for any models), and which can fail.

The weight-norm property is an identity of norms, labelled as such in the registry: these tests
establish that it holds by construction, they are not evidence about merging. The Lipschitz
bounds get a counterexample: their fall under merging is an empirical question.
"""

import numpy as np
import pytest
import torch

from audit.merge import hierarchical_merge, merge_many, naive_merge
from audit.metrics import global_lipschitz, local_lipschitz, weight_norm
from audit.models import MLP
from audit.rebasin import apply_permutation, mlp_permutation_spec


def random_models(n, seed, widths=(12, 10), d_in=8):
    torch.manual_seed(seed)
    return [MLP(d_in, widths, 4, mean=0.3, std=0.4).state_dict() for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_weight_norm_of_any_merge_is_at_most_the_mean_norm_by_construction(seed):
    models = random_models(4, seed)
    spec = mlp_permutation_spec(models[0])
    mean_norm = np.mean([weight_norm(m) for m in models])
    g = torch.Generator().manual_seed(seed)
    perms = [{p: torch.randperm(n, generator=g) for p, n in spec.perm_sizes(m).items()} for m in models]
    permuted = [apply_permutation(spec, p, m) for p, m in zip(perms, models)]
    for merged in (naive_merge(models).params, naive_merge(permuted).params,
                   hierarchical_merge(models, spec, seed=seed).params, merge_many(models, spec, seed=seed).params):
        assert weight_norm(merged) <= mean_norm + 1e-9


def scaled_pair(c=3.0):
    """One ReLU function written twice: layer 1 x c and layer 2 / c, and the mirror (1/c, c)."""
    (m,) = random_models(1, 0)
    a, b = dict(m), dict(m)
    for params, s in ((a, c), (b, 1 / c)):
        params["hidden.0.weight"] = m["hidden.0.weight"] * s
        params["hidden.0.bias"] = m["hidden.0.bias"] * s
        params["hidden.1.weight"] = m["hidden.1.weight"] / s
    return m, a, b


def test_global_lipschitz_bound_can_rise_under_merging():
    m, a, b = scaled_pair()
    x = torch.rand(16, 8)
    torch.testing.assert_close(MLP.from_state_dict(a)(x), MLP.from_state_dict(m)(x))  # same function
    merged = naive_merge([a, b]).params
    ends = np.mean([global_lipschitz(a), global_lipschitz(b)])
    ratio = global_lipschitz(merged) / ends
    assert ratio == pytest.approx(((3 + 1 / 3) / 2) ** 2, rel=1e-6)  # > 1: no guarantee
    # the merged weight norm still falls, as it must
    assert weight_norm(merged) <= np.mean([weight_norm(a), weight_norm(b)])


def test_local_lipschitz_bound_can_rise_under_merging():
    m, a, b = scaled_pair()
    x = torch.rand(6, 8)
    merged = naive_merge([a, b]).params
    ends = (local_lipschitz(a, x, 0.1) + local_lipschitz(b, x, 0.1)) / 2
    assert (local_lipschitz(merged, x, 0.1) > ends * 1.5).all()
