"""The embedded synthetic dataset: determinism, idempotence, COCO validity, registration."""

import json
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from fastinst.data import synthetic
from fastinst.data.datasets import register_synthetic_shapes as reg
from fastinst.data.datasets import validate_coco_json
from fastinst.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic_dataset, read_manifest

SMALL = {"num_train": 6, "num_val": 2, "image_size": (96, 128)}


def _pixels(root, split):
    folder = os.path.join(root, split)
    return {f: cv2.imread(os.path.join(folder, f)) for f in sorted(os.listdir(folder))}


def _json(root, split):
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "synthetic"
    generate_synthetic_dataset(root, seed=3, **SMALL)
    return root


def test_same_seed_gives_identical_data(small_root, tmp_path):
    other = tmp_path / "again"
    generate_synthetic_dataset(other, seed=3, **SMALL)
    for split in ("train", "val"):
        assert _json(small_root, split) == _json(other, split)
        a, b = _pixels(small_root, split), _pixels(other, split)
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_different_seed_gives_different_data(small_root, tmp_path):
    generate_synthetic_dataset(tmp_path / "s4", seed=4, **SMALL)
    assert _json(small_root, "train") != _json(tmp_path / "s4", "train")


def test_images_do_not_depend_on_count(small_root, tmp_path):
    generate_synthetic_dataset(tmp_path / "fewer", seed=3, **{**SMALL, "num_train": 3})
    a, b = _pixels(small_root, "train"), _pixels(tmp_path / "fewer", "train")
    assert all(np.array_equal(a[k], b[k]) for k in b)


def test_generation_is_idempotent(small_root):
    stamp = os.path.getmtime(os.path.join(small_root, "annotations", "instances_train.json"))
    out = generate_synthetic_dataset(small_root, seed=3, **SMALL)
    assert out["generated"] is False
    assert (
        os.path.getmtime(os.path.join(small_root, "annotations", "instances_train.json")) == stamp
    )


def test_changed_parameters_regenerate(tmp_path):
    root = tmp_path / "syn"
    generate_synthetic_dataset(root, num_train=3, num_val=1, image_size=64, seed=0)
    out = generate_synthetic_dataset(root, num_train=2, num_val=1, image_size=64, seed=0)
    assert out["generated"] is True
    assert sorted(os.listdir(root / "train")) == ["000001.png", "000002.png"]
    assert read_manifest(root)["params"]["num_train"] == 2
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # temp folder cleaned up


def test_json_is_valid_coco(small_root):
    for split, n in (("train", SMALL["num_train"]), ("val", SMALL["num_val"])):
        json_file = os.path.join(small_root, "annotations", f"instances_{split}.json")
        summary = validate_coco_json(json_file, os.path.join(small_root, split))
        assert summary["thing_classes"] == list(SYNTHETIC_CLASSES)
        assert summary["num_images"] == summary["num_usable_images"] == n
        coco = COCO(json_file)
        assert sorted(coco.getCatIds()) == list(range(1, len(SYNTHETIC_CLASSES) + 1))
        for img in coco.loadImgs(coco.getImgIds()):
            pixels = cv2.imread(os.path.join(small_root, split, img["file_name"]))
            assert pixels.shape == (img["height"], img["width"], 3)
            assert 96 <= img["height"] <= 128 and 96 <= img["width"] <= 128
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert 1 <= len(anns) <= 6
            union = np.zeros((img["height"], img["width"]), bool)
            for ann in anns:
                mask = coco.annToMask(ann).astype(bool)
                assert ann["area"] > 0 and ann["area"] == mask.sum() and ann["iscrowd"] == 0
                assert np.allclose(ann["bbox"], mask_util.toBbox(ann["segmentation"]))
                assert isinstance(ann["segmentation"]["counts"], str)
                assert not (union & mask).any()  # visible masks do not overlap
                union |= mask


def test_int_image_size_gives_square_images(tmp_path):
    generate_synthetic_dataset(tmp_path / "sq", num_train=2, num_val=1, image_size=80, seed=1)
    data = json.loads(_json(tmp_path / "sq", "train"))
    assert {(i["height"], i["width"]) for i in data["images"]} == {(80, 80)}
    with pytest.raises(ValueError, match="image_size"):
        generate_synthetic_dataset(tmp_path / "bad", image_size=(100, 50))


