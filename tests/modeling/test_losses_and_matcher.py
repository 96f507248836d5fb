"""Losses against hand-computed values; the matcher against brute force; its edge cases."""

import itertools
import math

import pytest
import torch

from fastinst.modeling import point_sampling
from fastinst.modeling.criterion import dense_cell_classes, proposal_loss
from fastinst.modeling.losses import (
    dice_loss,
    pairwise_dice_cost,
    pairwise_sigmoid_ce_cost,
    sigmoid_ce_loss,
)
from fastinst.modeling.matcher import HungarianMatcher, solve_assignment


def test_sigmoid_ce_loss_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.5, 1.0]])

    def bce(x, t):
        p = 1 / (1 + math.exp(-x))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    expected = (
        (bce(0, 1) + bce(2, 0)) / 2 + (bce(-1, 0.5) + bce(1, 1)) / 2
    ) / 4.0  # mean over points, sum over masks, / num_masks
    assert sigmoid_ce_loss(logits, labels, 4.0).item() == pytest.approx(expected, rel=1e-6)


def test_dice_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0]])  # probabilities 0.5
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    expected = 1 - (2 * (0.5 + 0.5) + 1) / (1.5 + 2 + 1)
    assert dice_loss(logits, labels, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert dice_loss(logits, labels, 2.0).item() == pytest.approx(expected / 2, rel=1e-6)


def test_pairwise_costs_equal_per_pair_losses():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 50), torch.rand(3, 50)
    ce, dice = pairwise_sigmoid_ce_cost(logits, labels), pairwise_dice_cost(logits, labels)
    assert ce.shape == dice.shape == (4, 3)
    for q, g in itertools.product(range(4), range(3)):
        assert ce[q, g] == pytest.approx(
            sigmoid_ce_loss(logits[q : q + 1], labels[g : g + 1], 1).item(), rel=1e-5
        )
        assert dice[q, g] == pytest.approx(
            dice_loss(logits[q : q + 1], labels[g : g + 1], 1).item(), rel=1e-5
        )


def _brute_force(cost: torch.Tensor) -> float:
    q, g = cost.shape
    return min(
        sum(cost[p[j], j].item() for j in range(g)) for p in itertools.permutations(range(q), g)
    )


def _problem(seed: int, q: int = 5, g: int = 3, k: int = 4, h: int = 32):
    torch.manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(1, q, k + 1),
        "pred_masks": torch.randn(1, q, h // 8, h // 8) * 3,
        "query_locations": torch.rand(1, q, 2),
    }
    masks = torch.zeros(g, h, h, dtype=torch.bool)
    for i in range(g):
        masks[i, 4 * i : 4 * i + 12, 2 * i : 2 * i + 16] = True
    targets = [{"labels": torch.randint(0, k, (g,)), "masks": masks}]
    return outputs, targets


@pytest.mark.parametrize("seed", range(4))
def test_query_matching_is_optimal(seed, monkeypatch):
    outputs, targets = _problem(seed)
    points = torch.rand(1, 64, 2)
    monkeypatch.setattr(
        point_sampling, "sample_uniform_points", lambda n, p, d: points[:, :p].expand(n, p, 2)
    )
    matcher = HungarianMatcher(2.0, 5.0, 5.0, 1000.0, num_points=64)
    ((rows, cols),) = matcher(outputs, targets)

    # the full cost matrix, written out independently
    prob = outputs["pred_logits"][0].softmax(-1)
    masks = targets[0]["masks"].float()
    t = point_sampling.point_sample(masks[:, None], points.expand(3, -1, -1))[:, 0]
    o = point_sampling.point_sample(outputs["pred_masks"][0][:, None], points.expand(5, -1, -1))[
        :, 0
    ]
    inside = (
        point_sampling.point_sample(masks[:, None], outputs["query_locations"].expand(3, -1, -1))[
            :, 0
        ]
        > 0
    )
    cost = (
        5 * pairwise_sigmoid_ce_cost(o, t)
        - 2 * prob[:, targets[0]["labels"]]
        + 5 * pairwise_dice_cost(o, t)
        - 1000 * inside.T.float()
    )
    assert rows.tolist() == sorted(rows.tolist()) and len(set(cols.tolist())) == 3
    assert cost[rows, cols].sum().item() == pytest.approx(_brute_force(cost), rel=1e-6)


