"""The validation pass over user COCO jsons: each kind of exporter fault repaired (with the right warning and the
right AP afterwards) or refused (one line, exit 2). Inputs are generated here; the kinds follow the user cases
of issue 11 (id 0, EXIF-rotated photos, empty image files, overlong RLE, json without info, crowd share, bbox as
x0 y0 x1 y1, degenerate polygon parts)."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image
from pycocotools import mask as mask_util

import fastinst
from fastinst.data import DatasetError, register_coco_json_dataset, validate_coco_json
from fastinst.data.dataset_mappers import InstanceTestDatasetMapper
from fastinst.data.datasets.coco_validation import check_coco_json
from fastinst.data.image_io import read_image
from fastinst.engine.evaluation import build_instance_evaluator

REPO = Path(__file__).resolve().parents[2]
NAME = "coco_validation_test"
PERFECT = pytest.approx(
    {"segm": 100.0, "bbox": 100.0}, abs=1e-9
)  # AP in percent, float rounding only


def square(x: float, y: float, s: float) -> list[float]:
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def two_squares(ids=(1, 2), **extra) -> dict:
    """One 64x64 image with a 24 px and a 16 px square, one category (id 3)."""
    anns = [
        {"id": ids[0], "image_id": 1, "category_id": 3, "segmentation": [square(4, 4, 24)],
         "bbox": [4, 4, 24, 24], "area": 576, "iscrowd": 0},
        {"id": ids[1], "image_id": 1, "category_id": 3, "segmentation": [square(36, 30, 16)],
         "bbox": [36, 30, 16, 16], "area": 256, "iscrowd": 0},
    ]  # fmt: skip
    data = {
        "info": {},
        "licenses": [],
        "images": [{"id": 1, "file_name": "black.png", "height": 64, "width": 64}],
        "annotations": anns,
        "categories": [{"id": 3, "name": "square"}],
    }
    data.update(extra)
    return data


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """tmp folder with imgs/black.png (64x64); FASTINST_CACHE inside it; `write(data)` -> json path."""
    monkeypatch.setenv("FASTINST_CACHE", str(tmp_path / "cache"))
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "imgs" / "black.png")

    def write(data: dict, name: str = "ann.json") -> str:
        path = tmp_path / name
        path.write_text(json.dumps(data))
        return str(path)

    write.root = tmp_path
    write.imgs = str(tmp_path / "imgs")
    yield write
    if NAME in DatasetCatalog.list():
        DatasetCatalog.remove(NAME)
        MetadataCatalog.remove(NAME)


def gt_mask(segm, h: int, w: int) -> np.ndarray:
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
    elif isinstance(segm["counts"], list):
        rle = mask_util.frPyObjects(segm, h, w)
    else:
        rle = segm
    return mask_util.decode(rle).astype(bool)


def perfect_eval(json_file: str, image_root: str, tmp_path: Path, scores=None) -> dict:
    """Register the json and give every ground-truth mask of the *given* file, with its tight box, to the
    project's COCO evaluator as a prediction; returns {"segm": AP, "bbox": AP}."""
    register_coco_json_dataset(NAME, json_file, image_root)
    contiguous = MetadataCatalog.get(NAME).thing_dataset_id_to_contiguous_id
    data = json.loads(Path(json_file).read_text())
    cfg = get_cfg()
    fastinst.add_fastinst_config(cfg)
    evaluator = build_instance_evaluator(cfg, NAME, str(tmp_path / "eval"))
    evaluator.reset()
    for image in data["images"]:
        h, w = image["height"], image["width"]
        mine = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        masks = [gt_mask(a["segmentation"], h, w) for a in mine]
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        pred = Instances((h, w))
        pred.pred_masks = torch.from_numpy(np.stack(masks))
        pred.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        pred.scores = torch.tensor(scores or [0.9 - 0.1 * i for i in range(len(mine))])
        pred.pred_classes = torch.tensor([contiguous[a["category_id"]] for a in mine])
        evaluator.process(
            [{"image_id": image["id"], "file_name": image["file_name"], "height": h, "width": w}],
            [{"instances": pred}],
        )
    results = evaluator.evaluate()
    return {task: results[task]["AP"] for task in ("segm", "bbox")}


