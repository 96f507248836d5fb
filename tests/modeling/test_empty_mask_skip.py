"""Queries whose mask logits are all below `empty_logit_bound` are not resized: the results must be exactly those
of the full computation (the bound disabled), for both post-processings and every box option."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastinst.export.postprocess as numpy_postprocess
from fastinst.export.postprocess import empty_logit_bound, instance_postprocess
from fastinst.modeling import postprocessing
from fastinst.modeling.postprocessing import instance_inference

SIZES = ((96, 128), (90, 121), (180, 242))  # padded, image, output (two resizes)
SAME_SIZE = ((96, 128), (90, 121), (90, 121))  # the second resize skipped


def mixed_logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """20 queries, 7 classes: 8 with positive blobs, 6 faint (all in (-0.8, -0.01): empty masks, boxes at a
    box threshold of 0.3), 6 far below (empty everywhere)."""
    g = torch.Generator().manual_seed(seed)
    blobs = torch.randn(8, 12, 16, generator=g) * 4
    faint = -0.01 - 0.79 * torch.rand(6, 12, 16, generator=g)
    empty = -6.0 - torch.rand(6, 12, 16, generator=g)
    masks = torch.cat([blobs, faint, empty])[torch.randperm(20, generator=g)]
    return torch.randn(20, 8, generator=g), masks


def test_bound_values() -> None:
    assert empty_logit_bound(0.5) == pytest.approx(-1e-3)
    assert empty_logit_bound(0.7) == pytest.approx(-1e-3)  # boxes inside the mask: the mask's bound
    assert empty_logit_bound(0.3) == pytest.approx(math.log(0.3 / 0.7) - 1e-3)
    assert empty_logit_bound(0.0) == float("-inf")


@pytest.mark.parametrize("sizes", [SIZES, SAME_SIZE])
@pytest.mark.parametrize(
    "box_threshold, largest_component", [(0.5, False), (0.3, False), (0.7, False), (0.3, True)]
)
def test_torch_skip_equals_the_full_computation(
    monkeypatch, sizes, box_threshold, largest_component
) -> None:
    cls_logits, mask_logits = mixed_logits()
    resized = []
    original = postprocessing.resize_mask_logits
    monkeypatch.setattr(
        postprocessing,
        "resize_mask_logits",
        lambda x, *a, **k: resized.append(len(x)) or original(x, *a, **k),
    )
    args = (cls_logits, mask_logits, *sizes, 50, 0.0, box_threshold, largest_component)
    fast = instance_inference(*args)
    skipped_rows = sum(resized)
    monkeypatch.setattr(numpy_postprocess, "SKIP_EMPTY_MASKS", False)
    resized.clear()
    full = instance_inference(*args)
    # 6 queries are far below both thresholds; the faint ones are resized only for a box threshold below 0.5
    live = 8 + (6 if box_threshold < 0.5 else 0)
    assert len(set(full.pred_classes.tolist())) > 1 and len(fast) == len(full) == 50
    assert skipped_rows == live and sum(resized) == 20
    assert torch.equal(fast.pred_masks, full.pred_masks)
    assert torch.equal(fast.scores, full.scores)
    assert torch.equal(fast.pred_classes, full.pred_classes)
    assert torch.equal(fast.pred_boxes.tensor, full.pred_boxes.tensor)
    empty = ~fast.pred_masks.flatten(1).any(1)
    assert 0 < int(empty.sum()) < 50 and torch.all(fast.scores[empty] == 0)
    if box_threshold == 0.3 and not largest_component:  # the faint queries keep their boxes
        assert fast.pred_boxes.tensor[empty].abs().sum(1).gt(0).any()


@pytest.mark.parametrize(
    "box_threshold, largest_component", [(0.5, False), (0.3, False), (0.3, True)]
)
def test_numpy_skip_equals_the_full_computation(
    monkeypatch, box_threshold, largest_component
) -> None:
    cls_logits, mask_logits = (x.numpy() for x in mixed_logits(1))
    args = (cls_logits, mask_logits, *SIZES, 50, box_threshold, largest_component)
    fast = instance_postprocess(*args)
    monkeypatch.setattr(numpy_postprocess, "SKIP_EMPTY_MASKS", False)
    full = instance_postprocess(*args)
    for key in ("masks", "scores", "classes", "boxes"):
        np.testing.assert_array_equal(fast[key], full[key], err_msg=key)
    assert (~fast["masks"].reshape(50, -1).any(1)).sum() > 0


def test_all_empty_masks_as_from_an_untrained_model() -> None:
    """Random weights give all-negative mask logits: nothing is resized, every mask, box and score is 0."""
    cls_logits, mask_logits = torch.randn(10, 4), torch.full((10, 12, 16), -3.0)
    result = instance_inference(cls_logits, mask_logits, *SIZES, 20)
    assert result.pred_masks.shape == (20, 180, 242) and not result.pred_masks.any()
    assert torch.equal(result.scores, torch.zeros(20))
    assert torch.equal(result.pred_boxes.tensor, torch.zeros(20, 4))
