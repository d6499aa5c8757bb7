import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor

from audit import metrics as M
from audit.attacks import fgsm_direction, pgd, pgd_noise
from audit.metrics import (EvalConfig, barrier_curve, barriers, clean_metrics, evaluate,
                           global_lipschitz, global_lipschitz_bound, local_lipschitz, local_lipschitz_bound,
                           weight_norm)
from audit.models import MLP, stack_params, stacked_forward
from audit.zoo import evaluate_params, init_params


@pytest.fixture(scope="module")
def trained(trained_pair):
    data, (a, b) = trained_pair
    return data, a, b, MLP.from_state_dict(a).eval().requires_grad_(False)


def top_singular_value(w):
    return float(torch.linalg.svdvals(w.double())[0])


# ------------------------------------------------------------------ clean metrics


def test_stacked_forward_equals_each_model(trained_pair):
    data, models = trained_pair
    x = data.x_test[:50]
    logits = stacked_forward(stack_params(models), x)
    for k, params in enumerate(models):
        torch.testing.assert_close(logits[k], MLP.from_state_dict(params)(x), rtol=1e-5, atol=1e-5)


def test_clean_metrics_of_many_models_match_one_at_a_time(trained_pair):
    data, models = trained_pair
    acc, loss = clean_metrics(models, data.x_test, data.y_test, batch_size=300, models_per_pass=1)
    for k, params in enumerate(models):
        a, l = evaluate_params(params, data.x_test, data.y_test)
        assert acc[k] == pytest.approx(a, abs=1e-12) and loss[k] == pytest.approx(l, rel=1e-5)


# ------------------------------------------------------------------ barriers


def test_barrier_of_a_model_with_itself_is_zero(trained):
    data, a, _, _ = trained
    curve = barrier_curve(a, a, data.x_test[:500], data.y_test[:500])
    assert len(curve.lams) == 25 and curve.lams[0] == 0 and curve.lams[-1] == 1
    for value in curve.summary.values():
        assert abs(value) < 1e-6


def test_barrier_definitions_on_a_known_curve():
    lams = np.linspace(0, 1, 5)
    loss = np.array([1.0, 2.0, 4.0, 3.5, 3.0])  # endpoints 1 and 3: mean 2, line 1 + 2 lam
    acc = np.array([0.9, 0.8, 0.5, 0.6, 0.7])  # endpoints 0.9 and 0.7: mean 0.8, line 0.9 - 0.2 lam
    from audit.metrics import BarrierCurve
    s = BarrierCurve(lams, loss, acc).summary
    assert s["loss_barrier"] == pytest.approx(4.0 - 2.0)
    assert s["loss_barrier_gap"] == pytest.approx(4.0 - 2.0)  # at lam 0.5 the line is 2.0
    assert s["accuracy_barrier"] == pytest.approx(0.8 - 0.5)
    assert s["accuracy_barrier_gap"] == pytest.approx(0.8 - 0.5)
    loss2 = np.array([1.0, 3.4, 2.5, 2.9, 3.0])  # the gap peaks at lam 0.25 (line 1.5), the max too
    s2 = BarrierCurve(lams, loss2, acc).summary
    assert s2["loss_barrier"] == pytest.approx(3.4 - 2.0)
    assert s2["loss_barrier_gap"] == pytest.approx(3.4 - 1.5)


def test_weight_matching_removes_most_of_the_naive_barrier(trained):
    data, a, b, _ = trained
    curves = barriers(a, b, data.x_test, data.y_test, seed=0)
    naive, matched = curves["naive"].summary, curves["weight_matched"].summary
    assert naive["loss_barrier"] > 0.1
    assert matched["loss_barrier"] < 0.5 * naive["loss_barrier"]
    assert matched["accuracy_barrier"] < naive["accuracy_barrier"]
    # Both curves start at A and end at the same function (B, permuted or not).
    for key in ("loss", "accuracy"):
        c_n, c_m = getattr(curves["naive"], key), getattr(curves["weight_matched"], key)
        assert c_n[0] == pytest.approx(c_m[0]) and c_n[-1] == pytest.approx(c_m[-1], abs=1e-5)


