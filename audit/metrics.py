"""Evaluation of merged and unmerged MLPs: one set of metrics, with the semantics written down.

Conventions (every number the audit reports follows them):

* Inputs are [0, 1] pixels; models normalize inside, so attack budgets ``eps`` are in pixel units:
  L-inf for FGSM and PGD, L2 over all pixels for DeepFool and the Lipschitz ball radius.
* **Robust accuracy** at eps = share of *all* evaluated samples that are classified correctly on
  the clean input *and* stay correct under the attack. A sample misclassified when clean counts as
  non-robust at every eps (the foolbox convention), so robust accuracy at eps 0 is clean accuracy.
* **Attack success rate** at eps = share of the *correctly classified* samples whose prediction
  the attack changes; it separates robustness from clean accuracy.
* **DeepFool** gives a minimal L2 perturbation per correctly classified sample; robust accuracy at
  eps is the share of all samples that are correct and whose minimal perturbation norm exceeds eps
  (the foolbox convention). A sample that DeepFool cannot flip within ``max_iter`` has norm +inf
  (robust at every eps); the median norm is over correctly classified samples.
* **PGD** stops per sample at the first iterate that is misclassified (that iterate is the
  adversarial example); it is the check against gradient masking: its robust accuracy must not
  exceed FGSM's at the same eps.
* **Barrier** along ``(1 - lam) * A + lam * B`` on a grid of lam (25 points by default), as the
  original Git Re-Basin code computes it: ``max_lam L(lam) - (L(0) + L(1)) / 2``; also reported is
  the largest gap to the straight line between the endpoints, ``max_lam L(lam) - ((1-lam) L(0) +
  lam L(1))``. For accuracy both are mirrored (the drop below the endpoints' mean / their line).
* **Weight norm** (Franke et al.): ``sum_l ||W_l||_F + ||b_l||_2`` over the linear layers (the
  fixed normalization layer has no trained parameters and is not included).
* **Lipschitz bounds** of the logits w.r.t. the input in L2:
  ``lipschitz_global``, the product of exact spectral norms of every linear map (the
  normalization's ``diag(1/std)`` included); ``lipschitz_paper``, what Franke et al.'s code
  reports for an MLP with functional ReLU (product of 100-step power-iteration norms, normalized
  inputs; `lipschitz_paper`); ``lipschitz_local_*``, a bound for every pair of points in the L2
  ball of radius r around a test point (units off on the whole ball dropped; `local_lipschitz`);
  ``lipschitz_am_*``, Avant & Morgansen's (2023) full bound relative to the ball's centre
  (partially active units scaled; `am_local_bound`), never above the previous one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.linalg
import torch
from torch import Tensor, nn

from .clean import clean_metrics, clean_predictions  # noqa: F401 (re-exported)
from .config import EvalConfig  # noqa: F401 (re-exported)
from .attacks import deepfool, fgsm_direction, pgd, pgd_noise
from .models import MLP, layer_names, stack_params, stacked_forward
from .rebasin import PermutationSpec, apply_permutation, interpolate, mlp_permutation_spec, weight_matching

Weights = Mapping[str, Tensor]

METRIC_COLUMNS = ["model", "metric", "eps", "value"]


# ---------------------------------------------------------------- clean accuracy and loss


# ---------------------------------------------------------------- barriers


@dataclass
class BarrierCurve:
    lams: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    summary: dict[str, float] = field(init=False)

    def __post_init__(self):
        line = 1 - self.lams
        loss_line = line * self.loss[0] + self.lams * self.loss[-1]
        acc_line = line * self.accuracy[0] + self.lams * self.accuracy[-1]
        self.summary = {
            "loss_barrier": float(self.loss.max() - (self.loss[0] + self.loss[-1]) / 2),
            "loss_barrier_gap": float((self.loss - loss_line).max()),
            "accuracy_barrier": float((self.accuracy[0] + self.accuracy[-1]) / 2 - self.accuracy.min()),
            "accuracy_barrier_gap": float((acc_line - self.accuracy).max()),
        }

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"lam": self.lams, "loss": self.loss, "accuracy": self.accuracy})


def barrier_curve(a: Weights, b: Weights, x: Tensor, y: Tensor, *, n_points: int = 25,
                  batch_size: int = 4096) -> BarrierCurve:
    """Loss and accuracy of ``(1 - lam) * a + lam * b`` at n_points evenly spaced lam in [0, 1]."""
    if n_points < 2:
        raise ValueError(f"a barrier curve needs at least 2 points, got {n_points}")
    lams = np.linspace(0.0, 1.0, n_points)
    acc, loss = clean_metrics([interpolate(a, b, float(t)) for t in lams], x, y, batch_size=batch_size)
    return BarrierCurve(lams, loss, acc)


def barriers(a: Weights, b: Weights, x: Tensor, y: Tensor, *, spec: PermutationSpec | None = None, seed: int = 0,
             n_points: int = 25, max_iter: int = 100) -> dict[str, BarrierCurve]:
    """{"naive": curve from a to b, "weight_matched": curve from a to b permuted onto a}."""
    spec = spec or mlp_permutation_spec(a)
    match = weight_matching(spec, a, b, seed=seed, max_iter=max_iter)
    b_matched = {k: v.to(x.device) for k, v in apply_permutation(spec, match.perms, b).items()}
    a, b = ({k: v.to(x.device) for k, v in p.items()} for p in (a, b))
    return {"naive": barrier_curve(a, b, x, y, n_points=n_points),
            "weight_matched": barrier_curve(a, b_matched, x, y, n_points=n_points)}


# ---------------------------------------------------------------- weight norm and Lipschitz bounds


def weight_norm(params: Weights) -> float:
    """The paper's ``sum_l ||W_l||_F + ||b_l||_2`` over the linear layers.

    Falls under any merge by construction: permuting hidden units preserves every Frobenius and
    L2 norm, and each term is a norm, so for weights ``w_k >= 0`` summing to 1,
    ``||sum_k w_k P_k(M_k)|| <= sum_k w_k ||M_k||`` term by term (triangle inequality and
    homogeneity). Every node of a merge tree is an average of the nodes below it, so the mean
    norm cannot rise with depth for any method or any models: "the norm falls with stage" is no
    evidence of regularization (the informative test compares methods on identical groups).
    """
    return float(sum(params[f"{n}.weight"].double().norm() + params[f"{n}.bias"].double().norm()
                     for n in layer_names(params)))


def _spectral_norm(w: Tensor) -> float:
    """Exact largest singular value (float64): the top eigenvalue of the smaller Gram matrix."""
    if w.numel() == 0:
        return 0.0
    w = w.double()
    return _top_eigenvalue_sqrt(w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w)


def _top_eigenvalue_sqrt(gram: Tensor) -> float:
    n = gram.shape[0]
    if n == 0:
        return 0.0
    # LAPACK syevr asked for the top eigenvalue only: exact like a full eigvalsh, ~1.5x faster.
    top = scipy.linalg.eigh(gram.cpu().numpy(), eigvals_only=True, subset_by_index=[n - 1, n - 1], driver="evr")
    return float(np.sqrt(max(top[0], 0.0)))


def linear_layers(params: Weights) -> tuple[list[tuple[Tensor, Tensor]], Tensor, Tensor]:
    """An MLP state dict as ([(W, b) per linear layer], mean, std), float64."""
    layers = [(params[f"{n}.weight"].double(), params[f"{n}.bias"].double()) for n in layer_names(params)]
    return layers, params["norm.mean"].double(), params["norm.std"].double()


def global_lipschitz_bound(layers: Sequence[tuple[Tensor, Tensor]], scale: Tensor | None = None) -> float:
    """Product of exact spectral norms of ``diag(scale)`` (if given) and every W of a ReLU net
    ``x -> W_L relu(... relu(W_1 (scale * x) + b_1) ...) + b_L``; ReLU is 1-Lipschitz, so this
    bounds ``||f(x) - f(y)|| / ||x - y||`` everywhere."""
    bound = 1.0 if scale is None else float(scale.double().abs().max())
    for w, _ in layers:
        bound *= _spectral_norm(w)
    return bound


def global_lipschitz(params: Weights) -> float:
    """`global_lipschitz_bound` of an MLP, its normalization ``diag(1/std)`` counted as a layer.

    Not guaranteed to fall under merging: each spectral norm is convex, but the bound is their
    product, and a product of averages can exceed the average of products. ReLU nets are
    invariant to scaling layer 1 by c and layer 2 by 1/c; averaging such a model with its
    mirror (1/c, c) gives layer norms ``(c + 1/c)/2`` times the original's, so the merged bound
    is ``((c + 1/c)/2)^2`` times both endpoints' (tested). A fall is therefore an empirical
    finding, not a tautology; so is the local bound's (`local_lipschitz`), which is scaled alike.
    """
    layers, _, std = linear_layers(params)
    return global_lipschitz_bound(layers, 1.0 / std)


# Power-iteration steps of HeinrichAD/local_lipschitz@778d7dec (`utils.get_RAD`, n_iter=100), the
# code Franke et al. used for their Lipschitz figure.
PAPER_POWER_STEPS = 100


def power_iteration_norm(w: Tensor, steps: int = PAPER_POWER_STEPS, generator: torch.Generator | None = None) -> float:
    """Largest singular value of ``w`` by ``steps`` power iterations on ``W^T W`` in float32 from a
    uniform [0, 1) start, as the reference code computes it. It approaches the exact value from
    below and can stop short of it (an underestimate, unlike `_spectral_norm`)."""
    w = w.detach().float().cpu()
    v = torch.rand(1, w.shape[1], generator=generator)
    c2 = v
    for _ in range(steps):
        c2 = (v @ w.T) @ w
        v = torch.nn.functional.normalize(c2, dim=1)
    return float(torch.sqrt(torch.linalg.vector_norm(c2, dim=1))[0])


def lipschitz_paper(params: Weights, seed: int = 0) -> float:
    """The number Franke et al.'s Lipschitz figure reports for this MLP: the product of the
    per-layer spectral norms by 100-step power iteration (float32), with respect to normalized
    inputs (their network saw normalized data; the normalization is not counted).

    Why this and not the local bound: the reference code (HeinrichAD/local_lipschitz@778d7dec,
    Avant & Morgansen 2023) bounds the layers it is given. An MLP whose forward calls
    ``torch.relu`` has no ReLU modules, so the traced layer list holds only the linear layers and
    its "local bound" is exactly this product, at every point and radius. ``seed`` seeds the
    power iterations' starts (one draw per layer, in order, as the reference's global RNG)."""
    g = torch.Generator().manual_seed(seed)
    layers, _, _ = linear_layers(params)
    bound = 1.0
    for w, _ in layers:
        bound *= power_iteration_norm(w, PAPER_POWER_STEPS, g)
    return bound


def am_local_bound(layers: Sequence[tuple[Tensor, Tensor]], x: Tensor, radius: float) -> np.ndarray:
    """Avant & Morgansen's (2023) full local bound at each row x0 of ``x``: for every x with
    ``||x - x0|| <= radius``, ``||f(x) - f(x0)|| <= L(x0) ||x - x0||`` (a bound relative to the
    centre, not between any two points of the ball).

    Layer k (input ball radius eps_k around its nominal input; d_k the inputs that can be non-zero):
    ``y0 = W x_k + b``, ``y_hi = y0 + eps_k ||row_i(W D_k)||``; each unit's slope factor is
    ``r_i = (relu(y_hi) - relu(y0)) / (y_hi - y0)`` (1 for units on at x0, 0 for units off on the
    whole ball, in (0, 1) for units that can switch on), ``L_k = ||diag(r) W D_k||_2`` (exact
    spectral norm here; the reference uses 100 power iterations), ``d_{k+1} = y_hi > 0`` and
    ``eps_{k+1} = eps_k L_k``. The last layer's ``L_K = ||W D_K||``. Checked against values of the
    reference implementation (HeinrichAD/local_lipschitz@778d7dec) in the tests.
    """
    layers = [(w.double().to(x.device), b.double().to(x.device)) for w, b in layers]

    def bound_at(h: Tensor) -> float:
        eps, bound, cols = float(radius), 1.0, None
        for li, (w, b) in enumerate(layers):
            y0 = w @ h + b
            w_in = w if cols is None else w[:, cols]
            if li == len(layers) - 1:
                lip = _spectral_norm(w_in)
            else:
                y_hi = y0 + eps * w_in.norm(dim=1)
                diff = y_hi - y0
                r = torch.where(diff > 0, (torch.relu(y_hi) - torch.relu(y0)) / diff.clamp_min(1e-300),
                                torch.zeros_like(diff))
                lip = _spectral_norm(r[:, None] * w_in)
                cols, h = y_hi > 0, torch.relu(y0)
            bound, eps = bound * lip, eps * lip
        return bound

    return np.array([bound_at(h) for h in x.flatten(1).to(torch.float64)])


def local_lipschitz_am(params: Weights, x: Tensor, radius: float) -> np.ndarray:
    """`am_local_bound` of an MLP at pixel inputs x, the normalization folded into the first
    layer as in `local_lipschitz` (pixel-space ball)."""
    return am_local_bound(_pixel_layers(params), x, radius)


def local_lipschitz_bound(layers: Sequence[tuple[Tensor, Tensor]], x: Tensor, radius: float) -> np.ndarray:
    """Upper bound on the local Lipschitz constant (L2) of the ReLU net
    ``x -> W_L relu(... relu(W_1 x + b_1) ...) + b_L`` on the ball B(x_i, radius), per row x_i.

    Avant & Morgansen (2023), "Analytical bounds on the local Lipschitz constants of ReLU networks":
    the ball is propagated layer by layer. With layer l's input confined to a ball of radius r
    around its value at x_i, pre-activation j lies within ``z_j(x_i) +- r ||W_l[j, varying]||``;
    a unit whose upper end is <= 0 is zero on the whole ball, so its row drops out of this layer's
    bound and its column out of the next one ("keeping track of the zero elements"). The layer's
    local constant is the exact spectral norm of the remaining submatrix, and the next ball's
    radius is that constant times r. The bound is the product of the layers' constants. (The paper
    refines the affine-ReLU constant further; without that refinement this bound is slightly looser
    than theirs and still an upper bound.) Removing rows or columns never raises a spectral norm,
    so it never exceeds `global_lipschitz_bound`.
    """
    layers = [(w.double().to(x.device), b.double().to(x.device)) for w, b in layers]
    # Every input pixel varies on the ball, so the first layer's Gram matrix and row norms are the
    # same at every point: computed once, a point only selects the rows that may be active.
    w1 = layers[0][0]
    gram1, rownorm1 = w1 @ w1.T, w1.norm(dim=1)
    full_norms: dict[int, float] = {}  # layer -> spectral norm of the whole W (computed on first use)

    def layer_norm(li: int, w_in: Tensor, rows: Tensor, whole: bool) -> float:
        if whole:  # nothing dropped (e.g. a large ball): the whole matrix's norm, computed once
            if li not in full_norms:
                full_norms[li] = _spectral_norm(layers[li][0])
            return full_norms[li]
        return _top_eigenvalue_sqrt(gram1[rows][:, rows]) if li == 0 else _spectral_norm(w_in[rows])

    def bound_at(h: Tensor) -> float:
        r, bound, varying = float(radius), 1.0, None
        all_in = True  # every input of this layer varies on the ball
        for li, (w, b) in enumerate(layers):
            z = w @ h + b
            last = li == len(layers) - 1
            w_in = w if li == 0 else w[:, varying]
            norms = rownorm1 if li == 0 else w_in.norm(dim=1)
            # logits: no ReLU, every row counts; hidden: rows that may be positive on the ball
            alive = torch.ones_like(z, dtype=torch.bool) if last else z + r * norms > 0
            all_out = bool(alive.all())
            lip = layer_norm(li, w_in, alive, all_in and all_out)
            bound, r = bound * lip, r * lip
            h, varying, all_in = torch.relu(z), alive, all_out
        return bound

    # Points are independent and the eigenvalue solver runs on one core: a thread per core.
    with ThreadPoolExecutor(max_workers=max(1, min(4, torch.get_num_threads()))) as pool:
        return np.array(list(pool.map(bound_at, x.flatten(1).to(torch.float64))))


def local_lipschitz(params: Weights, x: Tensor, radius: float) -> np.ndarray:
    """`local_lipschitz_bound` of an MLP at the pixel inputs x (L2 ball of ``radius`` pixels).

    The normalization is folded into the first layer, ``W1 ((x - mean) / std) + b1 = (W1 / std) x +
    (b1 - W1 (mean / std))``, which is exact and never looser than counting ``diag(1/std)`` apart
    (``||W1 D|| <= ||W1|| ||D||``), so the local bound never exceeds `global_lipschitz`.
    """
    return local_lipschitz_bound(_pixel_layers(params), x, radius)


def _pixel_layers(params: Weights) -> list[tuple[Tensor, Tensor]]:
    """The MLP's linear layers with its input normalization folded into the first."""
    layers, mean, std = linear_layers(params)
    w1, b1 = layers[0]
    layers[0] = (w1 / std, b1 - w1 @ (mean / std))
    return layers


