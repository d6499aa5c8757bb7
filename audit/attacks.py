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


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """x + eps * sign(grad_x CE), clipped to [0, 1]."""
    if eps == 0:
        return x.clone()
    return (x + eps * _input_grad(model, x, y).sign()).clamp(0.0, 1.0).detach()


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, steps: int = 10, step_size: float | None = None,
        seed: int = 0) -> Tensor:
    """L-inf PGD: uniform random start in the eps-ball (seeded), ``steps`` signed-gradient steps of
    ``step_size`` (default 2.5 * eps / steps, Madry et al.), each projected onto the ball and [0, 1]."""
    if eps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps if step_size is None else step_size
    g = torch.Generator(device="cpu").manual_seed(seed)
    noise = (torch.rand(x.shape, generator=g) * 2 - 1).to(x.device, x.dtype)
    adv = (x + eps * noise).clamp(0.0, 1.0)
    for _ in range(steps):
        adv = adv + alpha * _input_grad(model, adv, y).sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0).detach()
    return adv


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
    n = x.shape[0]
    with torch.no_grad():
        k0 = model(x).argmax(1)
    r_tot = torch.zeros_like(x)
    adv = x.clone()
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    iters = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = adv[idx].detach().requires_grad_(True)
        logits = model(xa)
        # Per-sample gradients of every logit: samples are independent, so the gradient of the
        # batch sum of logit k is each sample's own gradient of logit k.
        grads = torch.stack([torch.autograd.grad(logits[:, k].sum(), xa, retain_graph=k < n_classes - 1)[0]
                             for k in range(n_classes)], 1)  # (m, K, ...)
        keep = logits.argmax(1) == k0[idx]  # samples already flipped stop here
        active[idx[~keep]] = False
        if not keep.any():
            break
        idx, grads, logits = idx[keep], grads[keep], logits[keep].detach()
        orig = k0[idx]
        rows = torch.arange(len(idx), device=x.device)
        w = (grads - grads[rows, orig].unsqueeze(1)).flatten(2)  # (m, K, D)
        f = logits - logits[rows, orig].unsqueeze(1)  # (m, K)
        w_norm = w.norm(dim=2)
        dist = f.abs() / (w_norm + 1e-12)
        dist[rows, orig] = float("inf")
        target = dist.argmin(1)
        w_l = w[rows, target]
        f_l = f[rows, target].abs()
        step = ((f_l + 1e-4) / (w_norm[rows, target] ** 2 + 1e-12)).unsqueeze(1) * w_l
        r_tot[idx] += step.view_as(r_tot[idx])
        adv[idx] = (x[idx] + (1 + overshoot) * r_tot[idx]).clamp(0.0, 1.0)
        iters[idx] += 1
    with torch.no_grad():
        flipped = model(adv).argmax(1) != k0
    norms = (adv - x).flatten(1).norm(dim=1)
    norms = torch.where(flipped, norms, torch.full_like(norms, float("inf")))
    return DeepFoolResult(adv.detach(), norms, iters, flipped)