# --- case 1: annotation id 0 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scores", [[0.8, 0.9], [0.9, 0.8]])
def test_annotation_id_0_is_renumbered_and_scores_ap_100(folder, scores):
    json_file = folder(two_squares(ids=(0, 1)))
    check = check_coco_json(json_file, folder.imgs)
    assert [a["id"] for a in check.data["annotations"]] == [1, 2]
    assert len(check.warnings) == 1
    assert "annotation ids renumbered 1..2" in check.warnings[0]
    assert check.warnings[0].endswith(": 0 (1 in total)")  # the offending id
    assert perfect_eval(json_file, folder.imgs, folder.root, scores) == PERFECT


def test_single_annotation_with_id_0_scores_ap_100(folder):
    data = two_squares(ids=(0, 1))
    data["annotations"] = data["annotations"][:1]
    json_file = folder(data)
    assert perfect_eval(json_file, folder.imgs, folder.root) == PERFECT


def test_evaluator_renumbers_ids_of_jsons_registered_otherwise(folder):
    """A json registered with detectron2's register_coco_instances (no validation): the evaluator repairs ids."""
    from detectron2.data.datasets import register_coco_instances

    data = two_squares(ids=(0, 0))
    del data["info"], data["licenses"]
    json_file = folder(data)
    register_coco_instances(NAME, {}, json_file, folder.imgs)
    cfg = get_cfg()
    fastinst.add_fastinst_config(cfg)
    evaluator = build_instance_evaluator(cfg, NAME, str(folder.root / "eval"))
    gt = evaluator._coco_api
    assert sorted(gt.anns) == [1, 2] and "info" in gt.dataset and "licenses" in gt.dataset


# --- case 11: bbox as [x0, y0, x1, y1]; wrong area; missing fields ---------------------------------------------


def test_xyxy_boxes_are_repaired_and_score_ap_100(folder):
    data = two_squares()
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        a["bbox"] = [x, y, x + w, y + h]
    json_file = folder(data)
    check = check_coco_json(json_file, folder.imgs)
    assert [a["bbox"] for a in check.data["annotations"]] == [[4, 4, 24, 24], [36, 30, 16, 16]]
    assert check.warnings == [
        f"{json_file}: repaired: bbox written as [x0, y0, x1, y1] (COCO's bbox is [x, y, width, height]); "
        "set to the mask's box: 1, 2 (2 in total)"
    ]
    assert perfect_eval(json_file, folder.imgs, folder.root) == PERFECT


def test_loose_boxes_are_repaired_and_score_ap_100(folder):
    """Boxes 2 px too wide and 1 px too tall (the extent read as [x0, y0, x1, y1] of a 22 px square, or a box
    drawn by hand) overlap the mask's box with IoU 0.83-0.94: kept, they cost bbox AP (77.6 for such a pair)."""
    data = two_squares()
    data["annotations"][0]["bbox"] = [4, 4, 26, 25]
    data["annotations"][1]["bbox"] = [35, 30, 17, 16]
    json_file = folder(data)
    check = check_coco_json(json_file, folder.imgs)
    assert [a["bbox"] for a in check.data["annotations"]] == [[4, 4, 24, 24], [36, 30, 16, 16]]
    assert len(check.warnings) == 1 and check.warnings[0].endswith(": 1, 2 (2 in total)")
    assert perfect_eval(json_file, folder.imgs, folder.root) == PERFECT


