"""Training mappers ("fastinst_instance", "coco_instance_lsj"), ColorAugSSD and the mapper dispatch."""

import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util

from fastinst.config import add_fastinst_config
from fastinst.data import (
    COCOInstanceNewBaselineDatasetMapper,
    FastInstInstanceDatasetMapper,
    build_train_mapper,
    generate_synthetic_dataset,
    register_coco_json_dataset,
)
from fastinst.data.dataset_mappers import ColorAugSSDTransform

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "coco")
SHIPPED_YAML = os.path.join(CONFIG_DIR, "instance-segmentation", "fastinst_R50_ppm-fpn_x1_576.yaml")


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic_dataset(root, num_train=6, num_val=1, image_size=(96, 128), seed=0)
    json_file = os.path.join(root, "annotations", "instances_train.json")
    return load_coco_json(json_file, os.path.join(root, "train"), "synthetic_mapper_tests")


def small_cfg(**input_overrides):
    cfg = get_cfg()
    add_fastinst_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (96, 112, 128)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute_range"
    cfg.INPUT.CROP.SIZE = (48, 80)
    cfg.INPUT.CROP.RESIZE.ENABLED = True
    cfg.INPUT.CROP.RESIZE.MIN_SIZE = (96, 128)
    cfg.INPUT.IMAGE_SIZE = 128
    for key, value in input_overrides.items():
        node = cfg.INPUT
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return cfg


def seed_for(crop: bool) -> int:
    """A numpy seed whose first draw takes the crop branch (rand() <= 0.5) or the plain one."""
    for seed in range(100):
        np.random.seed(seed)
        if (np.random.rand() <= 0.5) == crop:
            return seed
    raise AssertionError


def check_output(out, num_annotations):
    image, inst = out["image"], out["instances"]
    h, w = image.shape[-2:]
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    assert inst.image_size == (h, w)
    assert inst.gt_masks.dtype == torch.bool and inst.gt_masks.shape == (num_annotations, h, w)
    assert inst.gt_classes.dtype == torch.int64 and inst.gt_classes.shape == (num_annotations,)
    assert inst.gt_boxes.tensor.shape == (num_annotations, 4)
    assert "annotations" not in out


@pytest.mark.parametrize("crop", [False, True])
def test_fastinst_mapper_branches(dicts, crop):
    mapper = build_train_mapper(small_cfg())
    assert isinstance(mapper, FastInstInstanceDatasetMapper)
    np.random.seed(seed_for(crop))
    augs = [type(a) for a in mapper._augmentations()]
    tail = [T.ResizeShortestEdge, T.RandomFlip]
    assert augs == ([T.ResizeShortestEdge, T.RandomCrop] + tail if crop else tail)
    for record in dicts:
        np.random.seed(seed_for(crop))
        out = mapper(record)
        check_output(out, len(record["annotations"]))
        h, w = out["image"].shape[-2:]
        assert min(h, w) in (96, 112, 128) and max(h, w) <= 200  # both branches end with the resize
        classes = sorted(a["category_id"] for a in record["annotations"])
        assert sorted(out["instances"].gt_classes.tolist()) == classes
        assert out["height"] == record["height"]  # original size kept for evaluation


def test_plain_branch_masks_match_resized_annotations(dicts):
    mapper = FastInstInstanceDatasetMapper(
        tfm_gens=[T.ResizeShortestEdge(64, 1000)], crop_gens=None, image_format="RGB"
    )
    out = mapper(dicts[0])
    h, w = out["image"].shape[-2:]
    for ann, mask in zip(dicts[0]["annotations"], out["instances"].gt_masks):
        ref = cv2.resize(mask_util.decode(ann["segmentation"]), (w, h), cv2.INTER_NEAREST)
        assert (mask.numpy() != ref.astype(bool)).mean() < 0.02


def test_crop_disabled_uses_no_coin(dicts):
    mapper = build_train_mapper(small_cfg(**{"CROP.ENABLED": False}))
    assert mapper.crop_gens is None
    np.random.seed(seed_for(crop=True))
    out = mapper(dicts[0])
    assert min(out["image"].shape[-2:]) in (96, 112, 128)


def test_crop_without_pre_resize(dicts):
    mapper = build_train_mapper(small_cfg(**{"CROP.RESIZE.ENABLED": False}))
    assert [type(a) for a in mapper.crop_gens] == [T.RandomCrop]
    np.random.seed(seed_for(crop=True))
    check_output(mapper(dicts[0]), len(dicts[0]["annotations"]))


def _hand_record(tmp_path, h=60, w=80):
    """A record with a polygon, an RLE and a crowd annotation, all in the top-left corner."""
    image = np.full((h, w, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "img.png"), image)
    rle_mask = np.zeros((h, w), np.uint8)
    rle_mask[2:12, 20:35] = 1
    rle = mask_util.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode()
    square = [[2.0, 2.0, 15.0, 2.0, 15.0, 15.0, 2.0, 15.0]]
    box = [0, 0, 40, 20]
    annotations = [
        {"segmentation": square, "category_id": 3, "iscrowd": 0, "bbox": box},
        {"segmentation": rle, "category_id": 1, "iscrowd": 0, "bbox": box},
        {"segmentation": rle, "category_id": 2, "iscrowd": 1, "bbox": box},
    ]
    for a in annotations:
        a["bbox_mode"] = BoxMode.XYWH_ABS
    return {
        "file_name": str(tmp_path / "img.png"),
        "height": h,
        "width": w,
        "image_id": 1,
        "annotations": annotations,
    }


