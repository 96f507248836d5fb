"""Register the embedded synthetic shapes dataset as `synthetic_train` and `synthetic_val`.

The data lives in `$DETECTRON2_DATASETS/synthetic` (default `datasets/synthetic`). Registration is lazy: nothing is
read or written on import. The first time a split is loaded (`DatasetCatalog.get`), the dataset is generated with
the default parameters if it is not there yet (a few seconds); run `python -m fastinst.data.synthetic` to generate
it ahead of time or with other parameters.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..synthetic import SYNTHETIC_CLASSES, generate_synthetic_dataset, read_manifest

__all__ = ["SYNTHETIC_SPLITS", "synthetic_root", "ensure_synthetic_dataset", "register_synthetic"]

logger = logging.getLogger(__name__)

SYNTHETIC_SPLITS: dict[str, str] = {"synthetic_train": "train", "synthetic_val": "val"}


def synthetic_root(root: str | os.PathLike | None = None) -> str:
    """`root`, or `$DETECTRON2_DATASETS/synthetic` (default `datasets/synthetic`) when it is None."""
    if root is not None:
        return os.fspath(root)
    return os.path.join(
        os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "synthetic"
    )


def ensure_synthetic_dataset(root: str | os.PathLike | None = None) -> str:
    """Generate the synthetic dataset with default parameters unless one (any parameters) exists; return root."""
    root = synthetic_root(root)
    if read_manifest(root) is None:
        logger.info("Synthetic dataset not found in %s; generating it (default parameters).", root)
        generate_synthetic_dataset(root)
    return root


def _load(name: str, root: str) -> list[dict[str, Any]]:
    split = SYNTHETIC_SPLITS[name]
    ensure_synthetic_dataset(root)
    json_file = os.path.join(root, "annotations", f"instances_{split}.json")
    return load_coco_json(json_file, os.path.join(root, split), name)


def register_synthetic(root: str | os.PathLike | None = None) -> None:
    """Register `synthetic_train` / `synthetic_val` (evaluator_type "coco") for the data under `root`.

    Args:
        root: dataset folder; None means `$DETECTRON2_DATASETS/synthetic`. Calling again re-registers both
            names for the new root.
    """
    root = synthetic_root(root)
    for name, split in SYNTHETIC_SPLITS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda name=name: _load(name, root))
        MetadataCatalog.get(name).set(
            json_file=os.path.join(root, "annotations", f"instances_{split}.json"),
            image_root=os.path.join(root, split),
            evaluator_type="coco",
            thing_classes=list(SYNTHETIC_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SYNTHETIC_CLASSES))},
        )