def test_wrong_area_and_missing_fields_are_recomputed_from_the_mask(folder):
    data = two_squares()
    data["annotations"][0]["area"] = 0.01  # normalised units
    del (
        data["annotations"][1]["area"],
        data["annotations"][1]["bbox"],
        data["annotations"][1]["iscrowd"],
    )
    del data["info"], data["licenses"]  # case 8: evaluation works without them
    json_file = folder(data)
    check = check_coco_json(json_file, folder.imgs)
    a0, a1 = check.data["annotations"]
    assert (a0["area"], a1["area"], a1["bbox"], a1["iscrowd"]) == (
        576.0,
        256.0,
        [36, 30, 16, 16],
        0,
    )
    kinds = [w.split("repaired: ")[1].split(";")[0].split(" missing")[0] for w in check.warnings]
    assert kinds == ["bbox", "area", "iscrowd"]
    assert "area missing" in check.warnings[1] and check.warnings[1].endswith(": 1, 2 (2 in total)")
    assert perfect_eval(json_file, folder.imgs, folder.root) == PERFECT
    registered = MetadataCatalog.get(NAME)
    assert registered.source_json_file == json_file and registered.json_file != json_file
    assert json.loads(Path(registered.json_file).read_text())["annotations"][0]["area"] == 576.0


def test_a_valid_file_is_registered_unchanged(folder):
    json_file = folder(two_squares())
    summary = register_coco_json_dataset(NAME, json_file, folder.imgs)
    assert summary["warnings"] == [] and MetadataCatalog.get(NAME).json_file == json_file
    assert not (folder.root / "cache").exists()


# --- case 12: degenerate polygon parts --------------------------------------------------------------------------


def test_degenerate_polygon_parts_are_dropped_and_the_rest_kept(folder):
    data = two_squares()
    data["annotations"][0]["segmentation"].append([30, 30, 31, 31])  # a 2-point sliver
    extra = copy.deepcopy(data["annotations"][1])
    for i, segm in ((3, [[10, 10, 20, 20]]), (4, [[1, 2, 3, 4, 5]]), (5, [[1, 2, 3, None, 5, 6]])):
        data["annotations"].append({**extra, "id": i, "segmentation": segm})
    json_file = folder(data)
    summary = register_coco_json_dataset(NAME, json_file, folder.imgs)
    assert summary["num_annotations"] == 2
    assert summary["warnings"][0].endswith("kept the other parts (annotation ids): 1 (1 in total)")
    assert "dropped annotations with no valid polygon part" in summary["warnings"][1]
    assert summary["warnings"][1].endswith(": 3, 4, 5 (3 in total)")
    (record,) = DatasetCatalog.get(NAME)
    assert [a["segmentation"] for a in record["annotations"]] == [
        [square(4, 4, 24)],
        [square(36, 30, 16)],
    ]


# --- case 9: crowd share ----------------------------------------------------------------------------------------


def test_a_high_crowd_share_is_reported(folder):
    data = two_squares()
    more = [{**copy.deepcopy(data["annotations"][1]), "id": i, "iscrowd": 1} for i in (3, 4)]
    data["annotations"] += more
    summary = validate_coco_json(folder(data), folder.imgs)
    assert summary["num_crowd_annotations"] == 2
    assert summary["warnings"][0].endswith(
        "2 of the 4 annotations (50%) are crowd regions (iscrowd 1): training skips them and evaluation "
        "ignores them; a share this high usually means an export setting marked ordinary objects as crowd"
    )


# --- refusals: one line, every id of a kind, exit 2 through train_net -------------------------------------------


def test_overlong_rle_and_unknown_categories_are_refused_in_one_line(folder):
    data = two_squares(ids=(7, 8))
    data["annotations"][0]["segmentation"] = {"size": [64, 64], "counts": [0, 5000]}
    data["annotations"].append({**data["annotations"][1], "id": 9, "category_id": 99})
    json_file = folder(data)
    with pytest.raises(DatasetError) as e:
        validate_coco_json(json_file, folder.imgs)
    assert str(e.value) == (
        f"Invalid COCO dataset '{json_file}': 1 annotation uses category ids that are not in 'categories': "
        "99 (1 in total); known ids are [3]; annotations whose RLE counts do not add up to their image's pixel "
        "count: 7 (5000 pixels; image 64 x 64 = 4096) (1 in total). Fix or remove them (datasets/README.md "
        "lists what is repaired and what is refused)."
    )


