"""Register your own COCO-format instance-segmentation json, validated before any training starts.

    from fastinst.data.datasets import register_coco_json_dataset
    meta = register_coco_json_dataset("my_train", "data/ann/train.json", "data/images/train")
    # then: DATASETS.TRAIN ("my_train",)  MODEL.SEM_SEG_HEAD.NUM_CLASSES meta["num_classes"]

The json and every image header go through one validation pass (`coco_validation.check_coco_json`): problems
whose fix is unambiguous are repaired with one warning per kind, the others raise `DatasetError` (a ValueError)
with one line naming the file, the ids and the problem. How repaired data reaches training and evaluation: the
repaired json is written once to a cache file (content-addressed, `$FASTINST_CACHE/coco`, default
`~/.cache/fastinst/coco`) and that file is registered, so detectron2's loader and the COCO evaluator (which reads
`json_file` from the metadata) both see the same repaired annotations; `source_json_file` keeps the user's path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..dataset_stats import dataset_stats_from_dicts
from .coco_validation import DatasetError, check_coco_json, listing

__all__ = [
    "DatasetError",
    "check_dataset_files",
    "check_image_files",
    "check_num_classes",
    "register_coco_json_dataset",
    "validate_coco_json",
]

logger = logging.getLogger(__name__)


def validate_coco_json(
    json_file: str | os.PathLike, image_root: str | os.PathLike, *, check_files: bool = True
) -> dict[str, Any]:
    """Check a COCO instance-segmentation json (and its images' headers) and summarise it; writes nothing.

    Args:
        json_file: path to the COCO json.
        image_root: folder that the images' `file_name`s are relative to.
        check_files: also read every image file's header (exists, decodable, size after EXIF orientation).

    Returns:
        dict with `thing_classes` (names sorted by category id), `num_classes`,
        `thing_dataset_id_to_contiguous_id`, `num_images`, `num_usable_images` (images with at least one
        non-crowd annotation), `num_annotations`, `num_crowd_annotations` (after repairs) and `warnings` (one
        line per repaired or warned kind; datasets/README.md has the table).

    Raises:
        DatasetError: one line naming the file and, for each problem kind that cannot be repaired, the count
            and the first ids (missing or unparseable file, missing fields, bad or duplicate ids, unknown
            categories or images, malformed segmentations, missing or unreadable images, sizes that differ
            from the files, no usable image).
    """
    return check_coco_json(json_file, image_root, check_files=check_files).summary


def _cache_dir() -> str:
    root = os.environ.get("FASTINST_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fastinst"
    )
    return os.path.join(root, "coco")


def _write_repaired(data: dict[str, Any], json_file: str, cache_dir: str | None) -> str:
    """Write the repaired json once, named by its content; returns its path."""
    data.setdefault("info", {"description": f"repaired copy of {os.path.abspath(json_file)}"})
    data.setdefault("licenses", [])
    text = json.dumps(data, separators=(",", ":"))
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(json_file))[0]
    for folder in (cache_dir or _cache_dir(), os.path.join(tempfile.gettempdir(), "fastinst-coco")):
        path = os.path.join(folder, f"{stem}.repaired.{digest}.json")
        if os.path.isfile(path):
            return path
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)  # atomic: several processes may register at once
            return path
        except OSError as e:
            error = e
    raise DatasetError(
        f"Cannot write the repaired copy of '{json_file}': {error}. Set $FASTINST_CACHE."
    )


def _loader(json_file: str, image_root: str, name: str, stored: frozenset[str]):
    def load() -> list[dict]:
        dicts = load_coco_json(json_file, image_root, name)
        if stored:
            for d in dicts:
                if os.path.relpath(d["file_name"], image_root) in stored:
                    d["exif_transpose"] = (
                        False  # the json describes the stored pixels (see check_coco_json)
                    )
        return dicts

    return load


def _sizes(data: dict[str, Any]) -> dict[str, Any] | None:
    """Image and object sizes of the json (`DatasetStats`; None without a usable annotation)."""
    try:
        return dataset_stats_from_dicts(data["images"], data["annotations"]).as_dict()
    except ValueError:
        return None


def register_coco_json_dataset(
    name: str,
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    check_files: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Validate a COCO json (see `validate_coco_json`), log its warnings and register it with detectron2.

    Registration is what detectron2's `register_coco_instances` does (evaluator_type "coco"; category ids mapped
    to contiguous ids in sorted id order), with `thing_classes` and the id mapping put into the metadata right
    away, so `check_num_classes` works before the data is loaded. When the validation repaired something, the
    repaired json is written to `cache_dir` (default `$FASTINST_CACHE/coco` or `~/.cache/fastinst/coco`) and
    registered as `json_file` (loader and COCO evaluator read it); `source_json_file` is the given path.
    Re-registering a name replaces it.

    Returns:
        The summary of `validate_coco_json` (`thing_classes`, `num_classes`, `warnings`, ...), plus `sizes`:
        the image and object sizes of `fastinst.data.dataset_stats.DatasetStats` as a dict (read from the
        annotations; INPUT.AUTO_SIZE chooses input sizes from them).

    Raises:
        DatasetError: see `validate_coco_json`.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    check = check_coco_json(json_file, image_root, check_files=check_files)
    for line in check.warnings:
        logger.warning(line)
    registered_json = json_file
    if check.changed:
        registered_json = _write_repaired(check.data, json_file, cache_dir and os.fspath(cache_dir))
        logger.info("%s: registered the repaired copy %s as %r", json_file, registered_json, name)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    stored = frozenset(os.path.normpath(f) for f in check.stored_orientation_files)
    DatasetCatalog.register(name, _loader(registered_json, image_root, name, stored))
    summary = check.summary
    summary["sizes"] = _sizes(check.data)
    MetadataCatalog.get(name).set(
        json_file=registered_json,
        source_json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=summary["thing_classes"],
        thing_dataset_id_to_contiguous_id=summary["thing_dataset_id_to_contiguous_id"],
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
            f"files do not exist: {listing([repr(m) for m in missing])}. Restore them, or remove their entries from "
            "the annotation json."
        )
