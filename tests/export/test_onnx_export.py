"""ONNX / TorchScript / torch.export export of FastInst, the numpy post-processing and `OnnxFastInst`.

Tolerances (measured values in brackets, tiny R18 model on CPU):
- raw graph outputs: max |exported - PyTorch| <= 1e-4 x max |PyTorch| for pred_logits and pred_masks
  [~2e-6; R50-vd-DCN ~5e-6].
- instances: scores within 1e-4 [~1e-6]; same classes wherever the score is distinct (gap > 1e-5 to its
  neighbours); masks agree on >= 99.9% of the pixels [>= 99.999%]; >= 90% of the boxes identical [100%].
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx.defs
import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks

from fastinst.checkpoint import METADATA_KEY
from fastinst.export import (
    FastInstExportModel,
    OnnxFastInst,
    export_metadata,
    export_onnx,
    export_pt2,
    export_torchscript,
    read_onnx_metadata,
)
from fastinst.export.cli import main as cli_main
from fastinst.export.postprocess import instance_postprocess, masks_to_boxes, resize_bilinear
from fastinst.export.wrapper import ExportableAdaptiveAvgPool2d
from fastinst.modeling.postprocessing import instance_inference
from tests.conftest import REPO, load_recipe_weights, random_image, tiny_model

TINY_YAML = Path(__file__).with_name("tiny.yaml")
EXPORT_TOOL = REPO / "tools" / "export_model.py"
RAW_TOL = 1e-4
SCORE_TOL = 1e-4
MASK_AGREEMENT = 0.999
DCN_OPTS = [
    "MODEL.BACKBONE.NAME", "build_resnet_vd_backbone",
    "MODEL.RESNETS.DEPTH", 50,
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, False, True, True],
]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# helpers


def pytorch_instances(model, image: torch.Tensor, height: int, width: int):
    with torch.no_grad():
        return model([{"image": image, "height": height, "width": width}])[0]["instances"]


def assert_raw_outputs_match(model, run_graph, image: torch.Tensor) -> None:
    """The exported graph's (pred_logits, pred_masks) vs the PyTorch wrapper's, relative to their range."""
    with torch.no_grad():
        expected = FastInstExportModel(model)(image[None].float())
    got = run_graph(image)
    for name, a, b in zip(("pred_logits", "pred_masks"), got, expected):
        b = b[0].numpy()
        a = np.asarray(a).reshape(b.shape)
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err <= RAW_TOL, f"{name}: relative error {err:.2e}"


def assert_instances_match(got, ref) -> None:
    assert got.image_size == ref.image_size
    assert len(got) == len(ref) > 0
    s_got, s_ref = got.scores.numpy(), ref.scores.numpy()
    np.testing.assert_allclose(s_got, s_ref, atol=SCORE_TOL, rtol=0)
    # classes and masks are compared where the order is unambiguous: scores distinct from their neighbours
    gaps = np.abs(np.diff(s_ref))
    distinct = np.ones(len(s_ref), dtype=bool)
    distinct[:-1] &= gaps > 1e-5
    distinct[1:] &= gaps > 1e-5
    assert distinct.mean() >= 0.8, "too many tied scores for a meaningful comparison"
    idx = torch.from_numpy(np.flatnonzero(distinct))
    assert torch.equal(got.pred_classes[idx], ref.pred_classes[idx])
    assert got.pred_classes.dtype == ref.pred_classes.dtype == torch.int64
    agreement = (got.pred_masks[idx] == ref.pred_masks[idx]).float().mean().item()
    assert agreement >= MASK_AGREEMENT, f"masks agree on {agreement:.5f} of the pixels"
    same_box = (got.pred_boxes.tensor[idx] == ref.pred_boxes.tensor[idx]).all(dim=1)
    assert same_box.float().mean().item() >= 0.9


# ---------------------------------------------------------------------------------------------------------
# numpy post-processing (no export needed)


@pytest.mark.parametrize("size", [(37, 53), (8, 12), (200, 96)])
def test_resize_bilinear_matches_torch(size):
    x = torch.randn(4, 16, 24)
    expected = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    got = resize_bilinear(x.numpy(), size)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)
    cropped = resize_bilinear(x.numpy(), size, crop=(size[0] // 2, size[1] // 3))
    # the same sums, but OpenBLAS picks its kernel by matrix shape and CPU (AVX2 here: 2.4e-7 apart on
    # values of magnitude ~1, i.e. 2 float32 ulps), so equal up to float32 rounding, not bit for bit
    np.testing.assert_allclose(cropped, got[:, : size[0] // 2, : size[1] // 3], rtol=0, atol=1e-6)


def test_masks_to_boxes_matches_detectron2():
    masks = torch.rand(6, 30, 40) > 0.97
    masks[0] = False  # empty -> zero box
    masks[1] = False
    masks[1, 5, 7] = True  # single pixel
    expected = BitMasks(masks).get_bounding_boxes().tensor.numpy()
    np.testing.assert_array_equal(masks_to_boxes(masks.numpy()), expected)


@pytest.mark.parametrize(
    "box_threshold, largest_component", [(0.5, False), (0.3, False), (0.3, True)]
)
def test_numpy_postprocess_matches_torch(box_threshold, largest_component):
    g = torch.Generator().manual_seed(1)
    cls = torch.randn(16, 6, generator=g) * 3  # Q = 16, K = 5
    masks = torch.randn(16, 8, 12, generator=g) * 4  # padded 64 x 96: masks of several components
    padded, image, out = (64, 96), (60, 90), (120, 181)
    options = {"box_threshold": box_threshold, "largest_component": largest_component}
    ref = instance_inference(cls, masks, padded, image, out, topk=50, **options)
    got = instance_postprocess(cls.numpy(), masks.numpy(), padded, image, out, topk=50, **options)
    np.testing.assert_allclose(got["scores"], ref.scores.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got["classes"], ref.pred_classes.numpy())
    agreement = (torch.from_numpy(got["masks"]) == (ref.pred_masks > 0.5)).float().mean().item()
    assert agreement >= 0.9999
    np.testing.assert_array_equal(got["boxes"], ref.pred_boxes.tensor.numpy())


@pytest.mark.parametrize("size", [(2, 3), (4, 5), (6, 6), (7, 11)])
def test_exportable_adaptive_pool_matches_torch(size):
    x = torch.randn(2, 8, *size)
    for out in (1, 2, 3, 6):
        expected = torch.nn.AdaptiveAvgPool2d(out)(x)
        torch.testing.assert_close(ExportableAdaptiveAvgPool2d(out)(x), expected)


def test_small_input_policy_matches_model():
    """OnnxFastInst pads small images like FastInst.preprocess with MODEL.FASTINST.SMALL_INPUT 'pad'."""
    model = tiny_model(
        ["MODEL.FASTINST.SMALL_INPUT", "pad", "MODEL.FASTINST.NUM_OBJECT_QUERIES", 100]
    )
    runner = OnnxFastInst.__new__(OnnxFastInst)  # the size logic only needs the metadata
    runner.metadata = export_metadata(model, (64, 64), dynamic=True)
    runner.pad_to_input_size = False
    for h, w in [(40, 300), (300, 40), (100, 100), (170, 170), (20, 20)]:
        padded = model.preprocess([{"image": torch.zeros(3, h, w)}]).tensor.shape[-2:]
        assert runner.model_padded_size(h, w) == tuple(padded)


# ---------------------------------------------------------------------------------------------------------
# exported graphs of the tiny model


@pytest.fixture(scope="module")
def model():
    m = tiny_model()
    load_recipe_weights(m)
    return m.eval()


# What a training run records in its checkpoints (fastinst.checkpoint.ModelRecord): names and the json's ids.
TRAINED_CLASSES = {
    "thing_classes": ["round", "angular", "other", "long", "thin"],
    "thing_dataset_ids": [5, 7, 9, 11, 13],
    "input_format": "RGB",
}


@pytest.fixture(scope="module")
def cli_onnx(model, tmp_path_factory):
    """tools/export_model.py run as a user would: fixed 64 x 96 ONNX with the fixture model's weights."""
    folder = tmp_path_factory.mktemp("cli")
    weights = folder / "tiny.pth"
    torch.save({"model": model.state_dict(), METADATA_KEY: TRAINED_CLASSES}, weights)
    output = folder / "tiny.onnx"
    cmd = [
        sys.executable, str(EXPORT_TOOL), "--config-file", str(TINY_YAML), "--output", str(output),
        "--input-size", "64", "96", "MODEL.WEIGHTS", str(weights),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc, output


@pytest.fixture(scope="module")
def dynamic_onnx(model, tmp_path_factory):
    """Written at opset 18 (the lowest writable; the CLI fixture uses the default 19)."""
    return export_onnx(
        model,
        tmp_path_factory.mktemp("dyn") / "tiny_dyn.onnx",
        (64, 96),
        dynamic=True,
        opset_version=18,
    )


def onnx_opset(path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def test_cli_writes_onnx(cli_onnx):
    proc, output = cli_onnx
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert output.is_file() and "verify:" in proc.stdout
    meta = read_onnx_metadata(output)
    assert meta["input_size"] == [64, 96] and meta["dynamic"] is False
    assert meta["num_queries"] == 16 and meta["num_classes"] == 5
    assert not Path(str(output) + ".data").exists()  # weights inside the one file
    assert onnx_opset(output) == 19  # the default --opset
    assert not output.with_name(output.name + ".partial").exists()
    assert meta["thing_classes"] == TRAINED_CLASSES["thing_classes"]
    assert meta["thing_dataset_ids"] == [5, 7, 9, 11, 13]


def test_exported_model_keeps_its_names_and_ids_in_a_new_process(cli_onnx):
    """The predictor that runs the .onnx in another process names the classes and writes the json's ids."""
    _, output = cli_onnx
    code = (
        "import json, numpy as np; from fastinst import FastInstPredictor; "
        f"p = FastInstPredictor({str(TINY_YAML)!r}, weights={str(output)!r}, score_threshold=0.0, "
        "opts=['INPUT.MIN_SIZE_TEST', 64, 'INPUT.MAX_SIZE_TEST', 96]); "
        "r = p.to_coco_results(np.full((64, 96, 3), 128, np.uint8)); "
        "print(json.dumps([p.metadata.thing_classes, sorted({x['category_id'] for x in r})]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    names, ids = json.loads(proc.stdout.strip().splitlines()[-1])
    assert names == TRAINED_CLASSES["thing_classes"]
    assert ids and set(ids) <= {5, 7, 9, 11, 13}


def test_written_opset_is_the_requested_one(dynamic_onnx):
    assert onnx_opset(dynamic_onnx) == 18


def test_cli_refuses_opsets_it_cannot_write(tmp_path, capsys):
    """torch's exporter implements opset >= 18 and used to write 18 for --opset 13 / 17 (and exit 0)."""
    output = tmp_path / "t13.onnx"
    base = ["--config-file", str(TINY_YAML), "--output", str(output), "--input-size", "64", "96"]
    for opset in (13, 17):
        assert cli_main(base + ["--opset", str(opset)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [
            f"error: Cannot write {output} at ONNX opset {opset}: this model exports at opsets 18 to "
            f"{onnx.defs.onnx_opset_version()}. Pass --opset 18 or higher."
        ]
    newest = onnx.defs.onnx_opset_version()
    assert cli_main(base + ["--opset", str(newest + 1)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: Cannot write {output} at ONNX opset {newest + 1}: this model exports at opsets 18 to "
        f"{newest}. Pass --opset {newest} or lower (the newest the installed onnx knows)."
    ]
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial file


def test_dcn_model_needs_opset_19(tmp_path):
    model = tiny_model(DCN_OPTS).eval()
    with pytest.raises(
        ValueError, match=r"opsets 19 to \d+ \(DeformConv of the DCN backbone needs 19\)"
    ):
        export_onnx(model, tmp_path / "dcn.onnx", (64, 96), opset_version=18)
    assert not (tmp_path / "dcn.onnx").exists()


def test_cli_reports_user_errors(tmp_path, capsys):
    output = str(tmp_path / "x.onnx")
    base = ["--config-file", str(TINY_YAML), "--output", output]
    assert cli_main(base + ["--format", "torchscript", "--dynamic"]) == 2
    assert cli_main(["--config-file", "missing.yaml", "--output", output]) == 2
    assert cli_main(base + ["--input-size", "32", "32"]) == 2  # 2x2 stride-16 map < 16 queries
    err = capsys.readouterr().err
    assert "--dynamic is for" in err and "missing.yaml" in err and "fewer locations" in err
    assert not Path(output).exists()


def test_fixed_onnx_matches_pytorch(model, cli_onnx):
    proc, output = cli_onnx
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runner = OnnxFastInst(output, postprocess="numpy")
    image = random_image(64, 96, seed=3).float()
    assert_raw_outputs_match(model, runner.run, image)
    ref = pytorch_instances(model, image, 128, 190)
    assert_instances_match(runner(image, 128, 190), ref)
    # smaller image with the same padded size: padded with the pixel mean, still exact; torch post-processing
    image = random_image(60, 90, seed=4).float()
    outputs = OnnxFastInst(output).forward([{"image": image, "height": 60, "width": 90}])
    assert_instances_match(outputs[0]["instances"], pytorch_instances(model, image, 60, 90))


def test_fixed_onnx_rejects_other_sizes(cli_onnx):
    runner = OnnxFastInst(cli_onnx[1])
    with pytest.raises(ValueError, match="fixed input size 64x96"):
        runner(random_image(96, 96).float())
    with pytest.raises(ValueError, match="fixed input size"):
        runner(random_image(32, 64).float())
    # opt-in: smaller images padded up to the graph size
    padded = OnnxFastInst(cli_onnx[1], pad_to_input_size=True)
    assert padded(random_image(32, 64).float()).pred_masks.shape[-2:] == (32, 64)


@pytest.mark.parametrize("size", [(64, 96), (100, 130), (96, 64)])
def test_dynamic_onnx_matches_pytorch(model, dynamic_onnx, size):
    runner = OnnxFastInst(dynamic_onnx, postprocess="numpy")
    image = random_image(*size, seed=size[0]).float()
    assert_raw_outputs_match(model, runner.run, image)
    assert_instances_match(runner(image), pytorch_instances(model, image, *size))


def test_exported_post_processing_settings_are_honoured(model, dynamic_onnx):
    """BOX_THRESHOLD / LARGEST_COMPONENT travel in the export metadata; both post-processings apply them."""
    meta = read_onnx_metadata(dynamic_onnx)
    assert meta["box_threshold"] == 0.5 and meta["largest_component"] is False
    image = random_image(100, 130, seed=7).float()
    model.test_box_threshold, model.test_largest_component = 0.3, True
    try:
        assert export_metadata(model, (64, 96), True)["largest_component"] is True
        ref = pytorch_instances(model, image, 100, 130)
    finally:
        model.test_box_threshold, model.test_largest_component = 0.5, False
    for postprocess in ("torch", "numpy"):
        runner = OnnxFastInst(dynamic_onnx, postprocess=postprocess)
        runner.metadata.update(
            box_threshold=0.3, largest_component=True
        )  # as a file exported so would say
        assert_instances_match(runner(image), ref)
    assert not torch.equal(
        pytorch_instances(model, image, 100, 130).pred_boxes.tensor, ref.pred_boxes.tensor
    )


def test_dynamic_onnx_rejects_small_sides(dynamic_onnx):
    runner = OnnxFastInst(dynamic_onnx)
    assert runner.metadata["min_size"] == 64
    with pytest.raises(ValueError, match="sides from 64 to 8192"):
        runner(random_image(30, 300).float())


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_and_pt2_match_pytorch(model, tmp_path):
    image = random_image(64, 96, seed=5).float()
    ts_path = export_torchscript(model, tmp_path / "tiny.ts", (64, 96))
    extra = {"fastinst.json": ""}
    traced = torch.jit.load(str(ts_path), _extra_files=extra)
    assert json.loads(extra["fastinst.json"])["input_size"] == [64, 96]
    with torch.no_grad():
        assert_raw_outputs_match(model, lambda x: traced(x[None]), image)

    pt2 = torch.export.load(str(export_pt2(model, tmp_path / "tiny.pt2", (64, 96)))).module()
    with torch.no_grad():
        assert_raw_outputs_match(model, lambda x: pt2(x[None]), image)


# ---------------------------------------------------------------------------------------------------------
# R50-vd-DCN (torchvision deform_conv2d -> ONNX DeformConv, opset 19)


def test_dcn_backbone_exports(tmp_path):
    model = tiny_model(DCN_OPTS)
    load_recipe_weights(model)  # non-zero offsets, so the deformable sampling matters
    model.eval()
    path = export_onnx(model, tmp_path / "dcn.onnx", (64, 96))
    runner = OnnxFastInst(path)
    image = random_image(64, 96, seed=6).float()
    assert_raw_outputs_match(model, runner.run, image)
    assert_instances_match(runner(image, 100, 150), pytorch_instances(model, image, 100, 150))


def test_predictor_runs_an_exported_onnx_model(model, dynamic_onnx):
    """FastInstPredictor given a .onnx runs it in onnxruntime and agrees with the PyTorch predictor."""
    from fastinst import FastInstPredictor

    weights = dynamic_onnx.parent / "tiny.pth"
    torch.save({"model": model.state_dict()}, weights)
    image = random_image(70, 100, 5).permute(1, 2, 0).numpy()  # HWC
    torch_pred = FastInstPredictor(str(TINY_YAML), weights=str(weights), score_threshold=0.0)
    onnx_pred = FastInstPredictor(str(TINY_YAML), weights=str(dynamic_onnx), score_threshold=0.0)
    ref, got = torch_pred(image), onnx_pred(image)
    assert len(got) == len(ref) > 0
    np.testing.assert_allclose(got.scores.numpy(), ref.scores.numpy(), rtol=0, atol=1e-4)
    assert (got.pred_masks == ref.pred_masks).float().mean() >= 0.999
    with pytest.raises(ValueError, match="fp32"):
        FastInstPredictor(str(TINY_YAML), weights=str(dynamic_onnx), precision="bf16")
