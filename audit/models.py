"""MLP classifiers whose input is always [0, 1] pixels.

Normalization lives inside the model as a fixed layer, so every consumer (training, evaluation,
attacks) feeds raw pixels and attack budgets are in pixel units. This rules out the bug class of
training and evaluating with different normalizations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .config import DEVICES, PRESETS  # read with the params, without torch


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(device)


def resolve_widths(widths: str | Sequence[int]) -> tuple[int, ...]:
    """A preset name or an explicit sequence of hidden widths -> tuple of positive ints."""
    if isinstance(widths, str):
        if widths not in PRESETS:
            raise ValueError(f"unknown architecture preset {widths!r}; allowed: {sorted(PRESETS)}")
        return PRESETS[widths]
    out = tuple(int(w) for w in widths)
    if not out or any(w <= 0 for w in out):
        raise ValueError(f"hidden widths must be a non-empty list of positive ints, got {list(widths)}")
    return out


class Normalize(nn.Module):
    """Fixed per-feature affine map (x - mean) / std on flattened inputs.

    Per-channel statistics are expanded to per-feature buffers in channel-major (C, H, W) order,
    the order `flatten` produces. Buffers are part of the state dict (so a saved model carries its
    normalization) but are never trained.
    """

    def __init__(self, in_features: int, mean=None, std=None):
        super().__init__()
        self.register_buffer("mean", _per_feature(mean, in_features, default=0.0))
        self.register_buffer("std", _per_feature(std, in_features, default=1.0))
        if torch.any(self.std <= 0):
            raise ValueError("normalization std must be positive")

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _per_feature(values, in_features: int, default: float) -> Tensor:
    if values is None:
        return torch.full((in_features,), default)
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        return t.expand(in_features).clone()
    if in_features % t.numel():
        raise ValueError(f"{t.numel()} channel statistics do not divide {in_features} input features")
    return t.repeat_interleave(in_features // t.numel())


class MLP(nn.Module):
    """flatten -> fixed normalization -> (Linear, ReLU) x len(widths) -> Linear (logits).

    State-dict keys: ``norm.mean``, ``norm.std``, ``hidden.{i}.weight|bias``, ``head.weight|bias``.
    Torch convention: weights are (out_features, in_features).
    """

    def __init__(self, in_features: int, widths: str | Sequence[int], n_classes: int, mean=None, std=None):
        super().__init__()
        self.in_features = int(in_features)
        self.widths = resolve_widths(widths)
        self.n_classes = int(n_classes)
        self.norm = Normalize(self.in_features, mean, std)
        dims = (self.in_features, *self.widths)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(dims[-1], self.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x.flatten(1))
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.head(h)

    @property
    def architecture(self) -> dict:
        """JSON-serializable description, enough to rebuild the module."""
        return {"in_features": self.in_features, "widths": list(self.widths), "n_classes": self.n_classes}

    @classmethod
    def from_state_dict(cls, params: Mapping[str, Tensor]) -> "MLP":
        """Rebuild an MLP from its parameters alone (architecture inferred from shapes)."""
        arch = architecture_of(params)
        model = cls(arch["in_features"], arch["widths"], arch["n_classes"])
        model.load_state_dict(dict(params))
        return model


_HIDDEN = re.compile(r"^hidden\.(\d+)\.weight$")


def architecture_of(params: Mapping[str, Tensor]) -> dict:
    """Infer {in_features, widths, n_classes} from an MLP state dict; ValueError if it is not one."""
    idx = sorted(int(m.group(1)) for k in params if (m := _HIDDEN.match(k)))
    if not idx or idx != list(range(len(idx))) or "head.weight" not in params:
        raise ValueError("not an audit.models.MLP state dict (needs hidden.0..k.weight and head.weight)")
    widths = [int(params[f"hidden.{i}.weight"].shape[0]) for i in idx]
    in_features = int(params["hidden.0.weight"].shape[1])
    n_classes = int(params["head.weight"].shape[0])
    return {"in_features": in_features, "widths": widths, "n_classes": n_classes}


def layer_names(params: Mapping[str, Tensor]) -> list[str]:
    """Prefixes of the linear layers in forward order: hidden.0 .. hidden.k, head."""
    return [f"hidden.{i}" for i in range(len(architecture_of(params)["widths"]))] + ["head"]


def stack_params(params_list: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """K state dicts of one architecture -> one dict of (K, ...) tensors for `stacked_forward`."""
    return {k: torch.stack([p[k] for p in params_list]) for k in params_list[0]}


def stacked_forward(stacked: Mapping[str, Tensor], x: Tensor, *, per_model: bool = False) -> Tensor:
    """Logits (K, N, C) of K stacked MLPs on inputs x: (N, ...) shared by all models, or with
    ``per_model`` (K, N, in) flattened inputs, one batch per model.

    One ``baddbmm`` per layer for all K models, which is what makes many small models cheap on a
    GPU (and no slower than a loop on CPU).
    """
    k = stacked["head.weight"].shape[0]
    h = x if per_model else x.flatten(1).expand(k, -1, -1)
    h = (h - stacked["norm.mean"][:, None, :]) / stacked["norm.std"][:, None, :]
    names = layer_names({n: t[0] for n, t in stacked.items()})
    for i, name in enumerate(names):
        h = torch.baddbmm(stacked[f"{name}.bias"][:, None, :], h, stacked[f"{name}.weight"].transpose(1, 2))
        if i < len(names) - 1:
            h = torch.relu(h)
    return h
