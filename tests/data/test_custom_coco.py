"""Validation and registration of user COCO json datasets."""

import copy
import json

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from fastinst.data import (
    DatasetError,
    check_num_classes,
    register_coco_json_dataset,
    validate_coco_json,
)

SQUARE = [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]]


def valid_coco():
    ann = {"area": 100.0, "bbox": [2, 2, 10, 10], "iscrowd": 0, "segmentation": SQUARE}
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 20, "width": 24},
            {"id": 2, "file_name": "b.png", "height": 20, "width": 24},
        ],
        "annotations": [
            {**ann, "id": 1, "image_id": 1, "category_id": 7},
            {**ann, "id": 2, "image_id": 2, "category_id": 3},
            {**ann, "id": 3, "image_id": 2, "category_id": 7},
        ],
        # ids need not be contiguous nor sorted
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }


@pytest.fixture
def dataset(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(images / name), np.zeros((20, 24, 3), np.uint8))

    def write(data, text=None):
        path = tmp_path / "ann.json"
        path.write_text(text if text is not None else json.dumps(data))
        return str(path), str(images)

    return write


def test_valid_dataset_registers(dataset):
    json_file, image_root = dataset(valid_coco())
    name = "custom_coco_test_valid"
    try:
        meta = register_coco_json_dataset(name, json_file, image_root)
        assert meta["thing_classes"] == ["dog", "cat"] and meta["num_classes"] == 2
        assert meta["num_images"] == meta["num_usable_images"] == 2
        assert MetadataCatalog.get(name).evaluator_type == "coco"
        check_num_classes(name, 2)
        dicts = DatasetCatalog.get(name)
        assert [a["category_id"] for d in dicts for a in d["annotations"]] == [1, 0, 1]
        with pytest.raises(ValueError, match="NUM_CLASSES 2"):
            check_num_classes(name, 80)
        register_coco_json_dataset(name, json_file, image_root)  # re-registering is allowed
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def broken(mutate):
    data = valid_coco()
    mutate(data)
    return data


CASES = {
    "missing_top_level": (lambda d: d.pop("categories"), "categories"),
    "missing_segmentation": (lambda d: d["annotations"][1].pop("segmentation"), "segmentation"),
    "missing_image_field": (lambda d: d["images"][0].pop("file_name"), "file_name"),
    "unknown_category": (
        lambda d: d["annotations"][0].update(category_id=99),
        "category ids that are not in 'categories': 99",
    ),
    "orphan_annotation": (
        lambda d: d["annotations"][0].update(image_id=42),
        "image ids with no entry in 'images': 42",
    ),
    "no_usable_images": (lambda d: d.update(annotations=[]), "no usable images"),
    "duplicate_ids": (lambda d: d["images"][1].update(id=1), "duplicate image ids: 1"),
    "bad_segmentation_type": (
        lambda d: d["annotations"][2].update(segmentation="abc"),
        "segmentation is neither polygons (list) nor RLE (dict): 3 (1 in total)",
    ),
    "rle_size_mismatch": (
        lambda d: d["annotations"][0].update(segmentation={"counts": "abc", "size": [5, 5]}),
        "RLE size",
    ),
    "empty_categories": (lambda d: d.update(categories=[]), "'categories' is empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_content_is_reported(dataset, case):
    mutate, expected = CASES[case]
    json_file, image_root = dataset(broken(mutate))
    with pytest.raises(DatasetError) as e:
        validate_coco_json(json_file, image_root)
    assert json_file in str(e.value) and expected in str(e.value)


def test_missing_json(tmp_path):
    path = str(tmp_path / "nope.json")
    with pytest.raises(DatasetError, match="does not exist") as e:
        register_coco_json_dataset("custom_coco_test_missing", path, str(tmp_path))
    assert path in str(e.value)
    assert "custom_coco_test_missing" not in DatasetCatalog.list()


def test_bad_json(dataset):
    json_file, image_root = dataset(None, text='{"images": [}')
    with pytest.raises(DatasetError, match=r"not valid JSON .*line 1") as e:
        validate_coco_json(json_file, image_root)
    assert json_file in str(e.value)


def test_top_level_not_an_object(dataset):
    json_file, image_root = dataset([1, 2])
    with pytest.raises(DatasetError, match="top level is a list"):
        validate_coco_json(json_file, image_root)


def test_missing_image_files(dataset):
    data = valid_coco()
    extra = copy.deepcopy(data["images"][0])
    for i in range(7):
        data["images"].append({**extra, "id": 10 + i, "file_name": f"gone_{i}.png"})
    json_file, image_root = dataset(data)
    with pytest.raises(DatasetError) as e:
        validate_coco_json(json_file, image_root)
    msg = str(e.value)
    assert json_file in msg and "7 of 9 image files are missing" in msg
    assert "'gone_0.png'" in msg and "gone_6.png" not in msg  # only the first few are listed
    validate_coco_json(json_file, image_root, check_files=False)  # the check can be skipped


def test_missing_image_root(dataset, tmp_path):
    json_file, _ = dataset(valid_coco())
    with pytest.raises(DatasetError, match="image folder") as e:
        validate_coco_json(json_file, tmp_path / "elsewhere")
    assert json_file in str(e.value)
