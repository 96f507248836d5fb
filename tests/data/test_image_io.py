"""One image reader: every Pillow mode read the same way in training, evaluation and the predictor; unreadable
files named; a training image that fails to decode is skipped, not fatal."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data.common import MapDataset
from PIL import Image

import fastinst
from fastinst.data.dataset_mappers import (
    FastInstInstanceDatasetMapper,
    InstanceTestDatasetMapper,
    SkipUnreadableImages,
    skipped_images_summary,
)
from fastinst.data.image_io import UnreadableImageError, read_image, read_image_header
from fastinst.predictor import UnreadableImageError as PredictorReadError
from fastinst.predictor import to_rgb

H, W = 12, 20
GRAY = np.tile(np.arange(W, dtype=np.uint8) * 12, (H, 1))  # (H, W) 0..228


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def truncated_jpeg() -> bytes:
    """A JPEG whose header is intact and whose data stops halfway (an interrupted copy)."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def mode_files(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """One file per mode and the RGB array a user expects from it."""
    rgb = np.stack([GRAY, 255 - GRAY, np.full_like(GRAY, 77)], axis=2)  # (H, W, 3)
    gray3 = np.repeat(GRAY[:, :, None], 3, axis=2)
    palette = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    files = {
        "RGB": (save(tmp_path / "rgb.png", Image.fromarray(rgb)), rgb),
        "L": (save(tmp_path / "l.png", Image.fromarray(GRAY)), gray3),
        "P": (save(tmp_path / "p.png", palette), np.asarray(palette.convert("RGB"))),
        "RGBA": (
            save(tmp_path / "rgba.png", Image.fromarray(np.dstack([rgb, np.full_like(GRAY, 9)]))),
            rgb,  # alpha ignored: the stored colours
        ),
        "I;16": (
            save(tmp_path / "i16.png", Image.fromarray(GRAY.astype(np.uint16) * 257)),
            gray3,  # 0..65535 scaled to 0..255
        ),
    }
    cmyk = Image.fromarray(rgb).convert("CMYK")
    files["CMYK"] = (save(tmp_path / "cmyk.tif", cmyk), np.asarray(cmyk.convert("RGB")))
    return files


def test_every_mode_reads_as_expected_and_the_same_everywhere(tmp_path):
    cfg = get_cfg()
    fastinst.add_fastinst_config(cfg)
    cfg.INPUT.FORMAT = "RGB"  # as the shipped configs
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = H, 1000  # no resize
    test_mapper = InstanceTestDatasetMapper(cfg, is_train=False)
    for mode, (path, expected) in mode_files(tmp_path).items():
        with Image.open(path) as im:
            assert im.mode == mode, path
        image = read_image(path)
        assert image.dtype == np.uint8 and image.shape == (H, W, 3), mode
        np.testing.assert_array_equal(image, expected, err_msg=mode)
        np.testing.assert_array_equal(read_image(path, "BGR"), expected[:, :, ::-1], err_msg=mode)
        np.testing.assert_array_equal(to_rgb(str(path)), expected, err_msg=mode)  # the predictor
        with Image.open(path) as im:
            np.testing.assert_array_equal(to_rgb(im), expected, err_msg=mode)  # a PIL image
        mapped = test_mapper({"file_name": str(path), "height": H, "width": W, "image_id": 1})
        np.testing.assert_array_equal(mapped["image"].permute(1, 2, 0).numpy(), expected)


def test_exif_orientation_is_applied_unless_the_dataset_says_stored(tmp_path):
    stored = np.zeros((H, W, 3), np.uint8)
    stored[:, : W // 2] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = save(tmp_path / "exif6.png", Image.fromarray(stored), exif=exif)
    header = read_image_header(path)
    assert (header.width, header.height, header.stored_width, header.stored_height) == (H, W, W, H)
    upright = read_image(path)
    assert upright.shape == (W, H, 3)
    np.testing.assert_array_equal(
        upright, np.rot90(stored, k=-1)
    )  # clockwise: the white half on top
    np.testing.assert_array_equal(to_rgb(str(path)), upright)
    np.testing.assert_array_equal(read_image(path, exif_transpose=False), stored)


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "cut.jpg").write_bytes(truncated_jpeg())
    save(tmp_path / "float.tif", Image.fromarray(GRAY.astype(np.float32)))
    expected = {
        "empty.png": "empty file (0 bytes)",
        "text.jpg": "not an image, or a format Pillow cannot read",
        "cut.jpg": "truncated or corrupt image data (OSError: ",
        "float.tif": "32-bit floating-point pixels (Pillow mode F) have no standard 0-255 scale",
        "gone.png": "file not found",
    }
    for name, reason in expected.items():
        path = str(tmp_path / name)
        with pytest.raises(UnreadableImageError) as e:
            read_image(path)
        assert str(e.value).startswith(f"Cannot read image {path} ({reason}")
        assert "\n" not in str(e.value)
        if name != "gone.png":
            with pytest.raises(PredictorReadError, match=f"Cannot read image {path}"):
                to_rgb(path)
    read_image_header(tmp_path / "cut.jpg")  # the header alone is fine: found only when decoding


def test_training_skips_an_image_that_fails_to_decode(tmp_path, caplog):
    good = save(tmp_path / "good.png", Image.fromarray(np.zeros((32, 32, 3), np.uint8)))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(truncated_jpeg())
    cfg = get_cfg()
    fastinst.add_fastinst_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.CROP.ENABLED = (32,), 32, False
    record = tmp_path / "skipped_images.txt"
    mapper = SkipUnreadableImages(FastInstInstanceDatasetMapper(cfg, is_train=True), str(record))
    dicts = [
        {"file_name": str(f), "height": 32, "width": 32, "image_id": i, "annotations": []}
        for i, f in enumerate((bad, good))
    ]
    dataset = MapDataset(dicts, mapper)
    assert [dataset[0]["file_name"], dataset[1]["file_name"]] == [str(good), str(good)]
    assert record.read_text().startswith(f"{bad}\ttruncated or corrupt image data")
    assert skipped_images_summary(str(record)) == (
        f"1 training image(s) could not be decoded and were skipped 1 time(s) in all: {bad} (list in {record}). "
        "Replace or remove them from the json."
    )
    assert skipped_images_summary(str(tmp_path / "none.txt")) is None


def test_an_evaluation_worker_error_becomes_its_one_line_message():
    from fastinst.data import DatasetError
    from fastinst.engine.evaluation import ProgressLoader

    class WorkerLoader:  # what torch re-raises from a loader worker: the worker's traceback in the message
        def __len__(self):
            return 2

        def __iter__(self):
            yield {"image_id": 1}
            raise DatasetError(
                "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                'last):\n  File "x.py", line 1, in f\nfastinst.data.datasets.coco_validation.DatasetError: '
                "Cannot read image a.png (empty file (0 bytes)). Evaluation needs every image of the dataset.\n"
            )

    with pytest.raises(DatasetError) as e:
        list(ProgressLoader(WorkerLoader(), desc="eval"))
    assert str(e.value) == (
        "Cannot read image a.png (empty file (0 bytes)). Evaluation needs every image of the dataset."
    )
