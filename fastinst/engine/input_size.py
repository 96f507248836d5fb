"""Input sizes that fit the dataset: `INPUT.AUTO_SIZE` (the custom-data recipe, configs/custom/).

The rule (`choose_input_size`), from the dataset's annotations (`fastinst.data.dataset_stats`):

1. Test size S (INPUT.MIN_SIZE_TEST, the short side): the median object, sqrt(mask area), should span
   INPUT.AUTO_SIZE.MIN_CELLS cells of the stride-8 mask map, i.e. MIN_CELLS * 8 px at the network's input:
   S = MIN_CELLS * 8 / (median object size / image short side), rounded up to a multiple of 32.
   It is capped by the median short side of the images (no upsampling beyond the photos' own resolution) and
   kept >= 160 px (the quickstart's scale, where shapes of 15-60% of the image side train well), or the image
   size when that is smaller. INPUT.MAX_SIZE_TEST lets the 95th-percentile aspect ratio keep the short side S.
2. Training: large-scale jitter (INPUT.DATASET_MAPPER_NAME "coco_instance_lsj"): each image is resized so that
   its long side is 0.8-1.0 x S x (median aspect ratio), the scale of the test images, and a square crop of
   INPUT.IMAGE_SIZE = min(INPUT.AUTO_SIZE.MAX_CROP, that long side) is taken from it. The crop keeps the cost
   of an iteration, and so the number of iterations a time budget affords, independent of S: objects get the
   resolution of the test images, an iteration sees part of an image.

Why: at 144-176 px a user's 500 px photos with 40 px objects showed the network 14 px objects (under two
stride-8 cells): small objects and thin parts vanished from the 22 px-a-side mask map (mask AP 43.7, box AP
14.4). docs/training.md ("Input size") has the measurements that chose MIN_CELLS and MAX_CROP.

A size the user sets always wins: the recipe writes 0 for each size key (detectron2's "no resize" value), and
only keys still at 0 are chosen. A user's INPUT.MIN_SIZE_TRAIN (non-zero) means full-image training at those
sizes (the "fastinst_instance" mapper) instead of crops. The chosen values become KEY VALUE overrides, so
every process gets them and OUTPUT_DIR/config.yaml records them; `--resume` takes them from that file.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from fastinst.data.dataset_stats import DatasetStats, coco_dataset_stats
from fastinst.engine.time_budget import as_overrides, saved_config_values

__all__ = ["AUTO_KEYS", "choose_input_size", "input_size_overrides", "user_set_sizes"]

logger = logging.getLogger(__name__)

MASK_STRIDE = 8  # the mask map's stride (the pixel decoder's finest output)
MIN_SIDE = 160  # smallest test short side the rule picks (the quickstart's scale)
JITTER = 0.8  # training scales are JITTER..1 x the test scale (quickstart: 144-176 px for 176)

# The keys the rule fills in; 0 (or (0,) for MIN_SIZE_TRAIN) means "not set by the user".
AUTO_KEYS = (
    "INPUT.MIN_SIZE_TRAIN",
    "INPUT.MAX_SIZE_TRAIN",
    "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST",
    "INPUT.IMAGE_SIZE",
    "INPUT.MIN_SCALE",
    "INPUT.MAX_SCALE",
    "INPUT.DATASET_MAPPER_NAME",
)


def _ceil(x: float, m: int = 32) -> int:
    return int(math.ceil(x / m - 1e-9) * m)


def _floor(x: float, m: int = 32) -> int:
    return max(m, int(math.floor(x / m + 1e-9) * m))


def _get(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def user_set_sizes(cfg: CfgNode) -> dict[str, object]:
    """The size keys of `cfg` that are not at the recipe's "choose for me" value 0, with their values."""
    out = {}
    for key in AUTO_KEYS[:-1]:
        value = _get(cfg, key)
        unset = (
            all(v == 0 for v in value) if isinstance(value, (list, tuple)) else float(value) == 0
        )
        if not unset:
            out[key] = value
    return out