def load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", REPO / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unreadable_image_files_are_refused_by_train_net_with_exit_2(folder, capsys):
    (Path(folder.imgs) / "empty.png").write_bytes(b"")
    (Path(folder.imgs) / "text.png").write_text("not an image")
    data = two_squares()
    data["images"] += [
        {"id": 2, "file_name": "empty.png", "height": 64, "width": 64},
        {"id": 3, "file_name": "text.png", "height": 64, "width": 64},
    ]
    json_file = folder(data)
    config = str(REPO / "configs" / "synthetic" / "tiny-test.yaml")
    args = ["--config-file", config, "--coco-train", json_file, folder.imgs]
    assert load_train_net().cli([*args, "OUTPUT_DIR", str(folder.root / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: Invalid COCO dataset '{json_file}': image files that cannot be read: 'empty.png' (empty file "
        "(0 bytes)), 'text.png' (not an image, or a format Pillow cannot read) (2 in total). Fix or remove them "
        "(datasets/README.md lists what is repaired and what is refused)."
    )


def test_a_size_that_differs_from_the_file_is_refused(folder):
    data = two_squares()
    data["images"][0].update(height=48, width=80)
    json_file = folder(data)
    with pytest.raises(
        DatasetError, match=r"differs from the file's: 'black.png' \(json 80x48, file 64x64\)"
    ):
        validate_coco_json(json_file, folder.imgs)


# --- case 2: EXIF-rotated photo ---------------------------------------------------------------------------------


def exif_jpeg(path: Path, orientation: int = 6) -> None:
    """A 96 x 64 (w x h) JPEG stored as such, whose EXIF orientation turns it to 64 x 96."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = np.zeros((64, 96, 3), np.uint8)
    pixels[:, :48] = 255  # left half white as stored
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def test_exif_rotated_image_with_the_stored_size_is_read_as_stored(folder):
    exif_jpeg(Path(folder.imgs) / "exif6.jpg")
    data = two_squares()
    data["images"] = [{"id": 1, "file_name": "exif6.jpg", "height": 64, "width": 96}]
    json_file = folder(data)
    summary = register_coco_json_dataset(NAME, json_file, folder.imgs)
    assert summary["warnings"] == [
        f"{json_file}: images whose json width x height is their stored size, while their EXIF orientation "
        "turns them: they are read as stored (no EXIF rotation), as the json and its annotations describe "
        "them: 'exif6.jpg' (EXIF orientation 6 turns the stored 96x64 into 64x96) (1 in total)"
    ]
    (record,) = DatasetCatalog.get(NAME)
    assert record["exif_transpose"] is False
    cfg = get_cfg()
    fastinst.add_fastinst_config(cfg)
    mapped = InstanceTestDatasetMapper(cfg, is_train=False)(record)  # no size mismatch
    assert mapped["image"].shape[1] < mapped["image"].shape[2]  # landscape, as stored


def test_exif_rotated_image_with_the_upright_size_is_turned(folder):
    exif_jpeg(Path(folder.imgs) / "exif6.jpg")
    data = two_squares()
    data["images"] = [{"id": 1, "file_name": "exif6.jpg", "height": 96, "width": 64}]
    summary = register_coco_json_dataset(NAME, folder(data), folder.imgs)
    assert summary["warnings"] == []
    (record,) = DatasetCatalog.get(NAME)
    assert "exif_transpose" not in record
    assert read_image(record["file_name"]).shape == (96, 64, 3)


def test_missing_image_size_is_filled_in_from_the_file(folder):
    data = two_squares()
    del data["images"][0]["height"], data["images"][0]["width"]
    check = check_coco_json(folder(data), folder.imgs)
    assert check.data["images"][0]["height"] == check.data["images"][0]["width"] == 64
    assert check.warnings[0].endswith("images from their files (by image id): 1 (1 in total)")
    with pytest.raises(
        DatasetError, match=r"without a positive integer height and width \(by id\): 1 "
    ):
        check_coco_json(folder(data), folder.imgs, check_files=False)
