"""Instance post-processing (SPEC §6): top-k (query, class) pairs, masks at the original size, scores, boxes.

Shape shorthand: Q queries, K classes (+1 no-object), k kept instances, u <= k distinct queries among them,
H8 x W8 mask logits of the padded input (Hp x Wp = 8 H8 x 8 W8), h x w the image before padding,
height x width the requested output size.

The official code resizes all Q mask logits to the padded size, crops and resizes them again to the output size,
and only then picks the top-k pairs. Resizing is per mask, so `instance_inference` picks the pairs first and
resizes, thresholds and measures only the u distinct masks it keeps (a few at a time, in the CPU cache), skips
the second resize when it is the identity (same size: bilinear weights 1 and 0), and gathers the k binary masks
once, already in score order. With a score threshold (the predictor's), pairs whose class probability is below
it are dropped before any mask is resized: the final score is the class probability times a mask score below 1,
so they could not pass; memory then follows the instances kept, not the image size. A query whose mask
logits are all below `fastinst.export.postprocess.empty_logit_bound` (an empty mask: an untrained model's
queries, or a trained model's unused ones) is not resized at all; its zeros are what the full computation
gives. Masks are returned as bool.
The numbers are bit-identical to `instance_inference_reference` (tests/modeling/test_model.py), with a fraction
of the work.
"""

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
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
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    out_size,
    skip_identity: bool = False,
) -> Tensor:
    """(k, H8, W8) logits -> (k, height, width): to the padded size, crop to the image, resize to the output.

    Two bilinear steps (align_corners=False), exactly as detectron2's `sem_seg_postprocess` after the official
    upsampling to the padded size. With `skip_identity`, the second step is skipped when the crop already has
    the output size: a same-size bilinear resize returns its input unchanged, so the result is the same.
    """
    x = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)
    x = x[:, :, : image_size[0], : image_size[1]]  # (1, k, h, w)
    if not (skip_identity and tuple(x.shape[-2:]) == tuple(out_size)):
        x = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
    return x[0]  # (k, height, width)


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight (x0, y0, x1, y1) boxes of bool masks (n, H, W) -> float32 (n, 4); empty masks give zeros.

    The same boxes as detectron2's `BitMasks.get_bounding_boxes`, without its per-mask Python loop.
    """
    n, h, w = masks.shape
    # amax over bytes is much faster than any() over bools (the dtype view does not trace: FLOP counting)
    as_bytes = masks if torch.jit.is_tracing() else masks.view(torch.uint8)
    cols = as_bytes.amax(dim=1) > 0  # (n, W)
    rows = as_bytes.amax(dim=2) > 0  # (n, H)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    x0 = torch.where(cols, xs, w).amin(dim=1)
    x1 = torch.where(cols, xs + 1, 0).amax(dim=1)
    y0 = torch.where(rows, ys, h).amin(dim=1)
    y1 = torch.where(rows, ys + 1, 0).amax(dim=1)
    nonempty = cols.any(dim=1) & rows.any(dim=1)  # (n,)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()  # (n, 4)
    return boxes * nonempty[:, None]


def _row_sums(x: Tensor, rows_needed: int) -> Tensor:
    """Per-row sums of (n, L), computed over at least `rows_needed` rows.

    torch splits a single-output sum across threads, which changes its rounding; summing over as many rows as
    the reference does (more than one whenever it has more than one) keeps the results bit-identical.
    """
    if x.shape[0] == 1 and rows_needed > 1:
        return torch.cat([x, x]).sum(1)[:1]
    return x.sum(1)


# Masks x height x width per chunk: most of the float work stays in the CPU cache. Smaller chunks are a little
# faster on an idle CPU, but each op is a parallel region, and on a loaded machine every region can wait for
# a descheduled thread; 4M pixels (9 masks of 576x768) balances the two.
CHUNK_PIXELS = 1 << 22


def instance_inference(
    cls_logits: Tensor,
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    topk: int = 100,
    score_threshold: float = 0.0,
    box_threshold: float = 0.5,
    largest_component: bool = False,
) -> Instances:
    """Instances of one image from the last decoder layer.

    cls_logits (Q, K+1), mask_logits (Q, H8, W8). Returns `Instances(out_size)` with pred_masks (k, height, width)
    bool, scores = class probability x mean mask probability inside the mask, pred_classes (int64) and
    pred_boxes (the tight box of each mask; empty masks give zero boxes), sorted by score.

    On the CPU the u distinct masks are resized, thresholded and measured a few at a time (about CHUNK_PIXELS),
    so the float intermediates mostly stay in the cache; only the bool masks are kept. On a GPU, all at once.
    Every step is per mask, so the results do not depend on the chunking.

    `score_threshold` > 0 drops, before their masks are resized, the pairs whose class probability is below it:
    their final score (class probability x mask score, the mask score < 1) could not reach it. Every pair that
    can reach it is kept with the same mask, box and score as with 0 (the default: all top-k pairs, for
    evaluation); the caller still filters the final scores.

    `box_threshold` != 0.5 takes each box around the mask probability > box_threshold instead of the mask's
    own pixels (> 0.5; masks and scores do not change). A stride-8 map blurs thin extremities (bars, tips) below
    0.5; they hold little area but set the extent: tools/mask_map_bound.py and docs/training.md ("Input size").

    `largest_component` (MODEL.FASTINST.TEST.LARGEST_COMPONENT; not official) keeps only the largest 8-connected
    component of each mask, before its score and box are computed; the box is then the one
    `fastinst.export.postprocess.keep_largest_component` gives (box_threshold applies to the region joined to
    that component). It runs on the CPU with OpenCV (masks on a GPU are copied there and back).
    """
    scores, queries, labels = topk_pairs(cls_logits, topk)
    rows_needed = len(
        queries
    )  # the row count of the sums without a threshold (bit-identical scores)
    if score_threshold > 0:
        keep = scores >= score_threshold  # (k,) -> k' <= k pairs that can pass
        scores, queries, labels = scores[keep], queries[keep], labels[keep]
    # imported here: fastinst.export imports this module (one implementation for both post-processings)
    from fastinst.export.postprocess import empty_logit_bound

    unique, inverse = torch.unique(queries, return_inverse=True)  # (u,), (k,)
    logits = mask_logits[unique]  # (u, H8, W8)
    # A query whose logits are all below the bound has an empty mask and box at any size: only the others
    # ("live", put first; the order of the distinct queries does not matter) are resized and measured
    live = (logits.flatten(1) > empty_logit_bound(box_threshold)).any(1)  # (u,)
    order = torch.argsort((~live).to(torch.uint8), stable=True)  # live queries first
    logits, inverse = logits[order], torch.argsort(order)[inverse]
    num_live = int(live.sum())
    u, (height, width) = len(unique), out_size
    binary = torch.empty((u, height, width), dtype=torch.bool, device=logits.device)
    binary[num_live:] = False
    inside = torch.zeros(u, device=logits.device)  # sum of probabilities inside each mask
    count = torch.zeros(u, device=logits.device)  # mask areas
    boxes = torch.zeros((u, 4), device=logits.device)  # an empty mask's box: zeros
    if logits.device.type == "cpu":
        step = max(2, CHUNK_PIXELS // max(height * width, 1))
    else:  # no cache to fit on a GPU, and each chunk costs ~10 kernel launches: one chunk (3 ms less on an H200)
        step = max(num_live, 1)
    for start in range(0, num_live, step):
        end = min(start + step, num_live)
        start = max(0, min(start, end - 2))  # >= 2 rows where possible, for bit-identical sums
        probs = resize_mask_logits(
            logits[start:end], padded_size, image_size, out_size, skip_identity=True
        ).sigmoid_()  # (c, height, width)
        chunk = torch.gt(probs, 0.5, out=binary[start:end])  # (c, height, width)
        if largest_component:
            boxes[start:end] = _keep_largest_components(chunk, probs, box_threshold)
        else:
            boxes[start:end] = mask_boxes(chunk if box_threshold == 0.5 else probs > box_threshold)
        as_bytes = chunk.view(torch.uint8) if not torch.jit.is_tracing() else chunk.int()
        count[start:end] = as_bytes.flatten(1).sum(1, dtype=torch.int32).float()  # exact
        if largest_component:
            probs = probs.mul_(chunk)
        else:
            probs = F.threshold_(probs, 0.5, 0.0)  # = probs * mask, value for value
        inside[start:end] = _row_sums(probs.flatten(1), rows_needed)

    final = scores * (inside / (count + 1e-6))[inverse]  # (k,)
    order = torch.argsort(final, descending=True, stable=True)
    result = Instances(tuple(out_size))
    result.pred_masks = binary[inverse[order]]  # (k, height, width) bool, one gather in score order
    result.pred_boxes = Boxes(boxes[inverse[order]])
    result.scores = final[order]
    result.pred_classes = labels[order]
    return result


def _keep_largest_components(masks: Tensor, probs: Tensor, box_threshold: float) -> Tensor:
    """`keep_largest_component` on each of (c, height, width) bool masks, in place; returns (c, 4) boxes."""
    # imported here: fastinst.export imports this module (one numpy implementation for both post-processings)
    from fastinst.export.postprocess import keep_largest_component

    on_cpu = masks.device.type == "cpu"
    host = masks.numpy() if on_cpu else masks.cpu().numpy()
    host_probs = None if box_threshold == 0.5 else probs.detach().cpu().numpy()
    boxes = [
        keep_largest_component(
            host[i], None if host_probs is None else host_probs[i], box_threshold
        )
        for i in range(len(host))
    ]
    if not on_cpu:
        masks.copy_(torch.from_numpy(host))
    return torch.from_numpy(np.stack(boxes)).reshape(-1, 4).to(masks.device)


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
    """The official order of work (resize all Q masks twice, then pick pairs), kept to measure the saving.

    Same outputs as `instance_inference` (masks as bool), except that boxes are zeros as in the official code.
    """
    all_logits = resize_mask_logits(mask_logits, padded_size, image_size, out_size)  # (Q, h, w)
    scores, queries, labels = topk_pairs(cls_logits, topk)
    probs = all_logits[queries].sigmoid()
    masks = (probs > 0.5).float()
    mask_scores = (probs * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    boxes = Boxes(torch.zeros(len(scores), 4, device=masks.device))
    return _sorted_instances(out_size, masks.bool(), boxes, scores * mask_scores, labels)
