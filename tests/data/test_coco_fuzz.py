"""Fuzz-style test of the COCO validation pass: a valid json with random corruptions of the kinds exporters
produce. Every result is accepted, repaired (and then stable: checking the repaired json again changes nothing)
or refused with a one-line `DatasetError`; nothing else is ever raised."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from fastinst.data import DatasetError
from fastinst.data.datasets.coco_annotations import rle_string_total
from fastinst.data.datasets.coco_validation import check_coco_json

SEEDS = 400


def valid_json() -> dict:
    """2 images (48x64 and 64x64), polygons, a compressed and an uncompressed RLE, one crowd region."""
    mask = np.zeros((48, 64), np.uint8, order="F")
    mask[10:20, 30:50] = 1
    compressed = mask_util.encode(mask)
    compressed["counts"] = compressed["counts"].decode("ascii")
    uncompressed = {"size": [64, 64], "counts": [64 * 5 + 5, 10, 64 * 64 - 64 * 5 - 15]}
    anns = [
        (1, 1, 1, [[2, 2, 20, 2, 20, 20, 2, 20]], [2, 2, 18, 18], 324, 0),
        (2, 1, 2, [[30, 25, 40, 25, 35, 40], [50, 5, 60, 5, 60, 15]], [30, 5, 30, 35], 125, 0),
        (3, 1, 1, compressed, [30, 10, 20, 10], 200, 0),
        (4, 2, 2, uncompressed, [5, 5, 1, 10], 10, 1),
        (5, 2, 1, [[10, 10, 40, 10, 40, 50, 10, 50]], [10, 10, 30, 40], 1200, 0),
    ]
    return {
        "info": {"description": "fuzz"},
        "licenses": [],
        "images": [
            {"id": 1, "file_name": "a.png", "height": 48, "width": 64},
            {"id": 2, "file_name": "b.png", "height": 64, "width": 64},
        ],
        "annotations": [
            dict(
                zip(
                    ("id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd"),
                    a,
                    strict=True,
                )
            )
            for a in anns
        ],
        "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}],
    }


JUNK = [None, 0, -1, 2.5, "x", "", [], {}, [1, 2], {"a": 1}, True, float("nan"), 10**12]


def corrupt(data: dict, rng: random.Random) -> str:
    """Apply one random corruption in place; returns its name."""

    def pick(key: str) -> dict | None:
        entries = data.get(key)
        good = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
        return rng.choice(good) if good else None

    ann, img, cat = pick("annotations"), pick("images"), pick("categories")
    kinds = {
        "ann_id": lambda: ann.update(id=rng.choice([0, 0, 1, -3, "7", "7\n8", None, 2.0, [1]])),
        "ann_id_missing": lambda: ann.pop("id"),
        "ann_field_junk": lambda: ann.update(
            {rng.choice(["image_id", "category_id", "bbox", "area", "iscrowd"]): rng.choice(JUNK)}
        ),
        "ann_field_missing": lambda: ann.pop(
            rng.choice(["image_id", "category_id", "segmentation", "bbox", "area", "iscrowd"])
        ),
        "bbox_xyxy": lambda: ann.update(
            bbox=[
                ann["bbox"][0],
                ann["bbox"][1],
                ann["bbox"][0] + ann["bbox"][2],
                ann["bbox"][1] + ann["bbox"][3],
            ]
        ),
        "area_off": lambda: ann.update(area=rng.choice([0, 0.01, 1e9, -5, ann["area"] * 3])),
        "polygon_part": lambda: ann.update(
            segmentation=[
                *(ann["segmentation"] if isinstance(ann["segmentation"], list) else []),
                rng.choice(
                    [[1, 2, 3, 4], [1, 2, 3, 4, 5], [1, None, 3, 4, 5, 6], ["a"] * 6, [], [[1, 2]]]
                ),
            ]
        ),
        "polygon_outside": lambda: ann.update(segmentation=[[500, 500, 600, 500, 600, 600]]),
        "segmentation_junk": lambda: ann.update(segmentation=rng.choice(JUNK + [[[]], [[[1, 2]]]])),
        "rle_counts": lambda: ann.update(
            segmentation={
                "size": [img["height"], img["width"]],
                "counts": rng.choice(
                    [[0, 5000], [1, 2], [-1, 10], "!!", "0", [1.5, 2], None, "PPYo0"]
                ),
            }
        ),
        "rle_size": lambda: ann.update(
            segmentation={"size": rng.choice([[1, 1], None, [48], ["a", "b"]]), "counts": [1]}
        ),
        "crowd": lambda: [a.update(iscrowd=1) for a in data["annotations"]],
        "image_size": lambda: img.update(
            {rng.choice(["height", "width"]): rng.choice([0, -1, "48", None, 47, 3.5])}
        ),
        "image_size_missing": lambda: img.pop(rng.choice(["height", "width"])),
        "image_file": lambda: img.update(
            file_name=rng.choice(["empty.png", "text.png", "gone.png", None, 3])
        ),
        "image_id": lambda: img.update(id=rng.choice([None, "1", [1], 2, 1.5])),
        "image_missing_key": lambda: img.pop(rng.choice(["id", "file_name"])),
        "category": lambda: cat.update({rng.choice(["id", "name"]): rng.choice(JUNK)}),
        "category_dup": lambda: data["categories"].append(dict(cat)),
        "entry_junk": lambda: data[rng.choice(["images", "annotations", "categories"])].append(
            rng.choice(JUNK)
        ),
        "top_level": lambda: data.update(
            {rng.choice(["images", "annotations", "categories"]): rng.choice(JUNK)}
        ),
        "no_info": lambda: (data.pop("info", None), data.pop("licenses", None)),
        "drop_annotations": lambda: data.update(
            annotations=data["annotations"][: rng.randrange(2)]
        ),
    }
    name = rng.choice(sorted(kinds))
    try:
        kinds[name]()
    except (
        AttributeError,
        KeyError,
        TypeError,
        IndexError,
    ):  # an earlier corruption broke the structure
        return f"{name} (not applicable)"
    return name


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_images")
    Image.new("RGB", (64, 48)).save(root / "a.png")
    Image.new("L", (64, 64)).save(root / "b.png")
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    return root


def test_random_corruptions_are_repaired_refused_or_accepted(tmp_path, image_root):
    outcomes = {"accepted": 0, "repaired": 0, "refused": 0}
    for seed in range(SEEDS):
        rng = random.Random(seed)
        data = valid_json()
        applied = [corrupt(data, rng) for _ in range(rng.randint(1, 3))]
        json_file = tmp_path / "fuzz.json"
        json_file.write_text(json.dumps(data))
        try:
            check = check_coco_json(json_file, image_root)
        except DatasetError as e:
            message = str(e)
            assert "\n" not in message, (seed, applied, message)
            assert str(json_file) in message, (seed, applied, message)
            outcomes["refused"] += 1
            continue
        # anything other than DatasetError propagates and fails the test, naming nothing: add the seed
        outcomes["repaired" if check.changed else "accepted"] += 1
        again_file = tmp_path / "again.json"
        again_file.write_text(json.dumps(check.data))
        again = check_coco_json(again_file, image_root)
        assert not again.changed, (seed, applied, again.warnings)
        assert again.data["annotations"] == check.data["annotations"], (seed, applied)
        coco = COCO(str(again_file))  # pycocotools reads it and decodes every mask
        for ann in coco.dataset["annotations"]:
            pixels = int(coco.annToMask(ann).sum())
            assert pixels > 0 and pixels / 2 - 4 <= ann["area"] <= 2 * pixels + 4, (
                seed,
                applied,
                ann,
            )
            assert len(ann["bbox"]) == 4 and ann["iscrowd"] in (0, 1), (seed, applied, ann)
    assert min(outcomes.values()) >= 10, outcomes  # every outcome is exercised (17 / 96 / 287 now)


def test_fuzz_corruptions_of_one_kind_report_every_id(tmp_path, image_root):
    """Seven annotations with id 0 or a duplicate and seven bad RLEs: the messages count all of them."""
    data = valid_json()
    base = data["annotations"][0]
    data["annotations"] = [copy.deepcopy(base) | {"id": 0} for _ in range(7)]
    json_file = tmp_path / "ids.json"
    json_file.write_text(json.dumps(data))
    check = check_coco_json(json_file, image_root)
    assert check.warnings[0].endswith(": 0, 0, 0, 0, 0, ... (7 in total)")
    for i, a in enumerate(data["annotations"]):
        a.update(id=i + 1, segmentation={"size": [48, 64], "counts": [0, 9999]})
    json_file.write_text(json.dumps(data))
    with pytest.raises(
        DatasetError, match=r": 1 \(9999 pixels; .*, 5 \(9999 pixels; .*, \.\.\. \(7 in total\)"
    ):
        check_coco_json(json_file, image_root)


def test_compressed_rle_totals_match_pycocotools():
    """The validation's vectorised reading of compressed RLE strings against pycocotools' own encoder."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        mask = np.asfortranarray(
            rng.random((h, w)) < rng.choice([0.0, 0.02, 0.5, 0.98, 1.0]), np.uint8
        )
        counts = mask_util.encode(mask)["counts"]
        assert rle_string_total(counts) == rle_string_total(counts.decode()) == h * w, trial
    assert [rle_string_total(s) for s in ("", "!!", "0`", "1")] == [0, None, None, 1]
