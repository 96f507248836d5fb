"""datasets/prepare_ade20k_ins_seg.py on a fabricated two-image ADE20K folder, and the ADE20K registration."""

import importlib.util
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools.coco import COCO

from fastinst.data.datasets import DatasetError, register_all_ade20k_instance, validate_coco_json

SCRIPT = os.path.join(
    os.path.dirname(__file__), "..", "..", "datasets", "prepare_ade20k_ins_seg.py"
)


@pytest.fixture(scope="module")
def prepare():
    spec = importlib.util.spec_from_file_location("prepare_ade20k_ins_seg", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ade(tmp_path):
    """ADEChallengeData2016 with one image per split; instance classes 1 (bed) and 2 (lamp)."""
    root = tmp_path / "ADEChallengeData2016"
    for split, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations_instance" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(
            root / "images" / split / f"{stem}.jpg"
        )
        png = np.zeros((12, 16, 3), np.uint8)  # R: instance-challenge category, G: instance id
        png[1:4, 2:6] = (1, 1, 0)  # bed, 3x4
        png[5:11, 8:15] = (2, 2, 0)  # lamp, 6x7
        png[0, 15] = (2, 3, 0)  # lamp, 1 pixel
        Image.fromarray(png).save(root / "annotations_instance" / split / f"{stem}.png")
    cat_ids = tmp_path / "imgCatIds.json"
    cat_ids.write_text(
        json.dumps({"categories": [{"id": 1, "name": "bed"}, {"id": 2, "name": "lamp"}]})
    )
    mapping = tmp_path / "mapping.txt"
    mapping.write_text("Instacne100\tSceneParsing150\tFullADE20K\n1\t8\t165\n2\t37\t1000\n")
    return tmp_path, [
        "--root",
        str(tmp_path),
        "--img-cat-ids",
        str(cat_ids),
        "--catid-mapping",
        str(mapping),
    ]


def test_prepare_writes_coco_json(prepare, ade, capsys):
    root, argv = ade
    prepare.main(argv)
    ade_root = root / "ADEChallengeData2016"
    for split, short in (("training", "train"), ("validation", "val")):
        json_file = str(ade_root / f"ade20k_instance_{short}.json")
        summary = validate_coco_json(json_file, ade_root / "images" / split)
        assert summary["thing_classes"] == ["bed", "lamp"]
        data = json.loads(open(json_file).read())
        assert [c["id"] for c in data["categories"]] == [7, 36]  # SceneParsing150 id - 1
        (image,) = data["images"]
        assert image["id"] == os.path.splitext(image["file_name"])[0]
        assert (image["height"], image["width"]) == (12, 16)
        anns = {a["area"]: a for a in data["annotations"]}
        assert sorted(anns) == [1.0, 12.0, 42.0]
        assert anns[12.0]["bbox"] == [2, 1, 4, 3] and anns[12.0]["category_id"] == 7
        assert anns[42.0]["bbox"] == [8, 5, 7, 6] and anns[42.0]["category_id"] == 36
        assert anns[1.0]["bbox"] == [15, 0, 1, 1]
        assert sorted(a["id"] for a in data["annotations"]) == [1, 2, 3]
        coco = COCO(json_file)
        assert coco.annToMask(anns[42.0]).sum() == 42


def test_prepare_explains_missing_metadata_files(prepare, ade):
    root, argv = ade
    argv[argv.index("--catid-mapping") + 1] = str(root / "absent.txt")
    with pytest.raises(SystemExit, match="absent.txt' not found.*FastInst.*--catid-mapping"):
        prepare.main(argv)


def test_ade20k_registration(prepare, ade):
    root, argv = ade
    try:
        register_all_ade20k_instance(root)
        assert MetadataCatalog.get("ade20k_instance_val").evaluator_type == "coco"
        with pytest.raises(DatasetError, match="prepare_ade20k_ins_seg.py"):
            DatasetCatalog.get("ade20k_instance_val")  # not converted yet
        prepare.main(argv)
        (record,) = DatasetCatalog.get("ade20k_instance_val")
        assert len(record["annotations"]) == 3
        assert MetadataCatalog.get("ade20k_instance_val").thing_classes == ["bed", "lamp"]
    finally:
        register_all_ade20k_instance()  # restore the default registration
