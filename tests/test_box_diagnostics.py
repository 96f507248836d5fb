"""tools/box_diagnostics.py on a hand-made json and a stand-in predictor (no model needed)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from PIL import Image
from pycocotools.coco import COCO

from fastinst.modeling.postprocessing import mask_boxes
from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location(
    "box_diagnostics", REPO / "tools" / "box_diagnostics.py"
)
box_diagnostics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(box_diagnostics)


def _square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def coco(tmp_path):
    Image.new("RGB", (40, 32)).save(tmp_path / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 40}],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _square(2, 2, 12, 12), "area": 100,
             "bbox": [2, 2, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": _square(30, 20, 36, 26), "area": 36,
             "bbox": [30, 20, 6, 6], "iscrowd": 0},
        ],
    }  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(tmp_path / "a.json")), tmp_path


def test_a_mask_that_also_fires_on_the_other_object(coco):
    api, root = coco
    gt = [api.annToMask(a).astype(bool) for a in api.loadAnns([1, 2])]
    leaky = gt[0] | gt[1]  # object 1 plus a blob that is exactly object 2
    masks = torch.from_numpy(np.stack([leaky, gt[1]]))

    def predictor(image):
        out = Instances((32, 40))
        out.pred_masks, out.pred_boxes = masks, Boxes(mask_boxes(masks))
        out.scores, out.pred_classes = torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.int64)
        return out

    rows = box_diagnostics.diagnose(predictor, api, str(root))
    # object 1 matches the leaky mask (IoU 100/136), object 2 the exact one (the leaky one has IoU 36/136)
    assert rows["miou"] == pytest.approx([100 / 136, 1.0])
    assert rows["multi"] == [True, False]
    assert rows["stray"] == [36, 36]  # object 2's pixels, all on another object
    leaky_box = (36 - 2) * (26 - 2)  # the leaky mask's box spans both objects
    assert rows["ratio"] == pytest.approx([leaky_box / 100, 1.0])
    assert rows["biou"] == pytest.approx([100 / leaky_box, 1.0])
    lines = box_diagnostics.report(rows, 2)
    assert lines[0] == "matched 2 of 2 objects (mask IoU >= 0.5)"
    assert (
        "masks with > 1 component: 50%; their pixels outside the largest component: 36, 100%"
        in lines[-2]
    )


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    code = box_diagnostics.main(
        ["--config-file", str(tmp_path / "missing.yaml"), "--weights", "x.pth",
         "--coco-val", str(tmp_path / "v.json"), str(tmp_path)]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "missing.yaml" in err
