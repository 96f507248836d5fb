"""FastInstPredictor: input kinds, thresholds, batches, COCO results and checkpoint errors (tiny model, CPU)."""

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image
from pycocotools import mask as mask_util

from fastinst.checkpoint import METADATA_KEY, CheckpointMismatchError, CheckpointReadError
from fastinst.predictor import (
    FastInstPredictor,
    UnreadableImageError,
    build_predictor_cfg,
    dataset_metadata,
    instances_to_coco_results,
    resolve_config,
)
from tests.conftest import REPO, tiny_cfg

TINY_YAML = REPO / "tests" / "fixtures" / "tiny.yaml"
SMALL_TEST_SIZE = ["INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 128]


def save_checkpoint(path, opts=None):
    torch.manual_seed(0)
    model = build_model(build_predictor_cfg(TINY_YAML, opts))
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("predictor") / "tiny.pth")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return FastInstPredictor(TINY_YAML, weights=checkpoint, score_threshold=0.0)


def rgb_image(h=64, w=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def assert_same(a, b):
    assert a.image_size == b.image_size
    assert torch.equal(a.pred_masks, b.pred_masks)
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_output_fields(predictor):
    instances = predictor(rgb_image(50, 75), format="RGB")
    k = len(instances)
    # 16 queries x 5 classes = 80 (query, class) pairs <= TEST.DETECTIONS_PER_IMAGE (100); threshold 0 keeps all
    assert k == 80
    assert instances.image_size == (50, 75)
    assert instances.pred_masks.shape == (k, 50, 75) and instances.pred_masks.dtype == torch.bool
    assert instances.pred_boxes.tensor.shape == (k, 4)
    assert instances.pred_classes.dtype == torch.int64
    assert (instances.scores[:-1] >= instances.scores[1:]).all()  # sorted, descending
    for field in (instances.pred_masks, instances.scores, instances.pred_boxes.tensor):
        assert field.device.type == "cpu"


def test_input_kinds_agree(predictor, tmp_path):
    rgb = rgb_image()
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), rgb[:, :, ::-1])  # lossless, BGR on disk as OpenCV writes it
    reference = predictor(rgb, format="RGB")
    assert_same(predictor(str(path)), reference)
    assert_same(predictor(path), reference)
    assert_same(predictor(np.ascontiguousarray(rgb[:, :, ::-1])), reference)  # BGR, the default
    assert_same(predictor(Image.fromarray(rgb)), reference)
    assert not torch.equal(predictor(rgb).scores, reference.scores)  # channel order matters


