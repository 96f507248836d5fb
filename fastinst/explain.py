"""What FastInst looked at: the instance-activation map and the Q query locations it chose (SPEC §3.2).

FastInst does not start from learnt query embeddings. Its query-proposal head predicts, at every location of the
stride-16 feature map, a probability for each class (+ background); the Q locations that score best (highest
foreground probability, local maxima first: `local_maximum_score`) become the object queries, and every predicted
instance comes from one of them. `explain_image` runs the model once and returns that map, mapped back onto the
image, the chosen locations, and for every predicted instance the query it came from; `draw_explanation` draws it.

    explanation = predictor.explain("photo.jpg")   # FastInstPredictor.explain calls explain_image
    explanation.activation.shape                    # (H16, W16) = (Hp / 16, Wp / 16) of the padded input
    explanation.activation_image.shape              # (H, W) of the photo
    explanation.query_points                        # (Q, 2) (x, y) pixels of the photo, in decoder order
    explanation.instance_queries                    # (k,) which of those Q queries each instance came from

Shape shorthand: K classes (+1 background), Q object queries, Hp x Wp the padded network input, h x w the resized
image inside it (top-left), H16 x W16 = Hp/16 x Wp/16 the proposal map, H x W the original image, k instances.

Nothing here changes the model: a forward hook on the decoder reads its outputs (`proposal_cls_logits`,
`topk_indices`, `pred_logits`, `pred_masks`) during the ordinary forward pass, so the instances are exactly the
predictor's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from detectron2.structures import Instances
from torch import nn

from fastinst.modeling.postprocessing import resize_mask_logits, topk_pairs

__all__ = ["Explanation", "draw_explanation", "explain_image", "instance_query_indices"]


@dataclass
class Explanation:
    """The proposal head's view of one image (see the module docstring for the shape letters).

    Attributes:
        probs: (K+1, H16, W16) float32 softmax class probabilities on the stride-16 grid of the padded input
            (last channel: background).
        activation: (H16, W16) float32 in [0, 1], the best foreground class probability per location (the
            instance-activation map the queries are picked from).
        activation_classes: (H16, W16) int64, that best foreground class.
        activation_image: (H, W) float32 in [0, 1], `activation` mapped back to the original image: each cell
            covers its stride x stride block of the padded input, the padding is cropped, the rest is resized
            (nearest) to H x W. Cells that lie wholly in the padding do not appear.
        query_indices: (Q,) int64 flat indices (row * W16 + col) of the chosen locations, in decoder order.
        query_cells: (Q, 2) int64 (row, col) on the stride-16 grid.
        query_points: (Q, 2) float32 (x, y) centres of those cells in original-image pixels (may lie outside the
            image when a chosen cell is in the padding).
        instances: the predicted `Instances` (as `FastInstPredictor.__call__` returns them: sorted by score,
            filtered by `score_threshold`).
        instance_queries: (k,) int64 in [0, Q): the query each instance came from (an index into the Q arrays).
        padded_size: (Hp, Wp); image_size: (h, w) of the resized image inside it; stride: (Hp/H16, Wp/W16).
        seconds: wall time of the prediction: resizing, model and post-processing (what `FastInstPredictor.__call__`
            does), without the query matching and the drawing.
    """

    probs: np.ndarray
    activation: np.ndarray
    activation_classes: np.ndarray
    activation_image: np.ndarray
    query_indices: np.ndarray
    query_cells: np.ndarray
    query_points: np.ndarray
    instances: Instances
    instance_queries: np.ndarray
    padded_size: tuple[int, int]
    image_size: tuple[int, int]
    stride: tuple[float, float]
    seconds: float


def _find_decoder(model: nn.Module) -> nn.Module:
    """The module that owns the query proposal (FastInstDecoder); its forward returns the outputs dict."""
    for module in model.modules():
        if hasattr(module, "query_proposal") and isinstance(module.query_proposal, nn.Module):
            return module
    raise ValueError(
        "This model has no FastInst decoder with a `query_proposal` module to explain."
    )


def instance_query_indices(
    instances: Instances,
    cls_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    topk: int,
) -> np.ndarray:
    """The query each predicted instance came from.

    Post-processing (`instance_inference`) turns the top-k (query, class) pairs of `cls_logits` (Q, K+1) into
    instances, re-scored by their mask logits (Q, H8, W8) and re-sorted, and keeps no query index. This repeats the
    scoring of the pairs and matches each instance to the unused pair of the same class with the closest final
    score. Returns (k,) int64 in [0, Q).
    """
    scores, queries, labels = topk_pairs(cls_logits.float(), topk)
    unique, inverse = torch.unique(queries, return_inverse=True)
    out_size = tuple(instances.image_size)
    probs = resize_mask_logits(mask_logits[unique].float(), padded_size, image_size, out_size)
    probs = probs.sigmoid()  # (u, H, W)
    binary = probs > 0.5
    mask_score = (probs * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)  # (u,)
    final = (scores * mask_score[inverse]).numpy()  # (k,)
    labels, queries = labels.numpy(), queries.numpy()
    used = np.zeros(len(final), dtype=bool)
    result = np.empty(len(instances), dtype=np.int64)
    for i, (score, label) in enumerate(
        zip(instances.scores.tolist(), instances.pred_classes.tolist())
    ):
        candidates = np.flatnonzero((labels == label) & ~used)
        if len(candidates) == 0:
            raise RuntimeError(f"Instance {i} (class {label}) matches no (query, class) pair.")
        best = candidates[np.argmin(np.abs(final[candidates] - score))]
        used[best] = True
        result[i] = queries[best]
    return result


def activation_to_image(
    activation: np.ndarray,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    out_size: tuple[int, int],
) -> np.ndarray:
    """(H16, W16) map -> (H, W): blocks of the padded input (nearest), crop the padding, resize (nearest)."""
    hp, wp = padded_size
    h, w = image_size
    blocks = cv2.resize(activation, (wp, hp), interpolation=cv2.INTER_NEAREST)  # (Hp, Wp)
    crop = blocks[:h, :w]  # (h, w)
    if (h, w) == tuple(out_size):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (out_size[1], out_size[0]), interpolation=cv2.INTER_NEAREST)


def explain_image(predictor: Any, image: Any, format: str = "BGR") -> Explanation:
    """Run a `FastInstPredictor` (PyTorch model) on one image and read the query proposal.

    `image` is anything `predictor(image, format)` takes. Raises ValueError for a model the hook cannot read
    (an ONNX graph: export keeps only the instances).
    """
    model = predictor.model
    if not isinstance(model, nn.Module):
        raise ValueError(
            "explain needs the PyTorch model (a .pth checkpoint): an exported ONNX graph does not expose "
            "the query proposal."
        )
    decoder = _find_decoder(model)
    start = time.perf_counter()
    inputs = predictor.preprocess(image, format)
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        for key in ("proposal_cls_logits", "topk_indices", "pred_logits", "pred_masks"):
            captured[key] = output[key].detach().float().cpu()

    handle = decoder.register_forward_hook(hook)
    try:
        all_instances = predictor._forward([inputs])[0]  # unfiltered, sorted by score
        seconds = time.perf_counter() - start
    finally:
        handle.remove()
    if not captured:
        raise ValueError(
            "The decoder did not run (is the model compiled whole?): nothing to explain."
        )

    logits = captured["proposal_cls_logits"][0]  # (K+1, H16, W16)
    h16, w16 = logits.shape[-2:]
    hp, wp = (
        8 * s for s in captured["pred_masks"].shape[-2:]
    )  # the stride-8 masks cover the padded input
    image_size = tuple(inputs["image"].shape[-2:])  # (h, w) resized, before padding
    out_size = (inputs["height"], inputs["width"])
    probs = logits.softmax(0).numpy()  # (K+1, H16, W16)
    activation = probs[:-1].max(0)  # (H16, W16)
    classes = probs[:-1].argmax(0)

    indices = captured["topk_indices"][0].long().numpy()  # (Q,)
    cells = np.stack([indices // w16, indices % w16], axis=1)  # (Q, 2) (row, col)
    stride = (hp / h16, wp / w16)
    scale_x, scale_y = out_size[1] / image_size[1], out_size[0] / image_size[0]
    points = np.stack(
        [(cells[:, 1] + 0.5) * stride[1] * scale_x, (cells[:, 0] + 0.5) * stride[0] * scale_y],
        axis=1,
    ).astype(np.float32)  # (Q, 2) (x, y)

    keep = all_instances.scores >= predictor.score_threshold
    instances = all_instances[keep]
    queries = instance_query_indices(
        all_instances,
        captured["pred_logits"][0],
        captured["pred_masks"][0],
        (hp, wp),
        image_size,
        predictor.cfg.TEST.DETECTIONS_PER_IMAGE,
    )[keep.numpy()]
    return Explanation(
        probs=probs,
        activation=activation,
        activation_classes=classes,
        activation_image=activation_to_image(activation, (hp, wp), image_size, out_size),
        query_indices=indices,
        query_cells=cells,
        query_points=points,
        instances=instances,
        instance_queries=queries,
        padded_size=(hp, wp),
        image_size=image_size,
        stride=stride,
        seconds=seconds,
    )


def draw_explanation(
    rgb: np.ndarray,
    explanation: Explanation,
    highlight: int | None = None,
    alpha: float = 0.55,
    scale: float = 1.0,
    kept: Sequence[int] | None = None,
) -> np.ndarray:
    """The activation map over the image (JET colours: blue low, red high) with the Q query locations marked.

    Query locations are white rings; the queries that produced one of the `kept` instances (indices into
    `explanation.instances`; default all of them) are filled. `highlight`, an instance index, outlines that
    instance's mask and rings its query in magenta with a line to the instance's box centre. `scale` > 1 draws on
    an image that many times larger (for small images on a screen). Returns (round(H * scale), round(W * scale),
    3) uint8 RGB.
    """
    height, width = rgb.shape[:2]
    size = (round(width * scale), round(height * scale))  # cv2 order (w, h)
    activation = explanation.activation_image
    if size != (width, height):
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
        activation = cv2.resize(activation, size, interpolation=cv2.INTER_NEAREST)
    heat = cv2.applyColorMap(np.clip(activation * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[
        :, :, ::-1
    ]  # (H, W, 3) RGB
    out = (rgb.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)
    out = np.ascontiguousarray(out)
    cell = (
        min(explanation.stride) * scale * width / explanation.image_size[1]
    )  # a cell in output pixels
    radius = max(3, round(0.3 * cell))
    points = explanation.query_points * scale  # (Q, 2)
    queries = explanation.instance_queries
    used = set((queries if kept is None else queries[np.asarray(kept, dtype=np.int64)]).tolist())
    for q, (x, y) in enumerate(points.tolist()):
        centre = (round(x), round(y))
        if q in used:
            cv2.circle(out, centre, radius, (255, 255, 255), cv2.FILLED, cv2.LINE_AA)
        cv2.circle(out, centre, radius, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.circle(out, centre, radius, (255, 255, 255), 1, cv2.LINE_AA)
    if highlight is not None and 0 <= highlight < len(explanation.instances):
        magenta = (255, 0, 255)
        mask = explanation.instances.pred_masks[highlight].numpy().astype(np.uint8)
        if size != (width, height):
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, magenta, 2, cv2.LINE_AA)
        x, y = points[int(explanation.instance_queries[highlight])].tolist()
        x0, y0, x1, y1 = (
            v * scale for v in explanation.instances.pred_boxes.tensor[highlight].tolist()
        )
        cv2.line(
            out, (round(x), round(y)), (round((x0 + x1) / 2), round((y0 + y1) / 2)), magenta, 1
        )
        cv2.circle(out, (round(x), round(y)), radius + 3, magenta, 3, cv2.LINE_AA)
    return out
