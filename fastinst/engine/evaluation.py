"""Evaluators for FastInst's instance predictions, chosen by the dataset's `evaluator_type` (SPEC §8.3).

FastInst predicts instances only, so only the instance evaluators of the official `build_evaluator` are kept:
"coco" and "coco_panoptic_seg" (mask and box AP; our boxes are real boxes around the masks), "lvis" and
"cityscapes_instance". Anything else is a clear `NotImplementedError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    COCOEvaluator,
    DatasetEvaluator,
    LVISEvaluator,
)
from detectron2.utils import comm

from fastinst.data.datasets import DatasetError

INSTANCE_EVALUATOR_TYPES = ("coco", "coco_panoptic_seg", "lvis", "cityscapes_instance")


def build_instance_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> DatasetEvaluator:
    """The evaluator for `dataset_name`, writing its files under `output_folder` (OUTPUT_DIR/inference)."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        # The pure-Python detectron2 has no C++ COCOeval, so use pycocotools' (the "official" one).
        evaluator = COCOEvaluator(
            dataset_name,
            tasks=("bbox", "segm"),
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            use_fast_impl=False,
        )
        make_coco_gt_evaluable(evaluator._coco_api, dataset_name)
        return evaluator
    if evaluator_type == "lvis":
        return LVISEvaluator(dataset_name, tasks=("bbox", "segm"), output_dir=output_folder)
    if evaluator_type == "cityscapes_instance":
        return CityscapesInstanceEvaluator(dataset_name)
    raise NotImplementedError(
        f"No FastInst evaluator for dataset {dataset_name!r} (evaluator_type {evaluator_type!r}); "
        f"supported evaluator types: {', '.join(INSTANCE_EVALUATOR_TYPES)}."
    )


def make_coco_gt_evaluable(coco_gt, dataset_name: str) -> None:
    """Make a pycocotools `COCO` ground truth safe for COCOeval, whatever json it was read from.

    - `info` and `licenses` are added when absent: pycocotools 2.0.9 / 2.0.10 `loadRes` copies
      `dataset["info"]` and raises KeyError without it (2.0.11 uses `.get`).
    - Annotation ids that are not unique integers >= 1 are renumbered 1..N (with a warning): COCOeval records a
      match by the ground truth's id, so an id of 0 reads as "no match" and lowers AP (50.5 / 25.3 / 0 instead of
      100 for perfect predictions). `register_coco_json_dataset` already repairs its jsons; this covers datasets
      registered otherwise (detectron2's builtins, `register_coco_instances`).
    """
    dataset = coco_gt.dataset
    dataset.setdefault("info", {})
    dataset.setdefault("licenses", [])
    annotations = dataset.get("annotations", [])
    ids = [a.get("id") for a in annotations]
    valid = [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and i >= 1]
    if len(valid) == len(ids) and len(set(valid)) == len(ids):
        return
    for n, a in enumerate(annotations):
        a["id"] = n + 1
    coco_gt.createIndex()
    logging.getLogger(__name__).warning(
        "%s: annotation ids renumbered 1..%d for COCO evaluation (pycocotools needs unique ids >= 1; "
        "id 0 reads as no match)",
        dataset_name,
        len(annotations),
    )


class ProgressLoader:
    """Wraps a test data loader so that iterating it shows a tqdm progress bar (main process only).

    `len()` is passed through because detectron2's `inference_on_dataset` needs it. A `DatasetError` from a
    loader worker (an image that cannot be decoded) is raised again as its one-line message.
    """

    def __init__(self, loader: Iterable, desc: str) -> None:
        self.loader = loader
        self.desc = desc

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        from tqdm import tqdm

        disable = not comm.is_main_process()
        try:
            yield from tqdm(
                self.loader, desc=self.desc, total=len(self), disable=disable, leave=False
            )
        except DatasetError as e:
            # From a loader worker, torch re-raises it with the worker's traceback in the message: keep the
            # one line that names the file (InstanceTestDatasetMapper's), so train_net prints one line.
            lines = str(e).strip().splitlines()
            if len(lines) > 1:
                raise DatasetError(lines[-1].split(": ", 1)[-1]) from None
            raise