def test_grayscale_and_alpha_inputs(predictor):
    rgb = rgb_image(seed=1)
    gray = rgb[:, :, 1]
    from_gray = predictor(np.repeat(gray[:, :, None], 3, axis=2))
    assert_same(predictor(gray), from_gray)
    assert_same(predictor(gray[:, :, None]), from_gray)
    assert_same(predictor(Image.fromarray(gray, mode="L")), from_gray)

    reference = predictor(rgb, format="RGB")
    alpha = np.full(gray.shape + (1,), 7, np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    assert_same(predictor(rgba, format="RGB"), reference)
    assert_same(predictor(np.concatenate([rgb[:, :, ::-1], alpha], axis=2)), reference)  # BGRA
    assert_same(predictor(Image.fromarray(rgba, mode="RGBA")), reference)


def test_bad_inputs(predictor, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    for path in (empty, text):
        with pytest.raises(UnreadableImageError, match=path.name):
            predictor(path)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        predictor(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="uint8"):
        predictor(rgb_image().astype(np.float32))
    with pytest.raises(ValueError, match="format"):
        predictor(rgb_image(), format="HSV")
    with pytest.raises(TypeError):
        predictor(torch.zeros(3, 8, 8))


def test_score_threshold_filters(predictor):
    rgb = rgb_image(seed=2)
    everything = predictor(rgb, format="RGB")
    # random weights give small scores: pick thresholds inside the observed distribution
    for threshold in (float(everything.scores.median()), float(everything.scores[2])):
        predictor.score_threshold = threshold
        try:
            kept = predictor(rgb, format="RGB")
        finally:
            predictor.score_threshold = 0.0
        assert 0 < len(kept) < len(everything)
        assert (kept.scores >= threshold).all()
        assert len(kept) == int((everything.scores >= threshold).sum())
        assert_same(kept, everything[: len(kept)])


def test_predict_batch_matches_single_calls(predictor):
    images = [rgb_image(seed=s) for s in range(3)]
    batched = predictor.predict_batch(images, batch_size=2, format="RGB")  # batches of 2 and 1
    assert len(batched) == 3
    for image, got in zip(images, batched):
        want = predictor(image, format="RGB")
        assert len(got) == len(want)
        torch.testing.assert_close(got.scores, want.scores, atol=1e-5, rtol=1e-4)
        assert torch.equal(got.pred_classes, want.pred_classes)
        # a rounding difference of the batched convolutions can flip a pixel at a mask border
        assert (got.pred_masks != want.pred_masks).float().mean() < 1e-3
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict_batch(images, batch_size=0)


def test_coco_results_decode_to_masks(predictor):
    images = [rgb_image(seed=3), rgb_image(48, 80, seed=4)]
    results = predictor.to_coco_results(images, image_ids=[11, 22], format="RGB")
    json.dumps(results)  # plain JSON types (RLE counts as str)
    for image, image_id in zip(images, (11, 22)):
        instances = predictor(image, format="RGB")
        mine = [r for r in results if r["image_id"] == image_id]
        assert len(mine) == len(instances)
        decoded = mask_util.decode([r["segmentation"] for r in mine])  # (H, W, k)
        assert np.array_equal(decoded.transpose(2, 0, 1).astype(bool), instances.pred_masks.numpy())
        # the tiny config's classes are unnamed (no dataset id map): category_id = class + 1
        assert [r["category_id"] for r in mine] == (instances.pred_classes + 1).tolist()
        np.testing.assert_allclose([r["score"] for r in mine], instances.scores.numpy(), rtol=1e-6)
        x0, y0, x1, y1 = instances.pred_boxes.tensor[0].tolist()
        assert mine[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    single = predictor.to_coco_results(images[0], format="RGB")
    assert {r["image_id"] for r in single} == {0}


def test_coco_category_ids_follow_dataset_map(predictor):
    instances = predictor(rgb_image(seed=5), format="RGB")[:10]
    id_map = {c: 100 + 3 * c for c in range(5)}  # contiguous -> dataset id
    results = instances_to_coco_results(instances, "img", id_map)
    assert [r["category_id"] for r in results] == [
        100 + 3 * c for c in instances.pred_classes.tolist()
    ]
    assert instances_to_coco_results(instances[:0], "img") == []


def test_checkpoint_errors(tmp_path, checkpoint):
    wrong = save_checkpoint(tmp_path / "three_classes.pth", ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3])
    with pytest.raises(CheckpointMismatchError, match="three_classes.pth.*NUM_CLASSES"):
        FastInstPredictor(TINY_YAML, weights=wrong)
    with pytest.raises(FileNotFoundError, match="no_such_model.pth"):
        FastInstPredictor(TINY_YAML, weights=tmp_path / "no_such_model.pth")
    with pytest.raises(FileNotFoundError, match="no_such_model.pth"):
        FastInstPredictor(TINY_YAML, opts=["MODEL.WEIGHTS", str(tmp_path / "no_such_model.pth")])


def test_truncated_checkpoint_is_named(tmp_path, checkpoint):
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(open(checkpoint, "rb").read()[:5000])  # an interrupted download or copy
    with pytest.raises(CheckpointReadError) as error:
        FastInstPredictor(TINY_YAML, weights=truncated)
    message = str(error.value)
    assert message.startswith(f"{truncated}: cannot be read as a PyTorch checkpoint (5000 bytes;")
    assert "probably incomplete" in message and "\n" not in message


NAMES_AND_IDS = ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3, "DATASETS.TEST", ("not_registered",)]


def test_dataset_metadata_sources(caplog):
    # 1. the config keys that training writes into OUTPUT_DIR/config.yaml
    cfg = build_predictor_cfg(
        TINY_YAML,
        [*NAMES_AND_IDS, "DATASETS.THING_CLASSES", ["round", "angular", "other"]]
        + ["DATASETS.THING_DATASET_IDS", [5, 7, 9]],
    )
    meta = dataset_metadata(cfg)
    assert meta.thing_classes == ["round", "angular", "other"]
    assert meta.thing_dataset_id_to_contiguous_id == {5: 0, 7: 1, 9: 2}
    # 2. the record of a checkpoint, used with another config
    record = {"thing_classes": ["a", "b", "c"], "thing_dataset_ids": [2, 4, 6]}
    meta = dataset_metadata(build_predictor_cfg(TINY_YAML, NAMES_AND_IDS), record)
    assert meta.thing_classes == ["a", "b", "c"]
    assert meta.thing_dataset_id_to_contiguous_id == {2: 0, 4: 1, 6: 2}
    # 3. official configs: COCO's names and ids, from the registered dataset
    coco = dataset_metadata(build_predictor_cfg("fastinst_R50_ppm-fpn_x1_576"))
    assert len(coco.thing_classes) == 80 and coco.thing_classes[:2] == ["person", "bicycle"]
    assert coco.thing_dataset_id_to_contiguous_id[90] == 79
    # 4. nothing known: stand-ins, and a warning that says so
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastinst.predictor"):
        meta = dataset_metadata(build_predictor_cfg(TINY_YAML, NAMES_AND_IDS))
    assert meta.thing_classes == ["class 0", "class 1", "class 2"]
    assert meta.get("thing_dataset_id_to_contiguous_id") is None
    assert "stand-ins" in caplog.text and "'not_registered' is not registered" in caplog.text
    with pytest.raises(ValueError, match="THING_DATASET_IDS"):
        dataset_metadata(
            build_predictor_cfg(
                TINY_YAML,
                [*NAMES_AND_IDS, "DATASETS.THING_CLASSES", ["a", "b", "c"]]
                + ["DATASETS.THING_DATASET_IDS", [1, 1, 2]],
            )
        )


def test_checkpoint_record_names_the_classes_and_ids(tmp_path, caplog):
    torch.manual_seed(0)
    model = build_model(build_predictor_cfg(TINY_YAML, NAMES_AND_IDS))
    path = tmp_path / "custom.pth"
    record = {"thing_classes": ["round", "angular", "other"], "thing_dataset_ids": [5, 7, 9]}
    torch.save({"model": model.state_dict(), METADATA_KEY: record}, path)
    with caplog.at_level(logging.WARNING, logger="fastinst.predictor"):
        predictor = FastInstPredictor(
            TINY_YAML, weights=path, score_threshold=0, opts=NAMES_AND_IDS
        )
    assert "stand-ins" not in caplog.text
    assert predictor.metadata.thing_classes == ["round", "angular", "other"]
    results = predictor.to_coco_results(rgb_image(seed=2), format="RGB")
    assert results and {r["category_id"] for r in results} <= {5, 7, 9}


def test_config_resolution():
    path = resolve_config("fastinst_R50_ppm-fpn_x1_576")
    assert path.is_file() and path.parent.name == "instance-segmentation"
    assert resolve_config("fastinst_R50_ppm-fpn_x1_576.yaml") == path
    with pytest.raises(FileNotFoundError, match="not_a_model"):
        resolve_config("not_a_model")
    # the official YAMLs name an ImageNet backbone as MODEL.WEIGHTS: refused before building anything
    with pytest.raises(ValueError, match="ImageNet backbone"):
        FastInstPredictor("fastinst_R50_ppm-fpn_x1_576")


def test_cfgnode_random_weights_and_bf16():
    cfg = tiny_cfg(SMALL_TEST_SIZE)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("fastinst.predictor")
    logger.addHandler(handler)
    try:
        predictor = FastInstPredictor(cfg, score_threshold=0.0, precision="bf16")
    finally:
        logger.removeHandler(handler)
    assert any("random weights" in r.getMessage() for r in records)
    assert cfg.is_frozen() and cfg.MODEL.WEIGHTS == ""  # the caller's config is not modified
    assert predictor.metadata.thing_classes == [f"class {i}" for i in range(5)]
    assert predictor.class_name(2) == "class 2"
    instances = predictor(rgb_image())
    assert len(instances) == 80 and instances.scores.dtype == torch.float32
    with pytest.raises(ValueError, match="fp16"):
        FastInstPredictor(cfg, precision="fp16")
