import pytest
import torch

from audit.models import MLP, PRESETS, architecture_of


def test_presets_are_the_published_architectures():
    assert MLP(3072, "paper", 10).widths == (512, 512, 512, 256)
    assert MLP(784, "rebasin", 10).widths == (512, 512, 512)
    assert MLP(64, "paper-half", 10).widths == (256, 256, 256, 128)  # the default run's: half the paper's
    assert set(PRESETS) == {"paper", "rebasin", "paper-half"}


def test_normalization_is_fixed_and_applied_per_channel():
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.25, 0.5]
    m = MLP(3 * 2 * 2, [4], 3, mean=mean, std=std)
    # Buffers, not parameters: the optimizer never sees them, but the state dict carries them.
    assert {n for n, _ in m.named_parameters()}.isdisjoint({"norm.mean", "norm.std"})
    assert {"norm.mean", "norm.std"} <= set(m.state_dict())
    x = torch.rand(5, 3, 2, 2)
    expected = ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]).flatten(1)
    torch.testing.assert_close(m.norm(x.flatten(1)), expected)


def test_forward_shapes_and_logits():
    m = MLP(64, (32, 16), 10)
    out = m(torch.rand(7, 1, 8, 8))
    assert out.shape == (7, 10)
    # The head is linear: no ReLU on the logits.
    assert (out < 0).any()


def test_rebuild_from_state_dict_gives_the_same_function():
    m = MLP(20, (8, 6, 4), 5, mean=0.3, std=0.2)
    m2 = MLP.from_state_dict(m.state_dict())
    assert m2.architecture == {"in_features": 20, "widths": [8, 6, 4], "n_classes": 5}
    x = torch.rand(4, 20)
    assert torch.equal(m(x), m2(x))


def test_bad_widths_and_state_dicts_are_rejected():
    with pytest.raises(ValueError, match="unknown architecture preset 'huge'"):
        MLP(10, "huge", 2)
    with pytest.raises(ValueError, match="positive"):
        MLP(10, [4, 0], 2)
    with pytest.raises(ValueError, match="not an audit.models.MLP"):
        architecture_of({"conv.weight": torch.zeros(1)})
