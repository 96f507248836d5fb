"""INPUT.AUTO_SIZE: input sizes chosen from the dataset's annotations (fastinst.engine.input_size)."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog

from fastinst.data.dataset_stats import DatasetStats, coco_dataset_stats
from fastinst.data.synthetic import generate_synthetic_dataset
from fastinst.engine.input_size import choose_input_size, input_size_overrides, user_set_sizes

from .conftest import REPO

# The recipe's "choose for me" values (configs/custom/fastinst_R18_custom.yaml), on the tiny model.
AUTO = [
    "INPUT.AUTO_SIZE.ENABLED", "True",
    "INPUT.DATASET_MAPPER_NAME", "coco_instance_lsj",
    "INPUT.MIN_SIZE_TRAIN", "(0,)",
    "INPUT.MAX_SIZE_TRAIN", "0",
    "INPUT.MIN_SIZE_TEST", "0",
    "INPUT.MAX_SIZE_TEST", "0",
    "INPUT.IMAGE_SIZE", "0",
    "INPUT.MIN_SCALE", "0.0",
    "INPUT.MAX_SCALE", "0.0",
]  # fmt: skip


def stats(short, long, object_rel, aspect_max=None, n=100) -> DatasetStats:
    return DatasetStats(
        num_images=n,
        num_objects=10 * n,
        image_short=short,
        image_long=long,
        aspect=long / short,
        aspect_max=aspect_max or long / short,
        object_size=object_rel * short,
        object_rel=object_rel,
        object_rel_p25=object_rel / 2,
    )


def test_photos_with_small_objects() -> None:
    """500 x 530 photos with 40 px objects (the users' case): 3 cells of 8 px need 24 / 0.08 = 300 -> 320."""
    chosen, why = choose_input_size(stats(500, 530, 0.08), min_cells=3.0, max_crop=256)
    assert chosen["INPUT.MIN_SIZE_TEST"] == 320
    assert chosen["INPUT.MAX_SIZE_TEST"] == 352  # 320 x 1.06 = 339 -> 352
    assert chosen["INPUT.DATASET_MAPPER_NAME"] == "coco_instance_lsj"
    assert chosen["INPUT.IMAGE_SIZE"] == 256  # long side 339 > the 256 px crop cap
    assert chosen["INPUT.MAX_SCALE"] == pytest.approx(339.2 / 256, abs=1e-3)
    assert chosen["INPUT.MIN_SCALE"] == pytest.approx(0.8 * 339.2 / 256, abs=1e-3)
    assert any("3 stride-8 cells" in line for line in why)


def test_more_cells_are_capped_by_the_image_size() -> None:
    """4 cells would need 400 px for 8% objects; 6% objects in 500 px images would need 544 -> 480 (cap)."""
    assert choose_input_size(stats(500, 530, 0.08), min_cells=4.0)[0]["INPUT.MIN_SIZE_TEST"] == 416
    chosen, why = choose_input_size(stats(500, 530, 0.06), min_cells=4.0)
    assert chosen["INPUT.MIN_SIZE_TEST"] == 480
    assert any("capped by the images' median short side (480 px)" in line for line in why)


def test_large_objects_keep_the_smallest_size_and_small_images_fit_one_crop() -> None:
    """Shapes of 25% of 200 px images (the quickstart data): 96 px would do; the rule keeps 160 px."""
    chosen, why = choose_input_size(stats(200, 200, 0.25), min_cells=3.0, max_crop=256)
    assert chosen["INPUT.MIN_SIZE_TEST"] == 160 and chosen["INPUT.MAX_SIZE_TEST"] == 160
    assert chosen["INPUT.IMAGE_SIZE"] == 160  # the whole (square) image: no crop
    assert chosen["INPUT.MAX_SCALE"] == 1.0 and chosen["INPUT.MIN_SCALE"] == 0.8
    assert any("raised to the smallest size" in line for line in why)


def test_wide_high_resolution_images_with_tiny_objects() -> None:
    """1% objects in 1000 x 1500 images: the image's own short side (992 after rounding down to 32)."""
    chosen, _ = choose_input_size(stats(1000, 1500, 0.01, aspect_max=1.5), max_crop=256)
    assert chosen["INPUT.MIN_SIZE_TEST"] == 992
    assert chosen["INPUT.MAX_SIZE_TEST"] == 1504  # 992 x 1.5 = 1488 -> 1504
    assert chosen["INPUT.IMAGE_SIZE"] == 256
    assert chosen["INPUT.MAX_SCALE"] == pytest.approx(1488 / 256, abs=1e-3)


def test_user_sizes_are_never_overridden() -> None:
    data = stats(500, 530, 0.08)
    chosen, why = choose_input_size(data, user={"INPUT.MIN_SIZE_TEST": 600})
    assert "INPUT.MIN_SIZE_TEST" not in chosen
    assert chosen["INPUT.MAX_SIZE_TEST"] == 640  # derived from the user's 600
    assert any("set by you" in line for line in why)

    # the user's training sizes: whole images at those sizes, the test size follows them
    user = {"INPUT.MIN_SIZE_TRAIN": (384, 448), "INPUT.IMAGE_SIZE": 320}
    chosen, _ = choose_input_size(data, user=user)
    assert chosen["INPUT.DATASET_MAPPER_NAME"] == "fastinst_instance"
    assert chosen["INPUT.MIN_SIZE_TEST"] == 448
    assert not set(user) & set(chosen)
    assert "INPUT.MIN_SCALE" not in chosen


def test_user_set_sizes_reads_the_non_zero_keys(make_tiny_cfg) -> None:
    cfg = make_tiny_cfg(*AUTO, "INPUT.MIN_SIZE_TEST", "288")
    assert user_set_sizes(cfg) == {"INPUT.MIN_SIZE_TEST": 288}
    assert set(user_set_sizes(make_tiny_cfg())) >= {"INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST"}


@pytest.fixture
def photo_set(tmp_path_factory):
    """Two 256 px images with 4-6 objects of 15-20% of the side (3 cells at ~224 px, 6 cells: 256 px)."""
    root = tmp_path_factory.mktemp("photos")
    generate_synthetic_dataset(
        root,
        num_train=2,
        num_val=1,
        image_size=256,
        seed=0,
        num_instances=(4, 6),
        object_size=(0.15, 0.2),
        one_class=True,
    )
    return root


def test_overrides_from_a_registered_json_and_resume(photo_set, make_tiny_cfg, tmp_path, capsys):
    from fastinst.data import register_coco_json_dataset

    json_file = photo_set / "annotations" / "instances_train.json"
    register_coco_json_dataset("auto_size_train", json_file, photo_set / "train")
    try:
        cfg = make_tiny_cfg(*AUTO, "DATASETS.TRAIN", "('auto_size_train',)")
        overrides = input_size_overrides(cfg)
        expected, _ = choose_input_size(coco_dataset_stats(json_file), min_cells=3.0)
        got = dict(zip(overrides[::2], overrides[1::2]))
        assert got["INPUT.MIN_SIZE_TEST"] == repr(expected["INPUT.MIN_SIZE_TEST"])
        assert got["INPUT.DATASET_MAPPER_NAME"] == "'coco_instance_lsj'"
        assert "INPUT.AUTO_SIZE" in capsys.readouterr().out

        # a user-set test size stays out of the overrides
        user = make_tiny_cfg(*AUTO, "DATASETS.TRAIN", "('auto_size_train',)")
        user.merge_from_list(["INPUT.MIN_SIZE_TEST", "200"])
        assert "INPUT.MIN_SIZE_TEST" not in input_size_overrides(user)[::2]

        # --resume takes the sizes of OUTPUT_DIR/config.yaml, not new measurements
        out = tmp_path / "output"
        out.mkdir(exist_ok=True)
        saved = {"INPUT": {"MIN_SIZE_TEST": 352, "MAX_SIZE_TEST": 384, "IMAGE_SIZE": 224}}
        (out / "config.yaml").write_text(yaml.safe_dump(saved))
        resumed = input_size_overrides(cfg, resume=True)
        assert resumed == [
            "INPUT.MIN_SIZE_TEST", "352", "INPUT.MAX_SIZE_TEST", "384", "INPUT.IMAGE_SIZE", "224",
        ]  # fmt: skip
    finally:
        DatasetCatalog.remove("auto_size_train")
        MetadataCatalog.remove("auto_size_train")


def test_off_by_default_and_no_json_is_a_clear_error(make_tiny_cfg) -> None:
    assert input_size_overrides(make_tiny_cfg()) == []
    cfg = make_tiny_cfg(*AUTO, "DATASETS.TRAIN", "('no_such_dataset',)")
    with pytest.raises(ValueError, match="no json_file to measure"):
        input_size_overrides(cfg)


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", REPO / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_net_writes_the_chosen_size_and_resume_reuses_it(photo_set, tmp_path, capsys):
    """--coco-train with the recipe's 0 sizes: the chosen sizes land in config.yaml; --resume keeps them
    even when the resumed command's INPUT.AUTO_SIZE.MIN_CELLS would choose another size."""
    train_net = _train_net()
    out = tmp_path / "run"
    json_file = str(photo_set / "annotations" / "instances_train.json")
    common = ["--config-file", str(REPO / "configs/synthetic/tiny-test.yaml")]
    opts = [*AUTO, "OUTPUT_DIR", str(out), "SOLVER.CHECKPOINT_PERIOD", "1"]

    def run(*args) -> int:
        for name in ("custom_coco_train", "custom_coco_val"):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
        return train_net.cli([*common, *args])

    try:
        train = ("--coco-train", json_file, str(photo_set / "train"), *opts)
        assert run(*train, "SOLVER.MAX_ITER", "1") == 0
        saved = yaml.safe_load((out / "config.yaml").read_text())["INPUT"]
        data = coco_dataset_stats(json_file)
        expected, _ = choose_input_size(data, min_cells=3.0)
        assert expected["INPUT.MIN_SIZE_TEST"] == 224
        assert saved["MIN_SIZE_TEST"] == expected["INPUT.MIN_SIZE_TEST"]
        assert saved["IMAGE_SIZE"] == expected["INPUT.IMAGE_SIZE"]
        assert saved["DATASET_MAPPER_NAME"] == "coco_instance_lsj"
        assert (out / "model_final.pth").is_file()

        # resume with 6 cells, which would choose 256 px: the saved sizes win
        assert choose_input_size(data, min_cells=6.0)[0]["INPUT.MIN_SIZE_TEST"] == 256
        more_cells = ("INPUT.AUTO_SIZE.MIN_CELLS", "6.0", "SOLVER.MAX_ITER", "2")
        assert run("--resume", *train, *more_cells) == 0
        assert "resuming with the sizes of" in capsys.readouterr().out
        resumed = yaml.safe_load((out / "config.yaml").read_text())["INPUT"]
        keys = ("MIN_SIZE_TEST", "MAX_SIZE_TEST", "IMAGE_SIZE", "MIN_SCALE", "MAX_SCALE")
        assert {k: resumed[k] for k in keys} == {k: saved[k] for k in keys}
        assert resumed["MIN_SIZE_TEST"] == 224
    finally:
        for name in ("custom_coco_train", "custom_coco_val"):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
