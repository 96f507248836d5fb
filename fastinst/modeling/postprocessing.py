"""Instance post-processing (SPEC §6): top-k (query, class) pairs, masks at the original size, scores, boxes.

Shape shorthand: Q queries, K classes (+1 no-object), k kept instances, H8 x W8 mask logits of the padded input
(Hp x Wp = 8 H8 x 8 W8), h x w the image before padding, height x width the requested output size.

The official code resizes all Q mask logits to the padded size, crops and resizes them again to the output size,
and only then picks the top-k pairs. Resizing is per mask, so `instance_inference` picks the pairs first and
resizes only the masks it keeps: the numbers are the same, with a fraction of the work.
"""

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Boxes, Instances
from torch import Tensor


def topk_pairs(cls_logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k best (query, class) pairs by softmax probability, no-object excluded.

    cls_logits (Q, K+1) -> scores (k,), query indices (k,), class labels (k,), sorted by score (descending).
    """
    probs = cls_logits.softmax(-1)[:, :-1]  # (Q, K)
    num_classes = probs.shape[1]
    scores, flat = probs.flatten().topk(min(k, probs.numel()), sorted=True)  # (k,)
    return scores, flat // num_classes, flat % num_classes


def resize_mask_logits(
    mask_logits: Tensor, padded_size: tuple[int, int], image_size: tuple[int, int], out_size
) -> Tensor:
    """(k, H8, W8) logits -> (k, height, width): to the padded size, crop to the image, resize to the output.

    Two bilinear steps (align_corners=False), exactly as detectron2's `sem_seg_postprocess` after the official
    upsampling to the padded size.
    """
    x = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)
    x = x[:, :, : image_size[0], : image_size[1]]  # (1, k, h, w)
    x = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
    return x[0]  # (k, height, width)


def instance_inference(
    cls_logits: Tensor,
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    topk: int = 100,
) -> Instances:
    """Instances of one image from the last decoder layer.

    cls_logits (Q, K+1), mask_logits (Q, H8, W8). Returns `Instances(out_size)` with pred_masks (k, height, width)
    float 0/1, scores = class probability x mean mask probability inside the mask, pred_classes (int64) and
    pred_boxes (the tight box of each mask; empty masks give zero boxes), sorted by score.
    """
    scores, queries, labels = topk_pairs(cls_logits, topk)
    unique, inverse = torch.unique(queries, return_inverse=True)
    logits = resize_mask_logits(mask_logits[unique], padded_size, image_size, out_size)[inverse]
    probs = logits.sigmoid()  # (k, height, width)
    masks = (probs > 0.5).float()
    mask_scores = (probs * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)  # (k,)

    boxes = BitMasks(masks > 0).get_bounding_boxes().to(masks.device)
    return _sorted_instances(out_size, masks, boxes, scores * mask_scores, labels)


def _sorted_instances(out_size, masks: Tensor, boxes: Boxes, scores: Tensor, labels: Tensor):
    """Instances sorted by final score, descending (the official order is undefined: unsorted top-k)."""
    order = torch.argsort(scores, descending=True, stable=True)
    result = Instances(tuple(out_size))
    result.pred_masks = masks[order]
    result.pred_boxes = boxes[order]
    result.scores = scores[order]
    result.pred_classes = labels[order]
    return result


def instance_inference_reference(
    cls_logits: Tensor,
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    topk: int = 100,
) -> Instances:
    """The official order of work (resize all Q masks, then pick pairs), kept to measure the saving.

    Same outputs as `instance_inference`, except that boxes are zeros as in the official code.
    """
    all_logits = resize_mask_logits(mask_logits, padded_size, image_size, out_size)  # (Q, h, w)
    scores, queries, labels = topk_pairs(cls_logits, topk)
    probs = all_logits[queries].sigmoid()
    masks = (probs > 0.5).float()
    mask_scores = (probs * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    boxes = Boxes(torch.zeros(len(scores), 4, device=masks.device))
    return _sorted_instances(out_size, masks, boxes, scores * mask_scores, labels)
