"""A small, deterministic, embedded instance-segmentation dataset of coloured shapes.

It exists so that the whole pipeline (mapper -> model -> loss -> COCO evaluation) can be trained and tested on a
CPU in minutes, without downloading anything. Every image has 2-6 shapes from six classes (circle, square,
triangle, star, ring, cross) of random size (15-60% of the image side), position, rotation and colour, on a
gradient / smooth-noise / striped background with thin clutter, blur and pixel noise. Later shapes occlude
earlier ones; the annotation of each instance is its *visible* mask. Placement is rejection-sampled so that
every instance keeps at least half of its area visible, so no label refers to an invisible sliver.

Output layout (COCO format, segmentation as compressed RLE)::

    root/train/000001.png ...              root/val/000001.png ...
    root/annotations/instances_train.json  root/annotations/instances_val.json
    root/manifest.json                     (the generation parameters; written last)

Generation is idempotent: when `manifest.json` matches the requested parameters nothing is written. Each image
is drawn from its own RNG seeded by (seed, split, index), so the first N images do not depend on the count.

CLI::

    python -m fastinst.data.synthetic [--root DIR] [--num-train 300 --num-val 50 --seed 0]
        [--size S | --min-size 160 --max-size 224] [--force]
        [--preset photos] [--instances 10 20] [--object-size 0.05 0.12] [--thin-frac 0.35] [--one-class]

`--preset photos` draws a set that looks like users' photo datasets rather than the quickstart's: 480-544 px
images with 10-20 objects of 5-12% of the image side, a third of them with a long thin part, one category.

The default root is `$DETECTRON2_DATASETS/synthetic` (`datasets/synthetic`), where `synthetic_{train,val}` look.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_util

__all__ = [
    "SYNTHETIC_CLASSES",
    "DEFAULT_PARAMS",
    "generate_synthetic_dataset",
    "render_image",
    "read_manifest",
]

logger = logging.getLogger(__name__)

# Category i has COCO id i + 1.
SYNTHETIC_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
GENERATOR_VERSION = 1
DEFAULT_PARAMS: dict[str, Any] = {
    "num_train": 300,
    "num_val": 50,
    "image_size": (160, 224),
    "seed": 0,
}
# What each image holds (`ShapeOptions`); the defaults draw the quickstart data.
DEFAULT_SHAPES: dict[str, Any] = {
    "num_instances": (2, 6),  # shapes drawn per image (some may not fit)
    "object_size": (0.15, 0.6),  # shape extent relative to the image's short side
    "thin_frac": 0.0,  # fraction of shapes that get a long thin part (a 'handle')
    "one_class": False,  # one category "object" instead of the six shape names
}
# Named option sets for the CLI's --preset. "photos" looks like the small-object photo sets users train on:
# 512 px images with 10-20 objects of 5-12% of the image side (25-60 px) and thin parts on a third of them.
PRESETS: dict[str, dict[str, Any]] = {
    "quickstart": {"image_size": (160, 224), **DEFAULT_SHAPES},
    "photos": {
        "image_size": (480, 544),
        "num_instances": (10, 20),
        "object_size": (0.05, 0.12),
        "thin_frac": 0.35,
        "one_class": True,
    },
}
MANIFEST = "manifest.json"
_SPLIT_CODE = {"train": 0, "val": 1}

# Shape parameters.
_THIN_LENGTH = (1.5, 3.0)  # a thin part's length, in shape radii from the centre
_THIN_WIDTH = 0.12  # its width, as a fraction of the shape radius (at least 2 px)
_MIN_VISIBLE_FRAC = 0.5  # every instance keeps at least this fraction of its own area visible
_MIN_VISIBLE_PIXELS = 48
_PLACEMENT_TRIES = 25
_MIN_COLOUR_DIST = 70.0  # RGB distance between an object and the background under it


# --------------------------------------------------------------------------------------------------
# shapes: each returns a bool (H, W) mask
# --------------------------------------------------------------------------------------------------
def _rotated(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _poly_mask(points: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(hw, np.uint8)
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _shape_mask(
    cls: int, cx: float, cy: float, radius: float, rng: np.random.Generator, hw: tuple[int, int]
) -> np.ndarray:
    """Mask of shape class `cls` centred at (cx, cy) whose circumscribed radius is `radius`."""
    name = SYNTHETIC_CLASSES[cls]
    angle = rng.uniform(0, 2 * np.pi)
    centre = np.array([cx, cy])
    if name in ("circle", "ring"):
        yy, xx = np.ogrid[: hw[0], : hw[1]]
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        mask = d2 <= radius**2
        if name == "ring":
            mask &= d2 >= (radius * rng.uniform(0.45, 0.6)) ** 2
        return mask
    if name == "square":
        aspect = rng.uniform(0.8, 1.0)
        half = radius / np.sqrt(1 + aspect**2)
        pts = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]]) * half
    elif name == "triangle":
        t = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.15, 0.15, 3)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radius
    elif name == "star":
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.5)) * radius
        pts = np.stack([np.cos(t) * r, np.sin(t) * r], 1)
    elif name == "cross":
        a = radius / np.sqrt(1 + 0.35**2)  # arm half-length
        w = 0.35 * a  # arm half-width
        quarter = np.array([[-w, -a], [w, -a], [w, -w]])  # outline of one arm
        pts = np.concatenate([_rotated(quarter, k * np.pi / 2) for k in range(4)])
    else:  # pragma: no cover - guarded by SYNTHETIC_CLASSES
        raise ValueError(name)
    return _poly_mask(_rotated(pts, angle) + centre, hw)


# --------------------------------------------------------------------------------------------------
# appearance
# --------------------------------------------------------------------------------------------------
def _hsv_colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]):
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]])
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """Float32 (H, W, 3) RGB background: gradient, smooth noise or low-contrast stripes."""
    h, w = hw
    kind = rng.integers(3)
    c0 = _hsv_colour(rng, (0.0, 0.5), (0.2, 0.95))
    if kind == 0:  # linear gradient at a random angle
        c1 = _hsv_colour(rng, (0.0, 0.5), (0.2, 0.95))
        t = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        p = xx * np.cos(t) + yy * np.sin(t)
        p = (p - p.min()) / max(p.max() - p.min(), 1e-6)
        return c0 * (1 - p[..., None]) + c1 * p[..., None]
    if kind == 1:  # smooth colour noise
        g = int(rng.integers(3, 8))
        grid = c0 + rng.normal(0, 40, (g, g, 3)).astype(np.float32)
        return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    # stripes or checkerboard of two close colours
    c1 = np.clip(c0 + rng.normal(0, 25, 3), 0, 255).astype(np.float32)
    period = rng.uniform(8, 30)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    t = rng.uniform(0, np.pi)
    u = (xx * np.cos(t) + yy * np.sin(t)) // period
    if rng.random() < 0.5:
        u = u + (-xx * np.sin(t) + yy * np.cos(t)) // period
    return np.where((u % 2 == 0)[..., None], c0, c1)


def _clutter(img: np.ndarray, rng: np.random.Generator) -> None:
    """Thin lines and small dots, drawn on the background (in place)."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 7))):
        colour = tuple(float(v) for v in _hsv_colour(rng, (0.0, 1.0), (0.2, 1.0)))
        if rng.random() < 0.6:
            p0 = (int(rng.integers(w)), int(rng.integers(h)))
            p1 = (int(rng.integers(w)), int(rng.integers(h)))
            cv2.line(img, p0, p1, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
        else:
            c = (int(rng.integers(w)), int(rng.integers(h)))
            cv2.circle(img, c, int(rng.integers(1, 4)), colour, -1, cv2.LINE_AA)


def _contrasting_colour(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An object colour that stands out against the pixels just outside the shape's outline."""
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~mask
    around = img[ring]  # (N, 3)
    if len(around) == 0:
        return _hsv_colour(rng, (0.35, 1.0), (0.3, 1.0))
    best, best_score = None, -1.0
    for _ in range(12):
        colour = _hsv_colour(rng, (0.35, 1.0), (0.3, 1.0))
        # fraction of outline pixels that are clearly different from the colour
        score = float((np.linalg.norm(around - colour, axis=1) >= _MIN_COLOUR_DIST).mean())
        if score > best_score:
            best, best_score = colour, score
        if score >= 0.9:
            break
    return best


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Paint a shape with a linear shading across it (in place)."""
    ys, xs = np.nonzero(mask)
    t = rng.uniform(0, 2 * np.pi)
    p = xs * np.cos(t) + ys * np.sin(t)
    p = (p - p.min()) / max(p.max() - p.min(), 1e-6)
    shade = rng.uniform(0.75, 0.95) + rng.uniform(0.1, 0.3) * p
    img[ys, xs] = colour[None] * shade[:, None]


# --------------------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------------------
def _thin_part(
    cx: float, cy: float, radius: float, rng: np.random.Generator, hw: tuple[int, int]
) -> np.ndarray:
    """A straight thin bar from the shape's centre outwards (bool (H, W)): a handle, stem or leg.

    Its length is 1.5-3 radii and its width 12% of the radius (>= 2 px), so the part is narrower than one
    stride-8 cell until the image is shown to the network at several times its size / radius.
    """
    angle = rng.uniform(0, 2 * np.pi)
    length = radius * rng.uniform(*_THIN_LENGTH)
    end = (cx + length * np.cos(angle), cy + length * np.sin(angle))
    width = max(2, int(round(_THIN_WIDTH * radius)))
    mask = np.zeros(hw, np.uint8)
    p0 = (int(round(cx * 16)), int(round(cy * 16)))  # 4 fractional bits (shift=4)
    p1 = (int(round(end[0] * 16)), int(round(end[1] * 16)))
    cv2.line(mask, p0, p1, 1, width, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def render_image(
    rng: np.random.Generator,
    image_size: tuple[int, int],
    num_instances: tuple[int, int] = DEFAULT_SHAPES["num_instances"],
    object_size: tuple[float, float] = DEFAULT_SHAPES["object_size"],
    thin_frac: float = DEFAULT_SHAPES["thin_frac"],
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image.

    Args:
        rng: the image's random generator.
        image_size: (lo, hi) range of each side in pixels (lo == hi for a fixed square size).
        num_instances: (lo, hi) number of shapes to draw (inclusive); a shape that finds no place where it and
            the earlier shapes keep half their area visible is skipped.
        object_size: (lo, hi) extent of a shape (circumscribed diameter) as a fraction of the short side.
        thin_frac: probability that a shape gets a thin bar attached (`_thin_part`), which becomes part of
            its mask. 0 draws no extra random numbers, so the default images stay the same.

    Returns:
        image: uint8 (H, W, 3) RGB.
        instances: list of (class index in SYNTHETIC_CLASSES, visible bool mask (H, W)), in drawing order.
    """
    lo, hi = image_size
    h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
    img = _background(rng, (h, w)).astype(np.float32)
    _clutter(img, rng)

    side = min(h, w)
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(num_instances[0], num_instances[1] + 1))):
        cls = int(rng.integers(len(SYNTHETIC_CLASSES)))
        frac = rng.uniform(*object_size)
        thin = thin_frac > 0 and rng.random() < thin_frac
        for attempt in range(_PLACEMENT_TRIES):
            radius = 0.5 * frac * side * (0.9 ** (attempt // 5))  # shrink when it does not fit
            m = 0.6 * radius  # the centre keeps most of the shape inside the image
            cx, cy = rng.uniform(m, w - m), rng.uniform(m, h - m)
            mask = _shape_mask(cls, cx, cy, radius, rng, (h, w))
            if thin:
                mask |= _thin_part(cx, cy, radius, rng, (h, w))
            if mask.sum() < _MIN_VISIBLE_PIXELS:
                continue
            new_vis = [v & ~mask for v in visible]
            if all(
                nv.sum() >= max(_MIN_VISIBLE_FRAC * f.sum(), _MIN_VISIBLE_PIXELS)
                for nv, f in zip(new_vis, full)
            ):
                break
        else:
            continue  # no placement found: skip this object
        _paint(img, mask, _contrasting_colour(img, mask, rng), rng)
        visible = [*new_vis, mask]
        full.append(mask)
        classes.append(cls)

    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img = img + rng.normal(0, rng.uniform(2, 7), img.shape).astype(np.float32)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    instances = [(c, v) for c, v in zip(classes, visible) if v.sum() >= _MIN_VISIBLE_PIXELS]
    return img, instances


def _encode(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


# --------------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------------
def _normalise_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        lo = hi = int(image_size)
    else:
        lo, hi = (int(v) for v in image_size)
    if not 32 <= lo <= hi:
        raise ValueError(f"image_size must be an int >= 32 or a (lo, hi) range, got {image_size!r}")
    return lo, hi


def _normalise_shapes(shapes: dict[str, Any] | None) -> dict[str, Any]:
    """`DEFAULT_SHAPES` updated with `shapes`, checked; raises ValueError naming a bad or unknown option."""
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - set(DEFAULT_SHAPES))
    if unknown:
        raise ValueError(f"unknown shape options {unknown}; known: {sorted(DEFAULT_SHAPES)}")
    out = {**DEFAULT_SHAPES, **shapes}
    lo, hi = (int(v) for v in out["num_instances"])
    if not 1 <= lo <= hi:
        raise ValueError(f"num_instances must be a (lo, hi) range with 1 <= lo <= hi, got {lo, hi}")
    s_lo, s_hi = (float(v) for v in out["object_size"])
    if not 0 < s_lo <= s_hi <= 1:
        raise ValueError(
            f"object_size must be a (lo, hi) range of fractions with 0 < lo <= hi <= 1, got {s_lo, s_hi}"
        )
    if not 0 <= float(out["thin_frac"]) <= 1:
        raise ValueError(f"thin_frac must be in [0, 1], got {out['thin_frac']}")
    return {
        "num_instances": (lo, hi),
        "object_size": (s_lo, s_hi),
        "thin_frac": float(out["thin_frac"]),
        "one_class": bool(out["one_class"]),
    }


def _params(
    num_train: int,
    num_val: int,
    image_size: tuple[int, int],
    seed: int,
    shapes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    params = {
        "generator_version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": list(image_size),
        "seed": int(seed),
    }
    # Only options that differ from the defaults are recorded, so existing default datasets stay up to date.
    for key, value in _normalise_shapes(shapes).items():
        if value != DEFAULT_SHAPES[key]:
            params[key] = list(value) if isinstance(value, tuple) else value
    return params


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The parameters the dataset under `root` was generated with, or None if it is absent/incomplete."""
    path = os.path.join(root, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    for split in ("train", "val"):
        if not os.path.isfile(os.path.join(root, "annotations", f"instances_{split}.json")):
            return None
    return manifest


def _write_split(
    root: str, split: str, num: int, image_size: tuple[int, int], seed: int, shapes: dict[str, Any]
) -> int:
    os.makedirs(os.path.join(root, split))
    images, annotations = [], []
    one_class = shapes["one_class"]
    for idx in range(num):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], idx]))
        img, instances = render_image(
            rng, image_size, shapes["num_instances"], shapes["object_size"], shapes["thin_frac"]
        )
        image_id = idx + 1
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(os.path.join(root, split, file_name), img[:, :, ::-1])  # RGB -> BGR for cv2
        images.append(
            {"id": image_id, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]}
        )
        for cls, mask in instances:
            rle = _encode(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1 if one_class else cls + 1,
                    "segmentation": rle,
                    "area": float(mask_util.area(rle)),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {
            "description": f"FastInst synthetic shapes ({split})",
            "version": GENERATOR_VERSION,
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object", "supercategory": "shape"}]
        if one_class
        else [
            {"id": i + 1, "name": n, "supercategory": "shape"}
            for i, n in enumerate(SYNTHETIC_CLASSES)
        ],
    }
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(coco, f, separators=(",", ":"))
    return len(annotations)


def generate_synthetic_dataset(
    root: str | os.PathLike,
    num_train: int = DEFAULT_PARAMS["num_train"],
    num_val: int = DEFAULT_PARAMS["num_val"],
    image_size: int | Sequence[int] = DEFAULT_PARAMS["image_size"],
    seed: int = DEFAULT_PARAMS["seed"],
    force: bool = False,
    **shapes: Any,
) -> dict[str, Any]:
    """Write the synthetic dataset under `root` (skipped when it exists with the same parameters).

    Args:
        root: output folder (created). Only `train/`, `val/`, `annotations/` and `manifest.json` in it are
            touched; they are replaced when the parameters differ or `force` is set.
        num_train, num_val: number of images per split.
        image_size: an int (square images of that side) or a (lo, hi) range for each side independently.
        seed: base seed; image i of a split uses the seed sequence (seed, split, i).
        force: regenerate even when the manifest matches.
        **shapes: what each image holds (`DEFAULT_SHAPES` keys): `num_instances` (lo, hi) shapes per image,
            `object_size` (lo, hi) shape extent as a fraction of the short side, `thin_frac` share of shapes
            with a thin part, `one_class` (one category "object"). `PRESETS["photos"]` gives a set like
            users' small-object photos. Raises ValueError for an unknown or out-of-range option.

    Returns:
        The manifest: the parameters plus `num_annotations` per split and `generated` (False when skipped).
    """
    root = os.fspath(root)
    shape_options = _normalise_shapes(shapes)
    params = _params(num_train, num_val, _normalise_size(image_size), seed, shape_options)
    manifest = read_manifest(root)
    if not force and manifest is not None and manifest.get("params") == params:
        return {**manifest, "generated": False}

    start = time.perf_counter()
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(root))}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    num_annotations = {
        split: _write_split(
            tmp, split, params[f"num_{split}"], tuple(params["image_size"]), seed, shape_options
        )
        for split in ("train", "val")
    }
    manifest = {"params": params, "num_annotations": num_annotations}
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)

    # Swap the finished folders in; the manifest goes last so a partial dataset never looks complete.
    os.makedirs(root, exist_ok=True)
    for name in (MANIFEST, "annotations", "train", "val"):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    for name in ("train", "val", "annotations", MANIFEST):
        os.replace(os.path.join(tmp, name), os.path.join(root, name))
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "Generated the synthetic dataset in %s (%d+%d images) in %.1fs",
        root,
        num_train,
        num_val,
        time.perf_counter() - start,
    )
    return {**manifest, "generated": True}


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=os.path.join(
            os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "synthetic"
        ),
        help="output folder (default: $DETECTRON2_DATASETS/synthetic, i.e. datasets/synthetic)",
    )
    parser.add_argument("--num-train", type=int, default=DEFAULT_PARAMS["num_train"])
    parser.add_argument("--num-val", type=int, default=DEFAULT_PARAMS["num_val"])
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quickstart",
        help="image size and shape options to start from (the options below override them); 'photos': "
        "480-544 px images with 10-20 small objects (5-12%% of the side), thin parts, one class",
    )
    parser.add_argument("--size", type=int, default=None, help="fixed square image side")
    parser.add_argument("--min-size", type=int, default=None, help="smallest image side")
    parser.add_argument("--max-size", type=int, default=None, help="largest image side")
    parser.add_argument("--instances", type=int, nargs=2, metavar=("LO", "HI"), default=None)
    parser.add_argument(
        "--object-size",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="shape extent as a fraction of the image's short side",
    )
    parser.add_argument(
        "--thin-frac", type=float, default=None, help="share of shapes with a thin part"
    )
    parser.add_argument("--one-class", action="store_true", help="one category 'object'")
    parser.add_argument("--seed", type=int, default=DEFAULT_PARAMS["seed"])
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    lo, hi = preset["image_size"]
    size = (
        args.size
        if args.size is not None
        else (args.min_size if args.min_size is not None else lo, args.max_size or hi)
    )
    shapes = {k: preset.get(k, v) for k, v in DEFAULT_SHAPES.items()}
    for key, value in (
        ("num_instances", args.instances),
        ("object_size", args.object_size),
        ("thin_frac", args.thin_frac),
    ):
        if value is not None:
            shapes[key] = value
    shapes["one_class"] = shapes["one_class"] or args.one_class
    start = time.perf_counter()
    try:
        out = generate_synthetic_dataset(
            args.root, args.num_train, args.num_val, size, args.seed, force=args.force, **shapes
        )
    except ValueError as e:
        parser.error(str(e))
    verb = "generated" if out["generated"] else "up to date, nothing written"
    n = out["num_annotations"]
    print(
        f"{args.root}: {verb} ({args.num_train} train / {args.num_val} val images, "
        f"{n['train']} / {n['val']} instances, {time.perf_counter() - start:.1f}s)"
    )


if __name__ == "__main__":
    main()
