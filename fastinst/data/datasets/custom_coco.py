"""Register your own COCO-format instance-segmentation json, validated before any training starts.

    from fastinst.data.datasets import register_coco_json_dataset
    meta = register_coco_json_dataset("my_train", "data/ann/train.json", "data/images/train")
    # then: DATASETS.TRAIN ("my_train",)  MODEL.SEM_SEG_HEAD.NUM_CLASSES meta["num_classes"]

Every problem that would otherwise surface as a KeyError deep in the data loader, or in the COCO evaluator after
hours of training, raises `DatasetError` (a ValueError) naming the file, the problem and what to do.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = [
    "DatasetError",
    "check_dataset_files",
    "check_image_files",
    "check_num_classes",
    "register_coco_json_dataset",
    "validate_coco_json",
]

_IMAGE_KEYS = ("id", "file_name", "height", "width")
# segmentation: the model; area, iscrowd, bbox: pycocotools' COCOeval; id: detectron2's loader.
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")
_SHOW = 5  # how many offending entries a message lists


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and says what to do."""


def _fail(json_file: str, problem: str, fix: str) -> DatasetError:
    return DatasetError(f"Invalid COCO dataset '{json_file}': {problem}. {fix}")


def _listing(items: Iterable[Any], count: int) -> str:
    shown = ", ".join(repr(x) for x in list(items)[:_SHOW])
    return f"{shown}{', ...' if count > _SHOW else ''} ({count} in total)"


def _load_json(json_file: str) -> dict[str, Any]:
    if not os.path.isfile(json_file):
        raise DatasetError(
            f"COCO annotation file '{json_file}' does not exist (relative paths are resolved from "
            f"'{os.getcwd()}'). Check the json_file path."
        )
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise _fail(
            json_file,
            f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
            "Fix or regenerate the file.",
        ) from e
    except UnicodeDecodeError as e:
        raise _fail(json_file, "not UTF-8 text", "Is it really a json file?") from e
    if not isinstance(data, dict):
        raise _fail(
            json_file,
            f"the top level is a {type(data).__name__}, not an object",
            "A COCO file is an object with 'images', 'annotations' and 'categories' lists.",
        )
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)
    ]
    if missing:
        raise _fail(
            json_file,
            f"missing or non-list top-level field(s) {missing}",
            "A COCO instances file needs 'images', 'annotations' and 'categories' lists.",
        )
    return data


def _check_entries(json_file: str, entries: list[Any], kind: str, keys: Iterable[str]) -> None:
    keys = tuple(keys)
    bad = [
        (i, e)
        for i, e in enumerate(entries)
        if not isinstance(e, dict) or any(k not in e for k in keys)
    ]
    if bad:
        i, e = bad[0]
        lacking = [k for k in keys if k not in e] if isinstance(e, dict) else list(keys)
        raise _fail(
            json_file,
            f"{len(bad)} of {len(entries)} {kind} lack required fields; the first, {kind}[{i}], "
            f"lacks {lacking}",
            f"Every entry of '{kind}' needs {list(keys)}"
            + (
                " (area and bbox can be computed from the mask with pycocotools.mask.area/toBbox; "
                "iscrowd is 0 for ordinary instances)."
                if kind == "annotations"
                else "."
            ),
        )
    counts = Counter(e["id"] for e in entries)
    if len(counts) != len(entries):
        dup = sorted((i for i, n in counts.items() if n > 1), key=str)
        raise _fail(
            json_file, f"duplicate {kind} ids {_listing(dup, len(dup))}", "Ids must be unique."
        )


