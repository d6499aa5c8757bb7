import pytest
import torch
from torch import nn

from audit.attacks import deepfool, fgsm, pgd
from audit.models import MLP


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def trained(trained_pair):
    data, (params, _) = trained_pair
    model = MLP.from_state_dict(params).eval()
    return model, data.x_test[:500], data.y_test[:500]


def test_fgsm_at_zero_is_clean_and_stays_in_the_box(trained):
    model, x, y = trained
    assert accuracy(model, fgsm(model, x, y, 0.0), y) == accuracy(model, x, y)
    for eps in (0.01, 0.1):
        adv = fgsm(model, x, y, eps)
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() <= eps + 1e-6
        assert accuracy(model, adv, y) < accuracy(model, x, y)


def test_pgd_is_at_least_as_strong_as_fgsm(trained):
    model, x, y = trained
    for eps in (0.02, 0.05, 0.1):
        adv = pgd(model, x, y, eps, steps=10, seed=0)
        assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert accuracy(model, adv, y) <= accuracy(model, fgsm(model, x, y, eps), y)
    assert torch.equal(pgd(model, x, y, 0.05, seed=3), pgd(model, x, y, 0.05, seed=3))


class Affine(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


@pytest.mark.parametrize("n_classes", [2, 5])
def test_deepfool_finds_the_closed_form_step_on_a_linear_classifier(n_classes):
    g = torch.Generator().manual_seed(n_classes)
    d, n = 20, 16
    w = torch.randn(n_classes, d, generator=g)
    x = 0.5 + 0.05 * torch.rand(n, 1, 4, 5, generator=g)  # inside the box: clipping never binds
    b = -(x.flatten(1).mean(0) @ w.T) + 0.1 * torch.randn(n_classes, generator=g)
    model = Affine(w, b)
    f = model(x)
    k0 = f.argmax(1)
    # Exact minimal L2 distance to the nearest decision boundary of an affine classifier.
    gaps = (f - f.gather(1, k0[:, None])).abs()
    wdiff = (w[None] - w[k0][:, None]).norm(dim=2)
    dist = gaps / wdiff
    dist[torch.arange(n), k0] = float("inf")
    minimal = dist.min(1).values
    res = deepfool(model, x, n_classes=n_classes, overshoot=0.02)
    assert res.flipped.all() and (res.iterations == 1).all()  # one step on a linear model
    want = (minimal + 1e-4 / wdiff.gather(1, dist.argmin(1)[:, None]).squeeze(1)) * 1.02
    torch.testing.assert_close(res.norms, want, rtol=1e-4, atol=1e-6)


def test_deepfool_on_a_trained_mlp(trained):
    model, x, y = trained
    res = deepfool(model, x[:100], n_classes=10)
    assert res.flipped.float().mean() > 0.95
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    pred = model(res.x_adv).argmax(1)
    assert (pred[res.flipped] != model(x[:100]).argmax(1)[res.flipped]).all()
    assert torch.isinf(res.norms[~res.flipped]).all()