def choose_input_size(
    stats: DatasetStats,
    *,
    min_cells: float = 3.0,
    max_crop: int = 256,
    user: dict[str, object] | None = None,
) -> tuple[dict[str, object], list[str]]:
    """The input sizes for a dataset (see the module docstring for the rule).

    Args:
        stats: the training set's sizes (pixels of the original images).
        min_cells: stride-8 cells the median object should span at the input (INPUT.AUTO_SIZE.MIN_CELLS).
        max_crop: largest training crop side in px (INPUT.AUTO_SIZE.MAX_CROP): the cost of an iteration.
        user: size keys the user set (`user_set_sizes`); they are kept and the others derived from them.

    Returns:
        ({KEY: value} for the keys to set, never a key of `user`; lines saying why, for the log).
    """
    user = dict(user or {})
    why = [
        f"{stats.num_images} images, median {stats.image_short:.0f} x {stats.image_long:.0f} px; "
        f"{stats.num_objects} objects, median size {stats.object_size:.1f} px "
        f"(sqrt(area); {100 * stats.object_rel:.1f}% of the image's short side)"
    ]
    if "INPUT.MIN_SIZE_TEST" in user:
        side = int(user["INPUT.MIN_SIZE_TEST"])
        why.append(f"test short side {side} px: set by you")
    elif "INPUT.MIN_SIZE_TRAIN" in user:
        side = int(max(user["INPUT.MIN_SIZE_TRAIN"]))
        why.append(f"test short side {side} px: the largest INPUT.MIN_SIZE_TRAIN you set")
    else:
        need = _ceil(min_cells * MASK_STRIDE / stats.object_rel)
        cap = _floor(stats.image_short) if stats.image_short >= 32 else int(stats.image_short)
        floor = min(MIN_SIDE, cap)
        side = min(max(need, floor), cap)
        reason = (
            f"the median object spans {min_cells:g} stride-{MASK_STRIDE} cells "
            f"({min_cells * MASK_STRIDE:g} px) at a short side of {need} px"
        )
        if need > cap:
            reason += f", capped by the images' median short side ({cap} px)"
        elif need < floor:
            reason += f", raised to the smallest size the rule uses ({floor} px)"
        why.append(f"test short side {side} px: {reason}")
    long_max = _ceil(side * max(stats.aspect_max, 1.0))
    chosen: dict[str, object] = {"INPUT.MIN_SIZE_TEST": side, "INPUT.MAX_SIZE_TEST": long_max}
    at_scale = side * stats.object_rel
    why.append(
        f"at that scale the median object is {at_scale:.0f} px "
        f"({at_scale / MASK_STRIDE:.1f} cells of the mask map; at 176 px it would be "
        f"{176 * stats.object_rel:.0f} px, {176 * stats.object_rel / MASK_STRIDE:.1f} cells)"
    )

    if "INPUT.MIN_SIZE_TRAIN" in user:
        # full images at the user's training sizes
        chosen["INPUT.DATASET_MAPPER_NAME"] = "fastinst_instance"
        top = int(max(user["INPUT.MIN_SIZE_TRAIN"]))
        chosen["INPUT.MAX_SIZE_TRAIN"] = _ceil(top * max(stats.aspect_max, 1.0))
        why.append(
            "training on whole images at the INPUT.MIN_SIZE_TRAIN you set "
            f"(max long side {chosen['INPUT.MAX_SIZE_TRAIN']})"
        )
    else:
        long_side = side * max(stats.aspect, 1.0)
        crop = int(user.get("INPUT.IMAGE_SIZE") or min(max_crop, _ceil(long_side)))
        hi = round(long_side / crop, 3)
        chosen.update(
            {
                "INPUT.DATASET_MAPPER_NAME": "coco_instance_lsj",
                "INPUT.IMAGE_SIZE": crop,
                "INPUT.MAX_SCALE": hi,
                "INPUT.MIN_SCALE": round(JITTER * hi, 3),
            }
        )
        why.append(
            f"training on {crop} x {crop} px crops of images resized to a long side of "
            f"{JITTER * long_side:.0f}-{long_side:.0f} px (scale {JITTER * hi:.3g}-{hi:.3g} of the crop): "
            f"the test scale, jittered; crops of at most {max_crop} px keep an iteration's cost fixed"
        )
    for key in user:
        chosen.pop(key, None)
    return chosen, why


def _saved_sizes(output_dir: str) -> dict[str, object] | None:
    """The size keys of a previous run's OUTPUT_DIR/config.yaml (None when there is none)."""
    out = saved_config_values(output_dir, AUTO_KEYS)
    return out if out.get("INPUT.MIN_SIZE_TEST") else None


def _dataset_json(names: Sequence[str]) -> str | None:
    for name in names:
        path = MetadataCatalog.get(name).get("json_file", None)
        if path and os.path.isfile(path):
            return path
    return None


def input_size_overrides(
    cfg: CfgNode, *, resume: bool = False, eval_only: bool = False
) -> list[str]:
    """KEY VALUE overrides with the input sizes INPUT.AUTO_SIZE chooses for `cfg`'s data; [] when it is off.

    Measures the first training dataset's json (the first test dataset's with `eval_only`). Keys the user set
    (non-zero) are never returned. With `resume`, the sizes of OUTPUT_DIR/config.yaml are reused when it has
    them. Prints what it chose and why.

    Raises:
        ValueError: INPUT.AUTO_SIZE is on but no dataset json can be measured, and some size is not set.
    """
    if not cfg.INPUT.AUTO_SIZE.ENABLED:
        return []
    user = user_set_sizes(cfg)
    if resume:
        saved = _saved_sizes(cfg.OUTPUT_DIR)
        if saved is not None:
            chosen = {k: v for k, v in saved.items() if k not in user}
            overrides = as_overrides(chosen)
            print(
                f"INPUT.AUTO_SIZE: resuming with the sizes of {cfg.OUTPUT_DIR}/config.yaml: "
                + " ".join(overrides),
                flush=True,
            )
            return overrides
    names = list(cfg.DATASETS.TEST if eval_only else cfg.DATASETS.TRAIN)
    json_file = _dataset_json(names)
    if json_file is None:
        raise ValueError(
            f"INPUT.AUTO_SIZE chooses the input size from the dataset's COCO json, but datasets {names} "
            "have no json_file to measure. Set INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST / IMAGE_SIZE / "
            "MIN_SCALE / MAX_SCALE, or INPUT.AUTO_SIZE.ENABLED False."
        )
    stats = coco_dataset_stats(json_file)
    chosen, why = choose_input_size(
        stats,
        min_cells=cfg.INPUT.AUTO_SIZE.MIN_CELLS,
        max_crop=cfg.INPUT.AUTO_SIZE.MAX_CROP,
        user=user,
    )
    overrides = as_overrides(chosen)
    lines = "\n  ".join(why)
    print(
        f"INPUT.AUTO_SIZE ({json_file}):\n  {lines}\n  -> " + " ".join(overrides),
        flush=True,
    )
    logger.info("INPUT.AUTO_SIZE chose %s", " ".join(overrides))
    return overrides