def test_location_cost_dominates():
    """A query inside an object is preferred over a better-scoring query outside it."""
    outputs, targets = _problem(0, q=2, g=1)
    targets[0]["masks"][:] = False
    targets[0]["masks"][0, :8, :8] = True  # top-left corner
    outputs["query_locations"] = torch.tensor([[[0.9, 0.9], [0.1, 0.1]]])
    outputs["pred_logits"] = torch.tensor([[[9.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0]]])
    targets[0]["labels"] = torch.tensor([0])
    ((rows, cols),) = HungarianMatcher(2.0, 5.0, 5.0, 1000.0, num_points=16)(outputs, targets)
    assert rows.tolist() == [1]


def test_empty_targets_and_nan_costs_do_not_crash(caplog):
    outputs, targets = _problem(1)
    targets[0] = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)}
    ((rows, cols),) = HungarianMatcher(2.0, 5.0, 5.0, 1000.0, num_points=16)(outputs, targets)
    assert rows.numel() == cols.numel() == 0

    rows, cols = solve_assignment(torch.tensor([[float("nan"), 1.0], [0.0, float("inf")]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    assert "Non-finite" in caplog.text


def test_proposal_matching_and_loss():
    # 2x2 stride-16 map of a 32x32 image; one object in the bottom-right cell
    logits = torch.zeros(1, 4, 2, 2)  # K = 3
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, 20:24, 20:24] = True
    targets = [{"labels": torch.tensor([2]), "masks": masks}]
    matcher = HungarianMatcher(2.0, 5.0, 5.0, 1000.0)
    ((rows, cols),) = matcher({"proposal_cls_logits": logits}, targets)
    assert rows.tolist() == [3] and cols.tolist() == [0]  # flattened index of cell (1, 1)

    loss = proposal_loss(logits, targets, [(rows, cols)])
    assert loss.item() == pytest.approx(
        math.log(4), rel=1e-6
    )  # uniform logits: CE = log(K+1) everywhere


def test_dense_proposal_targets_label_the_cells_an_object_mostly_covers():
    # 2x3 stride-16 map of a 32x48 image, K = 3. Object 0 (class 1) covers cell (0, 0) fully and cell (0, 1) by a
    # quarter; object 1 (class 2) covers cell (1, 2) by three quarters and is the matched one.
    masks = torch.zeros(2, 32, 48, dtype=torch.bool)
    masks[0, 0:16, 0:20] = True
    masks[1, 16:32, 36:48] = True
    targets = [{"labels": torch.tensor([1, 2]), "masks": masks}]
    assert dense_cell_classes(targets[0], (2, 3), no_object=3).tolist() == [1, 3, 3, 3, 3, 2]

    logits = torch.zeros(1, 4, 2, 3)
    logits[0, 1, 0, 0] = 5.0  # confident and right where the dense target says class 1
    matched = [(torch.tensor([5]), torch.tensor([1]))]
    dense = proposal_loss(logits, targets, matched, dense=True)
    sparse = proposal_loss(logits, targets, matched)
    log_softmax = torch.log_softmax(logits.flatten(2), dim=1)[0]  # (K+1, L16)
    expected_dense = -(log_softmax[1, 0] + 4 * log_softmax[3, 1] + log_softmax[2, 5]) / 6
    expected_sparse = -(5 * log_softmax[3, 0:5].mean() + log_softmax[2, 5]) / 6
    assert dense.item() == pytest.approx(expected_dense.item(), rel=1e-6)
    assert sparse.item() == pytest.approx(expected_sparse.item(), rel=1e-6)
    assert dense.item() < sparse.item()