def test_polygon_and_rle_follow_the_flip_and_crowd_is_dropped(tmp_path):
    record = _hand_record(tmp_path)
    mapper = FastInstInstanceDatasetMapper(
        tfm_gens=[T.HFlipTransform(80)], crop_gens=None, image_format="RGB"
    )
    out = mapper(record)
    check_output(out, 2)
    assert out["instances"].gt_classes.tolist() == [3, 1]
    polygon_mask, rle_mask = out["instances"].gt_masks.numpy()
    assert polygon_mask[2:15, 80 - 15 : 80 - 2].all() and polygon_mask.sum() < 14 * 14
    assert rle_mask[2:12, 80 - 35 : 80 - 20].all() and rle_mask.sum() == 150


def test_everything_cropped_away_keeps_empty_masks(tmp_path):
    record = _hand_record(tmp_path)
    mapper = FastInstInstanceDatasetMapper(
        tfm_gens=[T.CropTransform(40, 30, 40, 30)], crop_gens=None, image_format="RGB"
    )
    out = mapper(record)
    check_output(out, 2)  # official behaviour: no empty-instance filtering
    assert not out["instances"].gt_masks.any()
    assert out["instances"].gt_boxes.tensor.abs().sum() == 0


def test_image_without_annotations(tmp_path):
    record = _hand_record(tmp_path)
    record["annotations"] = []
    out = build_train_mapper(small_cfg())(record)
    check_output(out, 0)


def test_size_divisibility_pads_to_a_multiple(dicts):
    mapper = build_train_mapper(small_cfg(SIZE_DIVISIBILITY=32, COLOR_AUG_SSD=True))
    for seed in range(4):
        np.random.seed(seed)
        out = mapper(dicts[seed])
        h, w = out["image"].shape[-2:]
        assert h % 32 == 0 and w % 32 == 0 and h <= 224 and w <= 224
        check_output(out, len(dicts[seed]["annotations"]))


def test_mapper_refuses_eval_mode():
    with pytest.raises(ValueError, match="training mapper"):
        FastInstInstanceDatasetMapper(small_cfg(), is_train=False)


def test_shipped_config_builds_mapper():
    cfg = get_cfg()
    add_fastinst_config(cfg)
    cfg.merge_from_file(SHIPPED_YAML)
    mapper = build_train_mapper(cfg)
    assert isinstance(mapper, FastInstInstanceDatasetMapper) and mapper.crop_gens is not None


def test_lsj_mapper(dicts):
    mapper = build_train_mapper(
        small_cfg(DATASET_MAPPER_NAME="coco_instance_lsj", MIN_SCALE=0.5, MAX_SCALE=0.5)
    )
    assert isinstance(mapper, COCOInstanceNewBaselineDatasetMapper)
    np.random.seed(0)
    for record in dicts:
        out = mapper(record)
        n = len(out["instances"])
        check_output(out, n)
        assert out["image"].shape[-2:] == (128, 128)
        pad = out["padding_mask"]
        assert pad.dtype == torch.bool and pad.shape == (128, 128)
        assert pad.any() and (out["image"][:, pad] == 128).all()  # scale 0.5 leaves padding
        assert not out["instances"].gt_masks[:, pad].any()
        assert out["instances"].gt_masks.flatten(1).any(1).all()  # empty instances removed


def test_lsj_mapper_removes_cropped_instances(tmp_path):
    record = _hand_record(tmp_path)
    mapper = COCOInstanceNewBaselineDatasetMapper(
        tfm_gens=[T.CropTransform(40, 30, 40, 30)], image_format="RGB"
    )
    check_output(mapper(record), 0)


def test_unknown_mapper_name_is_a_clear_error():
    with pytest.raises(ValueError) as e:
        build_train_mapper(small_cfg(DATASET_MAPPER_NAME="mask_former_semantic"))
    msg = str(e.value)
    assert "INPUT.DATASET_MAPPER_NAME" in msg and "mask_former_semantic" in msg
    assert "'fastinst_instance'" in msg and "'coco_instance_lsj'" in msg


def test_color_aug_ssd_transform():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    identity = ColorAugSSDTransform(img_format="RGB")
    assert np.array_equal(identity.apply_image(img), img)
    kwargs = {
        "brightness_delta": 10.0,
        "contrast_factor": 1.2,
        "saturation_factor": 0.7,
        "hue_delta": 12.0,
        "contrast_first": False,
    }
    rgb = ColorAugSSDTransform(img_format="RGB", **kwargs).apply_image(img)
    bgr = ColorAugSSDTransform(img_format="BGR", **kwargs).apply_image(img[..., ::-1].copy())
    assert rgb.dtype == np.uint8 and not np.array_equal(rgb, img)
    assert np.array_equal(rgb, bgr[..., ::-1])  # channel order is handled
    coords = np.array([[1.0, 2.0]])
    assert np.array_equal(identity.apply_coords(coords), coords)


def test_detectron2_train_loader_batches(tmp_path):
    root = tmp_path / "syn"
    generate_synthetic_dataset(root, num_train=4, num_val=1, image_size=96, seed=0)
    name = "synthetic_loader_test"
    register_coco_json_dataset(name, root / "annotations" / "instances_train.json", root / "train")
    try:
        cfg = small_cfg()
        cfg.DATASETS.TRAIN = (name,)
        cfg.SOLVER.IMS_PER_BATCH = 2
        cfg.DATALOADER.NUM_WORKERS = 0
        loader = build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))
        batch = next(iter(loader))
        assert len(batch) == 2
        for out in batch:
            check_output(out, len(out["instances"]))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
