"""Dataset registrations. Importing this package registers (lazily; no file is touched):

- `synthetic_train`, `synthetic_val`: the embedded shapes dataset (generated on first use),
- `ade20k_instance_train`, `ade20k_instance_val`: ADE20K instance segmentation.

COCO (`coco_2017_*`) and Cityscapes come from detectron2's builtin registrations. Your own COCO-format json:
`register_coco_json_dataset`, which validates it first (`coco_validation.check_coco_json`: repaired or refused,
see datasets/README.md).
"""

from .custom_coco import (
    DatasetError,
    check_dataset_files,
    check_image_files,
    check_num_classes,
    register_coco_json_dataset,
    validate_coco_json,
)
from .register_ade20k_instance import register_all_ade20k_instance
from .register_synthetic_shapes import ensure_synthetic_dataset, register_synthetic, synthetic_root

register_synthetic()
register_all_ade20k_instance()

__all__ = [
    "DatasetError",
    "check_dataset_files",
    "check_image_files",
    "check_num_classes",
    "ensure_synthetic_dataset",
    "register_all_ade20k_instance",
    "register_coco_json_dataset",
    "register_synthetic",
    "synthetic_root",
    "validate_coco_json",
]
