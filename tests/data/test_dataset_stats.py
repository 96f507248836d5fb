"""Image and object sizes measured from a COCO json's annotations (fastinst.data.dataset_stats)."""

from __future__ import annotations

import json
import math

import pytest

from fastinst.data.dataset_stats import (
    coco_dataset_stats,
    dataset_stats_from_dicts,
    has_thin_part,
)


def _images():
    # short sides 100, 200, 300; long/short ratios 1.5, 1.0, 2.0
    return [
        {"id": 1, "height": 100, "width": 150},
        {"id": 2, "height": 200, "width": 200},
        {"id": 3, "height": 600, "width": 300},
    ]


def test_medians_of_images_and_objects() -> None:
    annotations = [
        {"image_id": 1, "area": 100.0, "iscrowd": 0},  # 10 px, 10% of 100
        {"image_id": 2, "area": 400.0, "iscrowd": 0},  # 20 px, 10% of 200
        {"image_id": 3, "area": 3600.0, "iscrowd": 0},  # 60 px, 20% of 300
        {"image_id": 3, "area": 900.0, "iscrowd": 0},  # 30 px, 10% of 300
        {"image_id": 2, "area": 10000.0, "iscrowd": 1},  # crowd: left out
    ]
    stats = dataset_stats_from_dicts(_images(), annotations)
    assert stats.num_images == 3
    assert stats.num_objects == 4
    assert stats.image_short == 200 and stats.image_long == 200
    assert stats.aspect == 1.5
    assert stats.object_size == 25.0  # median of 10, 20, 30, 60
    assert stats.object_rel == pytest.approx(0.1)
    assert stats.aspect_max == pytest.approx(1.95)  # 95th percentile of 1.0, 1.5, 2.0


def test_area_falls_back_to_the_box_and_unknown_images_are_skipped() -> None:
    annotations = [
        {"image_id": 2, "area": 0, "bbox": [0, 0, 8, 32], "iscrowd": 0},  # 16 px
        {"image_id": 99, "area": 400.0, "iscrowd": 0},  # no such image
    ]
    stats = dataset_stats_from_dicts(_images(), annotations)
    assert stats.num_objects == 1
    assert stats.object_size == 16.0
    assert stats.object_rel == pytest.approx(16 / 200)


def test_no_usable_annotation_is_an_error_naming_the_file(tmp_path) -> None:
    path = tmp_path / "crowd_only.json"
    annotations = [{"id": 1, "image_id": 1, "area": 50.0, "iscrowd": 1}]
    path.write_text(json.dumps({"images": _images(), "annotations": annotations}))
    with pytest.raises(ValueError, match=r"crowd_only\.json: .*no non-crowd annotation"):
        coco_dataset_stats(path)


def test_stats_of_a_generated_photo_like_set(tmp_path) -> None:
    """The generator's "photos" preset: ~500 px images, objects of 5-12% of the side plus thin parts."""
    from fastinst.data.synthetic import PRESETS, generate_synthetic_dataset

    preset = dict(PRESETS["photos"])
    size = preset.pop("image_size")
    generate_synthetic_dataset(tmp_path, num_train=2, num_val=1, image_size=size, seed=0, **preset)
    stats = coco_dataset_stats(tmp_path / "annotations" / "instances_train.json")
    assert 480 <= stats.image_short <= 544
    assert stats.num_objects >= 16  # 10-20 objects per image
    # circumscribed diameter 5-12% of the side: sqrt(area) a little below that
    assert 0.03 < stats.object_rel < 0.1
    assert math.isclose(stats.object_size, stats.object_rel * stats.image_short, rel_tol=0.2)


def test_registration_summary_has_the_sizes(tmp_path) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from fastinst.data import register_coco_json_dataset
    from fastinst.data.synthetic import generate_synthetic_dataset

    generate_synthetic_dataset(tmp_path, num_train=2, num_val=1, image_size=96, seed=0)
    json_file = tmp_path / "annotations" / "instances_train.json"
    try:
        summary = register_coco_json_dataset("stats_train", json_file, tmp_path / "train")
    finally:
        DatasetCatalog.remove("stats_train")
        MetadataCatalog.remove("stats_train")
    assert summary["sizes"] == coco_dataset_stats(json_file).as_dict()
    assert summary["sizes"]["image_short"] == 96


def test_thin_part_rule() -> None:
    assert not has_thin_part(
        40, 10, 400
    )  # a full 40 x 10 bar: extent 40 = 2 x sqrt(400), not above
    assert has_thin_part(41, 10, 400)
    assert not has_thin_part(20, 20, 400)  # a square
    assert has_thin_part(60, 60, 800)  # an L of two 60 x ~6.9 px arms: extent 60 > 2 x 28.3