def test_cli(tmp_path, capsys):
    argv = ["--root", str(tmp_path / "cli"), "--num-train", "2", "--num-val", "1", "--size", "64"]
    synthetic.main(argv)
    assert "generated" in capsys.readouterr().out
    synthetic.main(argv)
    assert "up to date" in capsys.readouterr().out


def test_registration_generates_on_first_use(tmp_path, monkeypatch):
    calls = []

    def small_generate(root):
        calls.append(root)
        return generate_synthetic_dataset(root, num_train=2, num_val=1, image_size=64)

    monkeypatch.setattr(reg, "generate_synthetic_dataset", small_generate)
    root = tmp_path / "lazy"
    try:
        reg.register_synthetic(root)
        assert not root.exists()  # registration alone writes nothing
        meta = MetadataCatalog.get("synthetic_val")
        assert meta.evaluator_type == "coco" and meta.thing_classes == list(SYNTHETIC_CLASSES)
        dicts = DatasetCatalog.get("synthetic_val")
        assert len(dicts) == 1 and len(calls) == 1
        assert all(0 <= a["category_id"] < len(SYNTHETIC_CLASSES) for a in dicts[0]["annotations"])
        assert len(DatasetCatalog.get("synthetic_train")) == 2 and len(calls) == 1
    finally:
        reg.register_synthetic()  # restore the default registration


def test_default_root_follows_env(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "/some/where")
    assert reg.synthetic_root() == os.path.join("/some/where", "synthetic")
    assert reg.synthetic_root("x") == "x"


def test_photo_like_options_draw_many_small_objects_with_thin_parts(tmp_path):
    """The "photos" preset: 10-20 small objects per ~512 px image, some with long thin parts, one class."""
    preset = dict(synthetic.PRESETS["photos"])
    size = preset.pop("image_size")
    out = generate_synthetic_dataset(
        tmp_path / "p", num_train=3, num_val=1, image_size=size, seed=0, **preset
    )
    assert out["params"]["one_class"] is True and out["params"]["num_instances"] == [10, 20]
    json_file = tmp_path / "p" / "annotations" / "instances_train.json"
    summary = validate_coco_json(json_file, tmp_path / "p" / "train")
    assert summary["thing_classes"] == ["object"]
    coco = COCO(str(json_file))
    per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert all(8 <= n <= 20 for n in per_image), per_image  # a shape may find no place
    elongation, sides = [], []
    for img in coco.loadImgs(coco.getImgIds()):
        assert 480 <= img["height"] <= 544 and 480 <= img["width"] <= 544
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            x, y, w, h = ann["bbox"]
            elongation.append(max(w, h) / np.sqrt(ann["area"]))  # a disc: 1.13, a square: 1-1.4
            sides.append(max(w, h) / min(img["height"], img["width"]))
            assert ann["category_id"] == 1
    # thin parts: a shape with a bar out of it reaches far beyond its area's side
    assert sum(e > 2.0 for e in elongation) >= 3, sorted(elongation)[-5:]
    assert np.median(sides) < 0.15  # small objects


def test_shape_options_are_checked_and_recorded_only_when_not_default(tmp_path):
    out = generate_synthetic_dataset(tmp_path / "d", num_train=1, num_val=1, image_size=64)
    assert set(out["params"]) == {"generator_version", "num_train", "num_val", "image_size", "seed"}
    with pytest.raises(ValueError, match="object_size"):
        generate_synthetic_dataset(tmp_path / "b", image_size=64, object_size=(0.5, 0.2))
    with pytest.raises(ValueError, match="unknown shape options"):
        generate_synthetic_dataset(tmp_path / "b", image_size=64, num_objects=3)


def test_cli_preset_and_overrides(tmp_path, capsys):
    root = tmp_path / "cli"
    argv = ["--root", str(root), "--num-train", "1", "--num-val", "1", "--preset", "photos"]
    synthetic.main([*argv, "--size", "256", "--instances", "3", "4", "--thin-frac", "1"])
    params = read_manifest(root)["params"]
    assert params["image_size"] == [256, 256] and params["num_instances"] == [3, 4]
    assert params["thin_frac"] == 1.0 and params["one_class"] is True
    assert "generated" in capsys.readouterr().out
