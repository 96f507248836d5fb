"""Register ADE20K instance segmentation (100 thing classes) as `ade20k_instance_{train,val}`.

The official repository left this file empty, so the dataset was never registered (SPEC §10 F8). Expected
layout under `$DETECTRON2_DATASETS` (default `datasets`), produced by `datasets/prepare_ade20k_ins_seg.py`::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/ade20k_instance_{train,val}.json

Registration is lazy: nothing is read on import; a missing json raises a clear error when the split is loaded.
"""

from __future__ import annotations

import os
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .custom_coco import DatasetError

__all__ = ["ADE20K_INSTANCE_SPLITS", "register_all_ade20k_instance"]

# name -> (image folder, json file), relative to the datasets root
ADE20K_INSTANCE_SPLITS: dict[str, tuple[str, str]] = {
    "ade20k_instance_train": (
        "ADEChallengeData2016/images/training",
        "ADEChallengeData2016/ade20k_instance_train.json",
    ),
    "ade20k_instance_val": (
        "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/ade20k_instance_val.json",
    ),
}


def _load(name: str, json_file: str, image_root: str) -> list[dict[str, Any]]:
    if not os.path.isfile(json_file):
        raise DatasetError(
            f"Dataset '{name}': '{json_file}' does not exist. Download ADEChallengeData2016 and the "
            "instance annotations, then run `python datasets/prepare_ade20k_ins_seg.py` "
            "(see datasets/README.md)."
        )
    return load_coco_json(json_file, image_root, name)


def register_all_ade20k_instance(root: str | os.PathLike | None = None) -> None:
    """Register both ADE20K instance splits (evaluator_type "coco") under `root`.

    Args:
        root: datasets root; None means `$DETECTRON2_DATASETS` (default `datasets`). Calling again
            re-registers the names.
    """
    if root is None:
        root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    root = os.fspath(root)
    for name, (image_dir, json_rel) in ADE20K_INSTANCE_SPLITS.items():
        image_root, json_file = os.path.join(root, image_dir), os.path.join(root, json_rel)
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda n=name, j=json_file, i=image_root: _load(n, j, i))
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="coco"
        )
