"""tools/mask_map_bound.py: the stride-8 reduction of ground-truth masks, scored with pycocotools."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_util

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location(
        "mask_map_bound", REPO / "tools/mask_map_bound.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json(tmp_path, masks: list[np.ndarray]) -> Path:
    annotations = []
    for i, m in enumerate(masks):
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        bbox = [float(v) for v in mask_util.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 0,
             "area": float(m.sum()), "bbox": bbox}
        )  # fmt: skip
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


def test_cell_aligned_squares_survive_and_a_thin_bar_shortens_the_box(tmp_path, capsys) -> None:
    square = np.zeros((64, 64), bool)
    square[8:24, 8:24] = True  # 16 px, on the 8 px grid at S=64
    bar = np.zeros((64, 64), bool)
    bar[40:48, 32:40] = True
    bar[43:45, 40:60] = True  # a 2 px wide, 20 px long bar: lost at stride 8
    tool = _tool()
    from pycocotools.coco import COCO

    coco = COCO(str(_json(tmp_path, [square])))
    line = tool.evaluate(coco, 64, 0.5)
    # the bilinear return rounds the square's corners (mask IoU 0.906) but keeps its extent
    assert "box AP 100.0" in line and "mask AP 90.0" in line and "0.906 / 1.000" in line

    coco = COCO(str(_json(tmp_path, [square, bar])))
    rows = {ann["id"]: box for _, ann, _, box in tool.reduced_masks(coco, 64, 0.5)}
    assert rows[1] == [8.0, 8.0, 24.0, 24.0]
    assert rows[2][2] < 45  # the bar (to x = 60) is gone from the box
    low = {ann["id"]: box for _, ann, _, box in tool.reduced_masks(coco, 64, 0.2)}
    assert low[2][2] > rows[2][2]  # a lower threshold keeps more of its extent

    assert tool.main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