def _check_segmentations(json_file: str, annotations: list[dict], images: dict[Any, dict]) -> None:
    def problem(a: dict) -> str | None:
        s = a["segmentation"]
        if isinstance(s, list):
            if not s or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in s):
                return "polygons must be a non-empty list of [x0, y0, x1, y1, ...] with >= 3 points"
            return None
        if isinstance(s, dict):
            if "counts" not in s or "size" not in s:
                return "an RLE needs 'counts' and 'size'"
            img = images.get(a["image_id"])
            if img is not None and list(s["size"]) != [img["height"], img["width"]]:
                return f"RLE size {s['size']} differs from the image's [height, width]"
            return None
        return f"segmentation is a {type(s).__name__}, expected polygons (list) or RLE (dict)"

    for a in annotations:
        msg = problem(a)
        if msg is not None:
            raise _fail(json_file, f"annotation id {a['id']}: {msg}", "Fix its 'segmentation'.")


def validate_coco_json(
    json_file: str | os.PathLike, image_root: str | os.PathLike, *, check_files: bool = True
) -> dict[str, Any]:
    """Check a COCO instance-segmentation json (and its images) and summarise it.

    Args:
        json_file: path to the COCO json.
        image_root: folder that the images' `file_name`s are relative to.
        check_files: also check that every image file exists.

    Returns:
        dict with `thing_classes` (names sorted by category id), `num_classes`,
        `thing_dataset_id_to_contiguous_id`, `num_images`, `num_usable_images` (images with at least one
        non-crowd annotation) and `num_annotations`.

    Raises:
        DatasetError: when the file is missing, not JSON, lacks required fields, has duplicate ids, refers to
            unknown categories or images, has no usable image, or (check_files) images are missing.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    data = _load_json(json_file)
    cats, images, annos = data["categories"], data["images"], data["annotations"]

    if not cats:
        raise _fail(json_file, "'categories' is empty", "List every category as {'id', 'name'}.")
    _check_entries(json_file, cats, "categories", ("id", "name"))
    _check_entries(json_file, images, "images", _IMAGE_KEYS)
    _check_entries(json_file, annos, "annotations", _ANNOTATION_KEYS)

    cat_ids = {c["id"] for c in cats}
    unknown = [a for a in annos if a["category_id"] not in cat_ids]
    if unknown:
        bad_ids = sorted({a["category_id"] for a in unknown}, key=str)
        raise _fail(
            json_file,
            f"{len(unknown)} annotations use category ids that are not in 'categories': "
            f"{_listing(bad_ids, len(bad_ids))}; known ids are {sorted(cat_ids, key=str)}",
            "Add those categories or fix the annotations' category_id.",
        )
    image_by_id = {img["id"]: img for img in images}
    orphans = [a for a in annos if a["image_id"] not in image_by_id]
    if orphans:
        bad_ids = sorted({a["image_id"] for a in orphans}, key=str)
        raise _fail(
            json_file,
            f"{len(orphans)} annotations refer to image ids with no entry in 'images': "
            f"{_listing(bad_ids, len(bad_ids))}",
            "Add the images or remove those annotations.",
        )
    _check_segmentations(json_file, annos, image_by_id)

    usable = {a["image_id"] for a in annos if not a.get("iscrowd", 0)}
    if not usable:
        raise _fail(
            json_file,
            f"no usable images: none of its {len(images)} images has a (non-crowd) annotation",
            "Training needs annotated images; check that annotations were exported.",
        )

    if check_files:
        if not os.path.isdir(image_root):
            raise _fail(
                json_file,
                f"image folder '{image_root}' does not exist",
                "Pass the folder that the images' file_name entries are relative to as image_root.",
            )
        missing = [
            img["file_name"]
            for img in images
            if not os.path.isfile(os.path.join(image_root, img["file_name"]))
        ]
        if missing:
            raise _fail(
                json_file,
                f"{len(missing)} of {len(images)} image files are missing under '{image_root}': "
                f"{_listing(missing, len(missing))}",
                "Check image_root and the images' file_name entries.",
            )

    sorted_cats = sorted(cats, key=lambda c: c["id"])
    return {
        "thing_classes": [c["name"] for c in sorted_cats],
        "num_classes": len(sorted_cats),
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(sorted_cats)},
        "num_images": len(images),
        "num_usable_images": len(usable),
        "num_annotations": len(annos),
    }


def register_coco_json_dataset(
    name: str,
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    check_files: bool = True,
) -> dict[str, Any]:
    """Validate a COCO json (see `validate_coco_json`) and register it with detectron2 as `name`.

    Registration uses detectron2's `register_coco_instances` (evaluator_type "coco"; category ids are mapped to
    contiguous ids in sorted id order). `thing_classes` and the id mapping are put into the metadata right away,
    so `check_num_classes` works before the data is loaded. Re-registering a name replaces it.

    Returns:
        The summary of `validate_coco_json` (`thing_classes`, `num_classes`, ...).
    """
    summary = validate_coco_json(json_file, image_root, check_files=check_files)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(
        name,
        {
            "thing_classes": summary["thing_classes"],
            "thing_dataset_id_to_contiguous_id": summary["thing_dataset_id_to_contiguous_id"],
        },
        os.fspath(json_file),
        os.fspath(image_root),
    )
    return summary


def check_num_classes(dataset_name: str, num_classes: int) -> None:
    """Raise if `dataset_name` does not have exactly `num_classes` categories (MODEL.SEM_SEG_HEAD.NUM_CLASSES).

    Too few model classes make the loss index out of range; too many make the COCO evaluator reject
    predictions. Loads the dataset if its metadata does not list `thing_classes` yet.
    """
    meta = MetadataCatalog.get(dataset_name)
    classes = meta.get("thing_classes")
    if classes is None:
        DatasetCatalog.get(dataset_name)  # detectron2's COCO loader fills in thing_classes
        classes = meta.get("thing_classes")
    if classes is None:
        raise ValueError(
            f"Dataset '{dataset_name}' has no 'thing_classes' metadata, so its number of categories is "
            "unknown. Register it with register_coco_json_dataset or set MetadataCatalog thing_classes."
        )
    if len(classes) != num_classes:
        source = meta.get("json_file", "its metadata")
        raise ValueError(
            f"Dataset '{dataset_name}' ({source}) has {len(classes)} categories but "
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes}. "
            f"Set MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(classes)}."
        )


def check_dataset_files(dataset_name: str) -> None:
    """Raise if a registered dataset's annotation file or image folder (from its metadata) does not exist.

    Covers detectron2's builtin registrations (COCO, Cityscapes, ...), whose files live under
    `$DETECTRON2_DATASETS`: without this check a missing file surfaces as a traceback inside the data loader.
    Metadata paths that are not set are not checked.
    """
    meta = MetadataCatalog.get(dataset_name)
    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    for key, kind, exists in (
        ("json_file", "annotation file", os.path.isfile),
        ("image_root", "image folder", os.path.isdir),
        ("image_dir", "image folder", os.path.isdir),
        ("gt_dir", "annotation folder", os.path.isdir),
    ):
        path = meta.get(key, None)
        if path and not exists(path):
            raise DatasetError(
                f"Dataset '{dataset_name}': {kind} '{path}' does not exist. Builtin datasets are read from "
                f"$DETECTRON2_DATASETS (now '{root}'); datasets/README.md shows the layout. For your own COCO json "
                "use --coco-train / --coco-val."
            )


def check_image_files(dataset_dicts: list[dict], dataset_names: Iterable[str]) -> None:
    """Raise, naming the files, if any `file_name` of the loaded dataset dicts is missing on disk."""
    missing = [d["file_name"] for d in dataset_dicts if not os.path.isfile(d["file_name"])]
    if missing:
        raise DatasetError(
            f"Dataset {', '.join(repr(n) for n in dataset_names)}: {len(missing)} of {len(dataset_dicts)} image "
            f"files do not exist: {_listing(missing, len(missing))}. Restore them, or remove their entries from "
            "the annotation json."
        )
