"""Clean accuracy and cross-entropy: what training, evaluation and the barrier curves all report.

Two forms of one computation: `clean_predictions` runs one model module and keeps per-sample
correctness (the attacks need it: a sample wrong when clean is never counted robust);
`clean_metrics` stacks many state dicts of one architecture into one batched forward (barrier
grids, many models at once). They are tested equal to each other (tests/test_metrics.py).
Kept apart from the attacks so that training does not depend on attack code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import stack_params, stacked_forward

Weights = dict[str, Tensor]


def clean_predictions(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> tuple[Tensor, float]:
    """(per-sample correctness, mean cross-entropy) of one model."""
    correct, loss = [], 0.0
    with torch.no_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            logits = model(xb)
            correct.append(logits.argmax(1) == yb)
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
    return torch.cat(correct), loss / len(y)


@torch.no_grad()
def clean_metrics(params_list: Sequence[Weights], x: Tensor, y: Tensor, *, batch_size: int = 4096,
                  models_per_pass: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, mean cross-entropy) per model, arrays of len(params_list); on x's device.

    Models of one architecture are stacked and evaluated ``models_per_pass`` at a time.
    """
    acc, loss = np.zeros(len(params_list)), np.zeros(len(params_list))
    for start in range(0, len(params_list), models_per_pass):
        chunk = params_list[start:start + models_per_pass]
        stacked = {k: v.to(x.device) for k, v in stack_params(chunk).items()}
        correct = torch.zeros(len(chunk), dtype=torch.float64, device=x.device)
        total = torch.zeros(len(chunk), dtype=torch.float64, device=x.device)
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            logits = stacked_forward(stacked, xb)  # (K, B, C)
            correct += (logits.argmax(2) == yb).sum(1)
            total += F.cross_entropy(logits.transpose(1, 2), yb.expand(len(chunk), -1), reduction="none").sum(1)
        acc[start:start + len(chunk)] = (correct / len(y)).cpu().numpy()
        loss[start:start + len(chunk)] = (total / len(y)).cpu().numpy()
    return acc, loss
