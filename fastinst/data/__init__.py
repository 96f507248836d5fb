"""Data: training mappers, dataset registrations and the embedded synthetic dataset.

Importing this package registers the datasets `synthetic_{train,val}` and `ade20k_instance_{train,val}`
(lazily) and makes the mappers available through `build_train_mapper(cfg)`. `read_image` (image_io.py) is the one
image reader of training, evaluation, the predictor and the demo.
"""

from . import datasets  # noqa: F401  (registers datasets)
from .build import DATASET_MAPPERS, build_train_mapper
from .dataset_mappers import COCOInstanceNewBaselineDatasetMapper, FastInstInstanceDatasetMapper
from .datasets import (
    DatasetError,
    check_dataset_files,
    check_image_files,
    check_num_classes,
    ensure_synthetic_dataset,
    register_coco_json_dataset,
    register_synthetic,
    validate_coco_json,
)
from .image_io import UnreadableImageError, read_image, read_image_header
from .synthetic import SYNTHETIC_CLASSES, generate_synthetic_dataset

__all__ = [
    "DATASET_MAPPERS",
    "SYNTHETIC_CLASSES",
    "COCOInstanceNewBaselineDatasetMapper",
    "DatasetError",
    "FastInstInstanceDatasetMapper",
    "UnreadableImageError",
    "build_train_mapper",
    "check_dataset_files",
    "check_image_files",
    "check_num_classes",
    "ensure_synthetic_dataset",
    "generate_synthetic_dataset",
    "read_image",
    "read_image_header",
    "register_coco_json_dataset",
    "register_synthetic",
    "validate_coco_json",
]