# ------------------------------------------------------------------ attacks as metrics

# The plain per-model FGSM and PGD metrics: the reference the one attack path (K stacked models,
# `audit.metrics.stacked_attack_metrics`) is tested equal to.


def _correct(model, x, y, batch_size):
    return M.clean_predictions(model, x, y, batch_size)[0]


def fgsm_reference(model: MLP, x: Tensor, y: Tensor, eps_grid: Iterable[float], *, correct: Tensor | None = None,
                 batch_size: int = 4096) -> list[tuple[str, float, float]]:
    """(metric, eps, value) rows: FGSM robust accuracy and success rate per eps.

    FGSM's direction sign(grad_x CE) does not depend on eps, so it is computed once.
    """
    correct = _correct(model, x, y, batch_size) if correct is None else correct
    direction = torch.cat([fgsm_direction(model, xb, yb) for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
    rows = []
    for eps in eps_grid:
        adv = (x + eps * direction).clamp(0.0, 1.0)
        still = correct & _correct(model, adv, y, batch_size)
        rows += M._robust_rows("fgsm", eps, still, correct)
    return rows


def pgd_reference(model: MLP, x: Tensor, y: Tensor, eps_grid: Iterable[float], *, steps: int = 10, seed: int = 0,
                correct: Tensor | None = None, batch_size: int = 4096) -> list[tuple[str, float, float]]:
    """(metric, eps, value) rows: PGD robust accuracy and success rate; only correct samples are attacked."""
    correct = _correct(model, x, y, batch_size) if correct is None else correct
    idx = correct.nonzero().squeeze(1)
    noise = pgd_noise(x.shape, seed)  # one start per sample, whichever samples are attacked
    rows = []
    for eps in eps_grid:
        still = torch.zeros_like(correct)
        for chunk in idx.split(batch_size):
            adv = pgd(model, x[chunk], y[chunk], eps, steps=steps, early_stop=True, noise=noise[chunk.cpu()])
            still[chunk] = _correct(model, adv, y[chunk], batch_size)
        rows += M._robust_rows("pgd", eps, still, correct)
    return rows


def test_fgsm_at_zero_is_clean_accuracy_and_pgd_is_stronger(trained):
    data, _, _, model = trained
    x, y = data.x_test[:400], data.y_test[:400]
    clean = float((model(x).argmax(1) == y).double().mean())
    eps_grid = (0.0, 0.02, 0.05, 0.1)
    fg = {(m, e): v for m, e, v in fgsm_reference(model, x, y, eps_grid)}
    assert fg[("fgsm_robust_accuracy", 0.0)] == clean and fg[("fgsm_success_rate", 0.0)] == 0.0
    pg = {(m, e): v for m, e, v in pgd_reference(model, x, y, eps_grid[1:], steps=10, seed=0)}
    for eps in eps_grid[1:]:
        assert pg[("pgd_robust_accuracy", eps)] <= fg[("fgsm_robust_accuracy", eps)]
        # robust accuracy = clean accuracy * (1 - success rate on the correct samples)
        assert fg[("fgsm_robust_accuracy", eps)] == pytest.approx(clean * (1 - fg[("fgsm_success_rate", eps)]))
    assert fg[("fgsm_robust_accuracy", 0.1)] < fg[("fgsm_robust_accuracy", 0.02)] < clean


def test_pgd_early_stop_returns_an_adversarial_input_whenever_one_was_reached(trained):
    data, _, _, model = trained
    x, y = data.x_test[:300], data.y_test[:300]
    plain = pgd(model, x, y, 0.05, steps=10, seed=1)
    stopped = pgd(model, x, y, 0.05, steps=10, seed=1, early_stop=True)
    assert (stopped - x).abs().max() <= 0.05 + 1e-6 and stopped.min() >= 0 and stopped.max() <= 1
    fooled_plain = model(plain).argmax(1) != y
    fooled_stopped = model(stopped).argmax(1) != y
    # Samples fooled by the final iterate were fooled at some iterate: early stop keeps them fooled.
    assert (fooled_stopped | ~fooled_plain).all()


# ------------------------------------------------------------------ weight norm, Lipschitz


def test_weight_norm_is_the_papers_formula():
    params = init_params(6, (4, 3), 2, seed=0)
    want = sum(float(params[f"{n}.weight"].norm()) + float(params[f"{n}.bias"].norm())
               for n in ("hidden.0", "hidden.1", "head"))
    assert weight_norm(params) == pytest.approx(want, rel=1e-6)
    doubled = {k: 2 * v if not k.startswith("norm.") else v for k, v in params.items()}
    assert weight_norm(doubled) == pytest.approx(2 * want, rel=1e-6)


def test_single_linear_layer_bounds_equal_its_spectral_norm():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(7, 11, generator=g), torch.randn(7, generator=g)
    sigma = top_singular_value(w)
    assert global_lipschitz_bound([(w, b)]) == pytest.approx(sigma, rel=1e-10)
    # No ReLU: the local constant is the spectral norm at every point and radius.
    local = local_lipschitz_bound([(w, b)], torch.rand(5, 11, generator=g), radius=0.3)
    np.testing.assert_allclose(local, sigma, rtol=1e-10)


def test_global_bound_of_an_mlp_includes_the_normalization():
    params = init_params(12, (8, 5), 3, seed=1, mean=[0.5], std=[0.25])
    want = 4.0 * math.prod(top_singular_value(params[f"{n}.weight"]) for n in ("hidden.0", "hidden.1", "head"))
    assert global_lipschitz(params) == pytest.approx(want, rel=1e-9)


def test_empirical_ratios_never_exceed_the_local_bound_nor_it_the_global(trained):
    data, a, _, model = trained
    radius, n_points, n_pairs = 0.5, 12, 64
    x = data.x_test[:n_points]
    local = local_lipschitz(a, x, radius)
    glob = global_lipschitz(a)
    assert (local <= glob * (1 + 1e-9)).all()
    # On a small ball the local bound is informative (fewer units can switch on).
    assert local_lipschitz(a, x, 0.05).max() < 0.9 * glob
    g = torch.Generator().manual_seed(0)
    m = MLP.from_state_dict(a).double()
    for i in range(n_points):
        x0 = x[i:i + 1].flatten(1).double()
        # The Jacobian's spectral norm at x_i is a lower bound of the local constant.
        jac = torch.autograd.functional.jacobian(lambda v: m(v), x0)[0, :, 0, :]
        assert top_singular_value(jac) <= local[i] * (1 + 1e-9)
        # Random pairs inside the ball, plus pairs along the top right-singular vector.
        d = torch.randn(2, n_pairs, x0.shape[1], generator=g, dtype=torch.float64)
        d = d / d.norm(dim=2, keepdim=True) * radius * torch.rand(2, n_pairs, 1, generator=g, dtype=torch.float64)
        v = torch.linalg.svd(jac)[2][0]
        d[0, :8], d[1, :8] = 0.5 * radius * v, -0.5 * radius * v * torch.linspace(0.1, 1, 8)[:, None].double()
        p, q = x0 + d[0], x0 + d[1]
        ratio = (m(p) - m(q)).norm(dim=1) / (p - q).norm(dim=1)
        assert ratio.max() <= local[i] * (1 + 1e-9)


def test_local_bound_grows_with_the_radius_up_to_the_global_one(trained):
    _, a, _, _ = trained
    x = torch.rand(4, a["hidden.0.weight"].shape[1], generator=torch.Generator().manual_seed(0))
    bounds = [local_lipschitz(a, x, r) for r in (0.0, 0.1, 1.0, 1e4)]
    for lo, hi in zip(bounds, bounds[1:]):
        assert (lo <= hi * (1 + 1e-12)).all()
    np.testing.assert_allclose(bounds[-1], global_lipschitz_bound(
        [(a[f"{n}.weight"] / (a["norm.std"] if n == "hidden.0" else 1), a[f"{n}.bias"])
         for n in ("hidden.0", "hidden.1", "head")]), rtol=1e-6)  # float32 vs float64 folding of 1/std


# ------------------------------------------------------------------ the evaluation table


def test_evaluate_returns_a_tidy_table(trained_pair):
    data, models = trained_pair
    cfg = EvalConfig(fgsm_eps=(0.0, 0.05), pgd_eps=(0.05,), deepfool_eps=(0.5, 1.0, 2.0), lipschitz_points=5)
    x, y = data.x_test[:200], data.y_test[:200]
    table = evaluate({"a": models[0], "b": models[1]}, x, y, cfg)
    assert list(table.columns) == ["model", "metric", "eps", "value"]
    assert set(table.model) == {"a", "b"}
    assert not table.duplicated(["model", "metric", "eps"]).any()
    one = table[table.model == "a"].set_index(["metric", "eps"]).value
    per_model = {m: len(t) for m, t in table.groupby("model")}
    # clean 2, FGSM 4, PGD 2, DeepFool 3 + 2, weight norm + global + paper 3, local 2, A&M 2
    assert per_model["a"] == per_model["b"] == 2 + 4 + 2 + 3 + 2 + 3 + 2 + 2
    assert one[("lipschitz_am_max", cfg.lipschitz_radius)] <= one[("lipschitz_local_max", cfg.lipschitz_radius)]
    clean = table[(table.model == "a") & (table.metric == "clean_accuracy")].value.item()
    assert one[("fgsm_robust_accuracy", 0.0)] == clean
    assert clean == pytest.approx(evaluate_params(models[0], x, y)[0])
    assert one[("pgd_robust_accuracy", 0.05)] <= one[("fgsm_robust_accuracy", 0.05)]
    df = [one[("deepfool_robust_accuracy", e)] for e in (0.5, 1.0, 2.0)]
    assert clean >= df[0] >= df[1] >= df[2]
    assert table.value.notna().all()
    # Same inputs, same numbers (PGD's random start is seeded).
    again = evaluate({"a": models[0], "b": models[1]}, x, y, cfg)
    assert table.equals(again)


def test_eval_config_rejects_impossible_values():
    with pytest.raises(ValueError, match="fgsm_eps.*1.5"):
        EvalConfig(fgsm_eps=(0.1, 1.5))
    with pytest.raises(ValueError, match="pgd_steps"):
        EvalConfig(pgd_steps=0)
    with pytest.raises(ValueError, match="deepfool_eps"):
        EvalConfig(deepfool_eps=(-1.0,))


def test_stacked_attacks_equal_one_model_at_a_time(real_data):
    """FGSM and PGD on K stacked models (the one attack path) give the plain per-model numbers,
    also when the samples are split into several passes."""
    from audit.zoo import TrainConfig, train_batched

    models = {f"m{m.seed}": m.params for m in train_batched(real_data, (64, 32), TrainConfig(epochs=2), [0, 1, 2])}
    cfg = EvalConfig(fgsm_eps=(0.0, 0.02, 0.1), pgd_eps=(0.02, 0.05), pgd_steps=5, deepfool_eps=(0.5,),
                     lipschitz_points=1, batch_size=100)
    x, y = real_data.x_test[:250], real_data.y_test[:250]
    stacked = evaluate(models, x, y, cfg)
    one = []
    for mid, params in models.items():
        model = MLP.from_state_dict(params).eval().requires_grad_(False)
        rows = fgsm_reference(model, x, y, cfg.fgsm_eps, batch_size=cfg.batch_size)
        rows += pgd_reference(model, x, y, cfg.pgd_eps, steps=cfg.pgd_steps, seed=cfg.seed, batch_size=cfg.batch_size)
        one += [(mid, *r) for r in rows]
    one = pd.DataFrame(one, columns=["model", "metric", "eps", "value"])
    attacks = stacked[stacked.metric.str.startswith(("fgsm_", "pgd_"))].reset_index(drop=True)
    pd.testing.assert_frame_equal(one, attacks)
    attacked = one[one.metric.str.startswith(("fgsm_robust", "pgd_robust")) & (one.eps > 0)]
    assert (attacked.value < stacked[stacked.metric == "clean_accuracy"].value.max()).all()  # the attacks did something


# ---------------------------------------------------------------- the paper's Lipschitz quantity

def reference_mlp(sizes):
    """The MLPs the reference values below were computed on: torch.manual_seed(0), then
    nn.Linear layers created in order (default init), ReLU between them."""
    torch.manual_seed(0)
    lins = [torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    return [(lin.weight.detach(), lin.bias.detach()) for lin in lins]


# Values produced by HeinrichAD/local_lipschitz@778d7dec (the code Franke et al. used), run outside
# this project: its global bound with 100 power iterations started from torch.manual_seed(0)
# ("ref100"), and its local bound (full layer list, ReLUs included) with the power iterations
# converged, i.e. exact spectral norms ("exact"; the 100-step values agree to ~1e-7 on the small
# net and to ~3% on the larger one, whose first layer converges slowly).
REFERENCE = {
    (8, 16, 16, 4): {"ref100_global": 1.044890954700007, "exact_global": 1.045060345314196,
                     "local": {0.1: [0.3795803302210679, 0.4510367929263257, 0.6327410504559116],
                               0.5: [0.6105508059341413, 0.6762733848448382, 0.830734323948664]}},
    (64, 128, 128, 64, 10): {"ref100_global": 1.0892916977937699, "exact_global": 1.0893148304138016,
                             "local": {0.1: [0.567379871645171, 0.5438342381627921, 0.43055719396890724]}},
}


@pytest.mark.parametrize("sizes", list(REFERENCE))
def test_am_local_bound_and_paper_quantity_match_the_reference_code(sizes):
    from audit.metrics import am_local_bound, global_lipschitz_bound, power_iteration_norm

    ref = REFERENCE[sizes]
    layers = reference_mlp(sizes)
    if sizes[0] == 8:  # the generator reproduces the reference's weights
        assert layers[0][0][0, :3].tolist() == pytest.approx([-0.0026469905860722065, 0.18966144323349,
                                                              -0.2909903824329376], abs=1e-8)
    points = torch.as_tensor(np.random.default_rng(1).uniform(0, 1, (3, sizes[0])), dtype=torch.float32)
    for radius, want in ref["local"].items():
        np.testing.assert_allclose(am_local_bound(layers, points, radius), want, rtol=1e-6)
    assert global_lipschitz_bound(layers) == pytest.approx(ref["exact_global"], rel=1e-9)
    g = torch.Generator().manual_seed(0)
    paper = math.prod(power_iteration_norm(w, 100, g) for w, _ in layers)
    assert paper == pytest.approx(ref["ref100_global"], rel=1e-6)


def test_am_bound_holds_around_the_centre_and_is_below_the_pairwise_bound(trained):
    from audit.metrics import local_lipschitz, local_lipschitz_am

    data, params, _, _ = trained
    model = MLP.from_state_dict(params).double()
    x0 = torch.as_tensor(data.x_test[:6]).double().flatten(1)
    for radius in (0.1, 1.0):
        am = local_lipschitz_am(params, x0.float(), radius)
        assert (am <= local_lipschitz(params, x0.float(), radius) * (1 + 1e-9)).all()
        g = torch.Generator().manual_seed(0)
        for i in range(len(x0)):
            d = torch.randn(400, x0.shape[1], generator=g, dtype=torch.float64)
            d = d / d.norm(dim=1, keepdim=True) * radius * torch.rand(400, 1, generator=g, dtype=torch.float64)
            with torch.no_grad():  # values only: the model's parameters need no graph here
                ratio = (model(x0[i] + d) - model(x0[i:i + 1])).norm(dim=1) / d.norm(dim=1)
            assert float(ratio.max()) <= am[i] * (1 + 1e-9)


def test_paper_quantity_ignores_normalization_and_underestimates_the_exact_product():
    from audit.metrics import lipschitz_paper

    torch.manual_seed(0)
    a = MLP(20, (16, 16), 5, mean=0.5, std=0.25).state_dict()
    b = {**a, "norm.std": a["norm.std"] * 4}  # another input normalization, same layers
    assert lipschitz_paper(a) == lipschitz_paper(b)  # w.r.t. normalized inputs
    exact = math.prod(torch.linalg.matrix_norm(a[k].double(), 2).item() for k in a if k.endswith("weight"))
    assert lipschitz_paper(a) <= exact * (1 + 1e-6)
