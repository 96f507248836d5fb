"""Mask losses and matching costs as plain functions (SPEC §4.1, §5.1).

Shape shorthand: N (or Q) predictions, G targets, P points. Inputs are mask *logits*; targets are soft labels in
[0, 1] (bilinear samples of binary masks).
"""

import torch.nn.functional as F
from torch import Tensor


def sigmoid_ce_loss(logits: Tensor, labels: Tensor, num_masks: float) -> Tensor:
    """Point-wise BCE-with-logits, mean over points (N, P), summed over masks and divided by `num_masks`."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: Tensor, labels: Tensor, num_masks: float) -> Tensor:
    """Soft dice loss 1 - (2|X∩Y| + 1) / (|X| + |Y| + 1) on sigmoid(logits) (N, P), summed / `num_masks`."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * labels).sum(-1)
    denominator = probs.sum(-1) + labels.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def pairwise_sigmoid_ce_cost(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean point-wise BCE between every prediction (Q, P) and every target (G, P) -> (Q, G).

    BCE(x, t) = softplus(-x) t + softplus(x) (1 - t), so the whole matrix is two matrix products.
    """
    num_points = logits.shape[1]
    pos = F.softplus(-logits)  # (Q, P) cost where the target is 1
    neg = F.softplus(logits)  # (Q, P) cost where the target is 0
    cost = pos @ labels.T + neg @ (1 - labels).T  # (Q, G)
    return cost / num_points


def pairwise_dice_cost(logits: Tensor, labels: Tensor) -> Tensor:
    """Dice cost between every prediction (Q, P) and every target (G, P) -> (Q, G)."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ labels.T  # (Q, G)
    denominator = probs.sum(-1)[:, None] + labels.sum(-1)[None, :]  # (Q, G)
    return 1 - (numerator + 1) / (denominator + 1)
