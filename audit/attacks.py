"""Adversarial attacks in [0, 1] pixel space (models normalize inside), batched over samples.

* `fgsm`: one signed-gradient step of size eps (L-inf), clipped to [0, 1].
* `pgd`: projected gradient descent in the L-inf ball, seeded random start; a check against
  gradient masking (its robust accuracy should not exceed FGSM's at the same eps).
* `deepfool`: multi-class DeepFool (Moosavi-Dezfooli et al. 2016), L2, with overshoot; returns the
  minimal perturbation it found per sample. Robust accuracy at eps is then the share of samples
  that are classified correctly and whose minimal perturbation norm exceeds eps (the foolbox
  convention); samples DeepFool fails to flip within max_iter count as robust at every eps.

eps are in pixel units: L-inf for FGSM/PGD, L2 (over all C*H*W pixels) for DeepFool.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _input_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")  # sum: per-sample gradients unscaled
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm_direction(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """sign(grad_x CE): FGSM's step direction, the same for every eps."""
    return _input_grad(model, x, y).sign()


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """x + eps * sign(grad_x CE), clipped to [0, 1]."""
    if eps == 0:
        return x.clone()
    return (x + eps * fgsm_direction(model, x, y)).clamp(0.0, 1.0).detach()


def pgd_noise(shape, seed: int) -> Tensor:
    """PGD's random start directions, uniform in [-1, 1] (scaled by eps), from ``seed`` on the CPU."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, steps: int = 10, step_size: float | None = None,
        seed: int = 0, early_stop: bool = False, noise: Tensor | None = None, compact: bool = True) -> Tensor:
    """L-inf PGD: uniform random start in the eps-ball (``noise``, else drawn from ``seed``),
    ``steps`` signed-gradient steps of ``step_size`` (default 2.5 * eps / steps, Madry et al.),
    each projected onto the ball and [0, 1].

    With ``early_stop`` a sample is frozen at the first iterate (the random start included) that
    is misclassified, so the returned input is adversarial whenever any iterate was. Frozen samples
    are dropped from the batch (``compact``) or, for a model whose batch must keep its shape (the
    stacked models of `audit.metrics`), kept in it and masked: the result is the same.
    """
    if eps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps if step_size is None else step_size
    noise = pgd_noise(x.shape, seed) if noise is None else noise
    adv = (x + eps * noise.to(x.device, x.dtype)).clamp(0.0, 1.0)
    active = torch.arange(len(x), device=x.device)
    frozen = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(steps):
        leaf = adv[active].requires_grad_(True)
        logits = model(leaf)
        loss = F.cross_entropy(logits, y[active], reduction="sum")  # sum: per-sample gradients unscaled
        (grad,) = torch.autograd.grad(loss, leaf)
        if early_stop:  # samples misclassified at this iterate stay there
            keep = logits.argmax(1) == y[active]
            if compact:
                active, grad = active[keep], grad[keep]
                if len(active) == 0:
                    break
            else:
                frozen |= ~keep
                if frozen.all():
                    break
        x0 = x[active]
        step = torch.min(torch.max(adv[active] + alpha * grad.sign(), x0 - eps), x0 + eps).clamp(0.0, 1.0)
        adv[active] = torch.where(frozen.view(-1, *[1] * (x.dim() - 1)), adv[active], step) if not compact else step
    return adv.detach()


@dataclass
class DeepFoolResult:
    x_adv: Tensor  # (N, ...) perturbed inputs, in [0, 1]
    norms: Tensor  # (N,) L2 norm of x_adv - x; +inf where the label never flipped
    iterations: Tensor  # (N,) steps taken per sample
    flipped: Tensor  # (N,) bool, prediction changed


def deepfool(model: nn.Module, x: Tensor, *, n_classes: int, overshoot: float = 0.02, max_iter: int = 50
             ) -> DeepFoolResult:
    """Batched multi-class DeepFool (L2).

    Each step linearizes the logits around the current point and moves to the nearest linearized
    decision boundary: for every class k != k0 (the original prediction), w_k = grad(f_k - f_k0),
    f'_k = f_k - f_k0; l = argmin |f'_k| / ||w_k||; r = (|f'_l| + 1e-4) / ||w_l||^2 * w_l. The
    total perturbation is applied with (1 + overshoot) and clipped to [0, 1]. Samples stop once
    their prediction changes.
    """
    model.eval()
    flat = x.flatten(1)
    with torch.no_grad():
        k0 = model(x).argmax(1)
    adv = flat.clone()
    iters = torch.zeros(len(x), dtype=torch.long, device=x.device)
    # The loop works on compacted copies of the still-unflipped samples: idx maps them back.
    idx = torch.arange(len(x), device=x.device)
    x0, r_tot, cur, orig = flat, torch.zeros_like(flat), flat, k0
    for _ in range(max_iter):
        leaf = cur.detach().requires_grad_(True)
        logits = model(leaf.view(-1, *x.shape[1:]))
        # Per-sample gradients of every logit: samples are independent, so the gradient of the
        # batch sum of logit k is each sample's own gradient of logit k.
        grads = torch.stack([torch.autograd.grad(logits[:, k].sum(), leaf, retain_graph=k < n_classes - 1)[0]
                             for k in range(n_classes)], 1)  # (m, K, D)
        keep = logits.argmax(1) == orig  # samples already flipped stop here
        if not keep.all():
            idx, x0, r_tot, orig, grads, logits = idx[keep], x0[keep], r_tot[keep], orig[keep], grads[keep], logits[keep]
        if len(idx) == 0:
            break
        logits = logits.detach()
        rows = torch.arange(len(idx), device=x.device)
        w = grads - grads[rows, orig].unsqueeze(1)  # (m, K, D)
        f = logits - logits[rows, orig].unsqueeze(1)  # (m, K)
        w_norm = w.norm(dim=2)
        dist = f.abs() / (w_norm + 1e-12)
        dist[rows, orig] = float("inf")
        target = dist.argmin(1)
        f_l = f[rows, target].abs()
        r_tot = r_tot + ((f_l + 1e-4) / (w_norm[rows, target] ** 2 + 1e-12)).unsqueeze(1) * w[rows, target]
        cur = (x0 + (1 + overshoot) * r_tot).clamp(0.0, 1.0)
        adv[idx] = cur
        iters[idx] += 1
    adv = adv.view_as(x)
    with torch.no_grad():
        flipped = model(adv).argmax(1) != k0
    norms = (adv - x).flatten(1).norm(dim=1)
    norms = torch.where(flipped, norms, torch.full_like(norms, float("inf")))
    return DeepFoolResult(adv.detach(), norms, iters, flipped)
