"""MODEL.FASTINST.TEST.BOX_THRESHOLD: boxes around the mask probability > t (0.5: the masks' tight boxes)."""

from __future__ import annotations

import math

import torch

from fastinst.modeling.postprocessing import instance_inference, mask_boxes


def _logits() -> tuple[torch.Tensor, torch.Tensor]:
    """One object: a confident 2 x 2-cell block with a faint (p = 0.4) one-cell-wide bar to the right."""
    masks = torch.full((2, 8, 8), -6.0)  # (Q, H8, W8)
    masks[0, 2:4, 2:4] = 6.0
    masks[0, 3, 4:8] = math.log(0.4 / 0.6)  # logit of 0.4
    masks[1, 5:7, 1:3] = 6.0
    cls = torch.tensor([[4.0, -4.0], [0.0, 0.0]])  # (Q, K+1): the barred object ranks first
    return cls, masks


def test_default_boxes_are_the_tight_boxes_of_the_masks() -> None:
    cls, masks = _logits()
    default = instance_inference(cls, masks, (64, 64), (64, 64), (64, 64), topk=2)
    same = instance_inference(cls, masks, (64, 64), (64, 64), (64, 64), topk=2, box_threshold=0.5)
    assert torch.equal(default.pred_boxes.tensor, mask_boxes(default.pred_masks))
    assert torch.equal(same.pred_boxes.tensor, default.pred_boxes.tensor)


def test_a_lower_box_threshold_keeps_the_faint_bar_and_changes_nothing_else() -> None:
    cls, masks = _logits()
    default = instance_inference(cls, masks, (64, 64), (64, 64), (64, 64), topk=2)
    low = instance_inference(cls, masks, (64, 64), (64, 64), (64, 64), topk=2, box_threshold=0.3)
    assert torch.equal(low.pred_masks, default.pred_masks)
    assert torch.equal(low.scores, default.scores)
    tight, wide = default.pred_boxes.tensor[0], low.pred_boxes.tensor[0]
    assert tight[2] <= 36  # the bar (p = 0.4) is not in the mask: the box ends at the block
    assert wide[2] >= 56  # with t = 0.3 it reaches the bar's end (cells 4-7: x up to 64)
    assert torch.equal(wide[[0, 1, 3]] <= tight[[0, 1, 3]] + 1, torch.tensor([True, True, True]))
    # the object without a faint part keeps (nearly) its box: the blur outside the 0.5 edge is < 1 cell
    assert (low.pred_boxes.tensor[1] - default.pred_boxes.tensor[1]).abs().max() <= 4