# ---------------------------------------------------------------- attacks as metrics


def _correct(model: MLP, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    return clean_predictions(model, x, y, batch_size)[0]


class StackedMLP(nn.Module):
    """K MLPs of one architecture as one module over a model-major batch: rows j*n .. (j+1)*n - 1 of
    an input of K*n rows go to model j. The attacks, written for one model and independent samples,
    then attack K models in one pass per step (each row's gradient is its own model's), which is
    what fills a GPU; on a CPU it costs what one model at a time costs. It is the only attack
    path: tests/test_metrics.py checks it against a plain per-model FGSM and PGD."""

    def __init__(self, params_list: Sequence[Weights]):
        super().__init__()
        self.stacked = {k: v.detach() for k, v in stack_params(params_list).items()}
        self.k = len(params_list)

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1).view(self.k, len(x) // self.k, -1)
        return stacked_forward(self.stacked, h, per_model=True).flatten(0, 1)


def stacked_attack_metrics(params_list: Sequence[Weights], x: Tensor, y: Tensor, correct: Tensor, cfg: "EvalConfig"
                           ) -> list[list[tuple[str, float, float]]]:
    """FGSM and PGD rows for K models at once (see `StackedMLP`): robust accuracy and success rate
    per eps. FGSM's direction sign(grad_x CE) does not depend on eps, so it is computed once per
    sample; PGD starts every sample from the same seeded point, attacks all of them and counts
    only the correct ones (early stop at the first misclassified iterate)."""
    model = StackedMLP(params_list)
    k, n = len(params_list), len(y)
    noise = pgd_noise(x.shape, cfg.seed)
    fgsm_still = {eps: [] for eps in cfg.fgsm_eps}
    pgd_still = {eps: [] for eps in cfg.pgd_eps}
    step = max(1, cfg.batch_size // k)  # samples per pass: K copies of each
    for start in range(0, n, step):
        xs, ys = x[start:start + step], y[start:start + step]
        m = len(ys)
        rep = xs.repeat(k, *[1] * (xs.dim() - 1))  # model-major: K copies of the chunk
        yrep = ys.repeat(k)
        direction = fgsm_direction(model, rep, yrep)
        for eps in cfg.fgsm_eps:
            with torch.no_grad():
                fgsm_still[eps].append((model((rep + eps * direction).clamp(0.0, 1.0)).argmax(1) == yrep).view(k, m))
        nrep = noise[start:start + step].repeat(k, *[1] * (xs.dim() - 1))
        for eps in cfg.pgd_eps:
            adv = pgd(model, rep, yrep, eps, steps=cfg.pgd_steps, early_stop=True, noise=nrep, compact=False)
            with torch.no_grad():
                pgd_still[eps].append((model(adv).argmax(1) == yrep).view(k, m))
    out = []
    for j in range(k):
        rows = []
        for eps in cfg.fgsm_eps:
            rows += _robust_rows("fgsm", eps, correct[j] & torch.cat([c[j] for c in fgsm_still[eps]]), correct[j])
        for eps in cfg.pgd_eps:
            rows += _robust_rows("pgd", eps, correct[j] & torch.cat([c[j] for c in pgd_still[eps]]), correct[j])
        out.append(rows)
    return out


def deepfool_metrics(model: MLP, x: Tensor, y: Tensor, eps_grid: Iterable[float], *, n_classes: int,
                     overshoot: float = 0.02, max_iter: int = 50, correct: Tensor | None = None,
                     batch_size: int = 4096) -> list[tuple[str, float, float]]:
    """(metric, eps, value) rows: DeepFool robust accuracy per L2 eps, median minimal norm, unflipped share."""
    correct = _correct(model, x, y, batch_size) if correct is None else correct
    idx = correct.nonzero().squeeze(1)
    norms = torch.zeros(len(y), dtype=torch.float64, device=x.device)  # misclassified: 0
    for chunk in idx.split(batch_size):
        res = deepfool(model, x[chunk], n_classes=n_classes, overshoot=overshoot, max_iter=max_iter)
        norms[chunk] = res.norms.double()
    n_correct = max(int(correct.sum()), 1)
    rows = [("deepfool_robust_accuracy", float(eps), float(((norms > eps) & correct).double().mean()))
            for eps in eps_grid]
    rows.append(("deepfool_median_norm", np.nan, float(norms[correct].median()) if correct.any() else np.nan))
    rows.append(("deepfool_unflipped_rate", np.nan, float(torch.isinf(norms[correct]).sum()) / n_correct))
    return rows


def _robust_rows(attack: str, eps: float, still: Tensor, correct: Tensor) -> list[tuple[str, float, float]]:
    n_correct = int(correct.sum())
    success = float((correct & ~still).sum()) / n_correct if n_correct else np.nan
    return [(f"{attack}_robust_accuracy", float(eps), float(still.double().mean())),
            (f"{attack}_success_rate", float(eps), success)]


# ---------------------------------------------------------------- the one evaluation call


def evaluate(models: Mapping[str, Weights] | Sequence[Weights], x: Tensor, y: Tensor, cfg: EvalConfig = EvalConfig(),
             *, device: torch.device | str = "cpu", progress: bool = False) -> pd.DataFrame:
    """Every metric of the module docstring for every model, as a tidy table.

    ``models``: {model id: state dict} (or a list; ids are then "0", "1", ...). Returns a DataFrame
    with columns model, metric, eps (NaN where a metric has none), value. FGSM and PGD attack all
    models of one architecture at once (`stacked_attack_metrics`); DeepFool and the bounds run one
    model at a time.
    """
    if not isinstance(models, Mapping):
        models = {str(i): p for i, p in enumerate(models)}
    if not models:
        raise ValueError("no models to evaluate")
    device = torch.device(device)
    x, y = x.to(device), y.to(device)
    ids = list(models)
    iterator = ids
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(ids, desc="evaluate", unit="model")
    loaded = {mid: {k: v.to(device) for k, v in models[mid].items()} for mid in ids}
    corrects, attack_rows = {}, {}
    for group in _same_architecture(loaded):
        for mid in group:
            model = MLP.from_state_dict(loaded[mid]).to(device).eval()
            corrects[mid] = clean_predictions(model, x, y, cfg.batch_size)
        rows = stacked_attack_metrics([loaded[mid] for mid in group], x, y,
                                      torch.stack([corrects[mid][0] for mid in group]), cfg)
        attack_rows.update(zip(group, rows))
    rows = []
    for mid in iterator:
        params = loaded[mid]
        model = MLP.from_state_dict(params).to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)  # attacks need input gradients only
        correct, loss = corrects[mid]
        found = [("clean_accuracy", np.nan, float(correct.double().mean())), ("clean_loss", np.nan, loss)]
        found += attack_rows[mid]
        found += deepfool_metrics(model, x, y, cfg.deepfool_eps, n_classes=model.n_classes,
                                  overshoot=cfg.deepfool_overshoot, max_iter=cfg.deepfool_max_iter,
                                  correct=correct, batch_size=cfg.batch_size)
        found.append(("weight_norm", np.nan, weight_norm(params)))
        found.append(("lipschitz_global", np.nan, global_lipschitz(params)))
        found.append(("lipschitz_paper", np.nan, lipschitz_paper(params, cfg.seed)))
        if cfg.lipschitz_points:
            points = x[:cfg.lipschitz_points]
            local = local_lipschitz(params, points, cfg.lipschitz_radius)
            found.append(("lipschitz_local_mean", cfg.lipschitz_radius, float(local.mean())))
            found.append(("lipschitz_local_max", cfg.lipschitz_radius, float(local.max())))
            am = local_lipschitz_am(params, points, cfg.lipschitz_radius)
            found.append(("lipschitz_am_mean", cfg.lipschitz_radius, float(am.mean())))
            found.append(("lipschitz_am_max", cfg.lipschitz_radius, float(am.max())))
        rows += [(mid, *r) for r in found]
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _same_architecture(models: Mapping[str, Weights]) -> list[list[str]]:
    """Model ids grouped by architecture (tensor shapes), in first-seen order."""
    groups: dict[tuple, list[str]] = {}
    for mid, params in models.items():
        groups.setdefault(tuple((k, tuple(v.shape)) for k, v in sorted(params.items())), []).append(mid)
    return list(groups.values())
