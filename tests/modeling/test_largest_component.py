"""MODEL.FASTINST.TEST.LARGEST_COMPONENT: each mask keeps its largest 8-connected component (score and box follow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastinst.export.postprocess import instance_postprocess, keep_largest_component
from fastinst.modeling.postprocessing import instance_inference, mask_boxes, resize_mask_logits
from tests.conftest import tiny_cfg


def _logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Query 0: a confident 3 x 3-cell object with a faint (p = 0.4) bar to its right, and a separate confident
    1 x 2-cell blob in the far corner (the mask firing on another object). Query 1: one 2 x 2-cell object."""
    masks = torch.full((2, 12, 12), -6.0)  # (Q, H8, W8): 96 x 96 px
    masks[0, 2:5, 2:5] = 6.0
    masks[0, 3, 5:9] = math.log(0.4 / 0.6)  # logit of 0.4
    masks[0, 9:10, 9:11] = 6.0  # stray blob, 3 cells from anything else
    masks[1, 7:9, 1:3] = 6.0
    cls = torch.tensor([[4.0, -4.0], [0.0, 0.0]])  # (Q, K+1): query 0 ranks first
    return cls, masks


SIZE = (96, 96)


def _probs(masks: torch.Tensor) -> torch.Tensor:
    return resize_mask_logits(masks, SIZE, SIZE, SIZE).sigmoid()


def test_default_keeps_every_component() -> None:
    cls, masks = _logits()
    default = instance_inference(cls, masks, SIZE, SIZE, SIZE, topk=2)
    assert torch.equal(default.pred_masks[0], _probs(masks)[0] > 0.5)  # both blobs
    x0, y0, x1, y1 = default.pred_boxes.tensor[0].tolist()
    assert x0 < 24 and x1 > 80 and y1 > 72  # the box spans the object and the stray blob


def test_largest_component_drops_the_stray_blob_and_its_box_and_score_follow() -> None:
    cls, masks = _logits()
    default = instance_inference(cls, masks, SIZE, SIZE, SIZE, topk=2)
    kept = instance_inference(cls, masks, SIZE, SIZE, SIZE, topk=2, largest_component=True)
    probs = _probs(masks)
    # the object alone: the default mask with the corner blob (rows and columns >= 64) removed
    corner = torch.zeros(SIZE, dtype=torch.bool)
    corner[64:, 64:] = True
    expected = (probs[0] > 0.5) & ~corner
    assert (probs[0] > 0.5)[corner].any()  # there was a blob to remove
    assert torch.equal(kept.pred_masks[0], expected)
    assert torch.equal(kept.pred_boxes.tensor[0], mask_boxes(expected[None])[0])
    mask_score = (probs[0] * expected).sum() / (expected.sum() + 1e-6)
    assert kept.scores[0].item() == pytest.approx(
        cls[0].softmax(-1)[0].item() * mask_score.item(), rel=1e-6
    )
    # the single-component object is untouched
    assert torch.equal(kept.pred_masks[1], default.pred_masks[1])
    assert torch.equal(kept.pred_boxes.tensor[1], default.pred_boxes.tensor[1])
    assert kept.scores[1] == default.scores[1]


def test_lower_box_threshold_reaches_the_faint_bar_but_not_the_stray_blob() -> None:
    cls, masks = _logits()
    kept = instance_inference(cls, masks, SIZE, SIZE, SIZE, topk=2, largest_component=True)
    wide = instance_inference(
        cls, masks, SIZE, SIZE, SIZE, topk=2, largest_component=True, box_threshold=0.3
    )
    assert torch.equal(wide.pred_masks, kept.pred_masks) and torch.equal(wide.scores, kept.scores)
    x0, y0, x1, y1 = wide.pred_boxes.tensor[0].tolist()
    assert kept.pred_boxes.tensor[0, 2] <= 44  # the bar (p = 0.4) is not in the mask
    assert x1 >= 68  # with t = 0.3 the box reaches the bar's end (cells 5-8: x up to 72)
    assert y1 <= 44  # ... and not the blob at rows 72-80


def test_keep_largest_component_on_plain_arrays() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:4, 1:5] = True  # 12 pixels
    mask[6:8, 8:11] = True  # 6 pixels
    mask[4, 5] = True  # touches the first diagonally: 8-connected, 13 pixels
    box = keep_largest_component(mask)
    assert box.tolist() == [1.0, 1.0, 6.0, 5.0]
    assert mask.sum() == 13 and not mask[6:8, 8:11].any()
    empty = np.zeros((4, 4), dtype=bool)
    assert keep_largest_component(empty).tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("box_threshold", [0.5, 0.3, 0.7])
def test_numpy_post_processing_agrees(box_threshold) -> None:
    cls, masks = _logits()
    ref = instance_inference(
        cls, masks, SIZE, SIZE, SIZE, topk=2, largest_component=True, box_threshold=box_threshold
    )
    got = instance_postprocess(
        cls.numpy(), masks.numpy(), SIZE, SIZE, SIZE, topk=2,
        box_threshold=box_threshold, largest_component=True,
    )  # fmt: skip
    np.testing.assert_array_equal(got["masks"], ref.pred_masks.numpy())
    np.testing.assert_array_equal(got["boxes"], ref.pred_boxes.tensor.numpy())
    np.testing.assert_allclose(got["scores"], ref.scores.numpy(), rtol=1e-5)


def test_config_key_reaches_the_model_and_is_off_by_default() -> None:
    from detectron2.modeling import build_model

    cfg = tiny_cfg()
    assert cfg.MODEL.FASTINST.TEST.LARGEST_COMPONENT is False
    assert build_model(cfg).test_largest_component is False
    on = tiny_cfg(["MODEL.FASTINST.TEST.LARGEST_COMPONENT", True])
    assert build_model(on).test_largest_component is True
