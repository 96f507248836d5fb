"""OpenVINO IR export (fp32 and NNCF INT8), `OpenVinoFastInst`, the predictor with a .xml, and bad input.

Tolerances (measured values in brackets, tiny R18 model, CPU):
- fp32 IR raw outputs: as the ONNX export, max |IR - PyTorch| <= 1e-4 x max |PyTorch| [~1e-6]; instances as in
  test_onnx_export.py.
- INT8 IR vs the fp32 IR on a briefly trained model (30 iterations on coloured rectangles): of the 10 best fp32
  instances of each of 4 images, >= 90% have an INT8 instance of the same class with mask IoU >= 0.75 (greedy
  matching by IoU), the mean IoU is >= 0.85 and the sorted scores differ by <= 0.02. Measured with nothing kept
  in fp32: IoU 0.78-0.98 (mean 0.91), scores within 0.004.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastinst.export import (
    OpenVinoFastInst,
    export_onnx,
    onnx_to_openvino,
    read_onnx_metadata,
    read_openvino_metadata,
)
from fastinst.export.cli import main as cli_main
from fastinst.export.openvino_model import calibration_images, calibration_inputs
from tests.conftest import REPO, load_recipe_weights, random_image, tiny_model
from tests.export.test_onnx_export import (
    TINY_YAML,
    assert_instances_match,
    assert_raw_outputs_match,
    pytorch_instances,
)

EXPORT_TOOL = REPO / "tools" / "export_model.py"
INT8_TOP = 10  # best fp32 instances compared per image
INT8_MIN_IOU = 0.75  # mask IoU of a matched INT8 instance
INT8_MIN_MATCHED = 0.9  # share of the fp32 instances that must be matched
INT8_MIN_MEAN_IOU = 0.85
INT8_SCORE_TOL = 0.02


@pytest.fixture(scope="module")
def model():
    m = tiny_model()
    load_recipe_weights(m)
    return m.eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """(onnx, fp32 IR) of the tiny model at a fixed 64 x 96."""
    folder = tmp_path_factory.mktemp("ov")
    onnx_path = export_onnx(model, folder / "tiny.onnx", (64, 96))
    return onnx_path, onnx_to_openvino(onnx_path, folder / "tiny.xml")


def test_ir_has_the_onnx_inputs_outputs_and_metadata(exported):
    import openvino as ov

    onnx_path, xml = exported
    assert xml.with_suffix(".bin").is_file()
    assert read_openvino_metadata(xml) == {**read_onnx_metadata(onnx_path), "precision": "fp32"}
    ov_model = ov.Core().read_model(str(xml))
    assert [p.get_any_name() for p in ov_model.inputs] == ["image"]
    assert list(ov_model.inputs[0].get_shape()) == [1, 3, 64, 96]
    assert [p.get_any_name() for p in ov_model.outputs] == ["pred_logits", "pred_masks"]
    assert [list(p.get_shape()) for p in ov_model.outputs] == [[1, 16, 6], [1, 16, 8, 12]]
    assert str(ov_model.outputs[1].get_element_type()) == "<Type: 'float32'>"


def test_fp32_ir_matches_pytorch(model, exported):
    runner = OpenVinoFastInst(exported[1], postprocess="numpy")
    image = random_image(64, 96, seed=3).float()
    assert_raw_outputs_match(model, runner.run, image)
    assert_instances_match(runner(image, 128, 190), pytorch_instances(model, image, 128, 190))


def test_predictor_runs_an_openvino_model(model, exported, tmp_path):
    """FastInstPredictor(weights="model.xml") runs the IR and agrees with the PyTorch predictor."""
    from fastinst import FastInstPredictor

    weights = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict()}, weights)
    opts = [
        "INPUT.MIN_SIZE_TEST",
        64,
        "INPUT.MAX_SIZE_TEST",
        96,
    ]  # the 64 x 96 image is not resized
    image = random_image(64, 96, 7).permute(1, 2, 0).numpy()  # HWC
    ref = FastInstPredictor(str(TINY_YAML), weights=weights, score_threshold=0.0, opts=opts)(image)
    ov_pred = FastInstPredictor(str(TINY_YAML), weights=exported[1], score_threshold=0.0, opts=opts)
    got = ov_pred(image)
    assert len(got) == len(ref) > 0
    np.testing.assert_allclose(got.scores.numpy(), ref.scores.numpy(), rtol=0, atol=1e-4)
    assert got.pred_masks.dtype == torch.bool
    assert (got.pred_masks == ref.pred_masks).float().mean() >= 0.999
    with pytest.raises(ValueError, match="without compile"):
        FastInstPredictor(str(TINY_YAML), weights=exported[1], compile=True)


def test_op_times_say_where_the_graph_time_goes(exported):
    """PERF_COUNT profiling: every kind of op of the tiny graph, in ms, largest first; refused without it."""
    runner = OpenVinoFastInst(exported[1], num_threads=1, perf_count=True)
    image = random_image(64, 96, seed=3).float()
    runner(image)
    times = runner.op_times()
    kinds = list(times)
    assert any(k.startswith("Convolution ") for k in kinds)  # "Convolution <oneDNN kernel>"
    assert all(v >= 0 for v in times.values()) and sum(times.values()) > 0
    assert list(times.values()) == sorted(times.values(), reverse=True)
    with pytest.raises(
        RuntimeError, match=r"op_times\(\) needs an OpenVinoFastInst created with perf_count"
    ):
        OpenVinoFastInst(exported[1]).op_times()


# ---------------------------------------------------------------------------------------------------------
# bad input


def test_unreadable_model_files_are_named(exported, tmp_path):
    """One line that names the file and says what is wrong with it (OpenVINO's own message is several lines
    of source locations, the reason last; a non-XML file also made its TensorFlow frontend print to stderr)."""
    import shutil

    from fastinst import FastInstPredictor

    xml, data = exported[1].read_text(), exported[1].with_suffix(".bin").read_bytes()

    def ir(name: str, text: str = xml, weights: bytes | None = data):
        path = tmp_path / f"{name}.xml"
        path.write_text(text)
        if weights is not None:
            path.with_suffix(".bin").write_bytes(weights)
        return path

    cases = {
        ir(
            "no_bin", weights=None
        ): "OpenVINO cannot read the model {}: its weights file {} is missing (an "
        "IR is the .xml and the .bin written beside it)",
        ir(
            "empty_bin", weights=b""
        ): "OpenVINO cannot read the model {}: its weights file {} is empty (an IR "
        "is the .xml and the .bin written beside it)",
        ir(
            "short_bin", weights=data[: len(data) // 2]
        ): "OpenVINO cannot read the model {}: Incorrect weights in bin file!",
        ir(
            "text", "just some text\n"
        ): "{} is not an OpenVINO IR: not an XML file (syntax error: line 1, column 0)",
        ir(
            "empty", ""
        ): "{} is not an OpenVINO IR: not an XML file (no element found: line 1, column 0)",
        ir(
            "html", "<html><body/></html>"
        ): "{} is not an OpenVINO IR: its root element is <html>, not <net>",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError) as info:
            OpenVinoFastInst(path)
        assert str(info.value) == message.format(path, path.with_suffix(".bin"))
    cut = ir("cut_xml", xml[: len(xml) // 2])
    with pytest.raises(
        ValueError, match=f"^OpenVINO cannot read the model {cut}: Error parsing .* at offset"
    ):
        OpenVinoFastInst(cut)
    with pytest.raises(ValueError, match=f"OpenVINO cannot read the model {cut}"):
        FastInstPredictor(str(TINY_YAML), weights=cut)
    shutil.copy(exported[1], tmp_path / "good.xml")
    shutil.copy(exported[1].with_suffix(".bin"), tmp_path / "good.bin")
    OpenVinoFastInst(tmp_path / "good.xml")  # the same files, whole: read
    with pytest.raises(FileNotFoundError, match="Exported model file not found: .*missing.xml"):
        OpenVinoFastInst(tmp_path / "missing.xml")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx file")
    with pytest.raises(ValueError, match=f"onnxruntime cannot read the model {garbage}: "):
        FastInstPredictor(str(TINY_YAML), weights=garbage)


@pytest.mark.parametrize(
    "words, keep, opts",
    [
        ([], None, []),  # the default scopes
        (["--keep-fp32"], [], []),
        (["--keep-fp32", "none"], [], []),
        (["--keep-fp32", "MODEL.WEIGHTS", "w.pth"], [], ["MODEL.WEIGHTS", "w.pth"]),
        (
            [
                "--keep-fp32",
                "mask-head",
                "backbone",
                "MODEL.WEIGHTS",
                "w.pth",
                "SOLVER.BASE_LR",
                "0.1",
            ],
            ["mask-head", "backbone"],
            ["MODEL.WEIGHTS", "w.pth", "SOLVER.BASE_LR", "0.1"],
        ),
    ],
)
def test_keep_fp32_leaves_the_config_overrides_after_it(words, keep, opts):
    """--keep-fp32 (nargs="*") swallowed the KEY VALUE pairs written after it, as in docs/deployment.md's commands."""
    from fastinst.export.cli import build_parser, check_args, split_keep_fp32

    args = build_parser().parse_args(
        [
            "--config-file",
            "c.yaml",
            "--output",
            "m.xml",
            "--format",
            "openvino",
            "--int8",
            "--calibration",
            "x",
            *words,
        ]
    )
    split_keep_fp32(args)
    assert args.keep_fp32 == keep and args.opts == opts and check_args(args) is None


def test_keep_fp32_refuses_a_misspelt_scope(capsys):
    """One line naming the word; the config overrides after it are not taken for scopes (exit 2, no export)."""
    argv = ["--config-file", "c.yaml", "--output", "m.xml", "--format", "openvino", "--int8"]
    argv += ["--calibration", "x", "--keep-fp32", "decoder-atention", "MODEL.WEIGHTS", "w.pth"]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err == (
        "error: unknown --keep-fp32 scope(s) ['decoder-atention']; choose from backbone, pixel-decoder, "
        "query-proposal, decoder-attention, decoder-ffn, class-head, mask-head\n"
    )


def test_cli_refuses_bad_calibration_sources(tmp_path, capsys, monkeypatch):
    def no_model(cfg):
        raise AssertionError("a bad calibration source must be refused before the model is built")

    monkeypatch.setattr("fastinst.export.cli.build_model_for_export", no_model)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for name in ("a.jpg", "b.png"):
        (unreadable / name).write_text("not an image")
    missing = tmp_path / "missing"
    base = ["--config-file", str(TINY_YAML), "--format", "openvino", "--int8"]
    output = ["--output", str(tmp_path / "int8.xml")]
    assert cli_main(base + output + ["--calibration", str(missing)]) == 2
    assert cli_main(base + output + ["--calibration", str(empty)]) == 2
    assert cli_main(base + output + ["--calibration", str(unreadable)]) == 2
    assert cli_main(base + output) == 2  # --int8 without --calibration
    assert cli_main(base + ["--output", str(tmp_path / "int8.onnx"), "--calibration", "x"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"error: Calibration source not found: {missing} is neither a folder nor a registered dataset "
        "name (e.g. synthetic_train).",
        f"error: Calibration folder {empty} has no images (.jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff).",
        f"error: Calibration source {unreadable}: none of its 2 images can be read (first: Cannot read "
        f"image {unreadable / 'a.jpg'} (not an image, or a format Pillow cannot read)).",
        "error: --int8 needs --calibration (an image folder or a dataset name, e.g. synthetic_train)",
        f"error: --format openvino writes an IR: --output must end in .xml, got {tmp_path / 'int8.onnx'}",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "unreadable"]  # nothing written


# ---------------------------------------------------------------------------------------------------------
# INT8 on a briefly trained model

COLOURS = np.array([[230, 40, 40], [40, 200, 40], [40, 60, 230], [230, 220, 40], [200, 40, 220]])


SIZE = 64  # image side of the INT8 test (the tiny model's 16 queries need a 4 x 4 stride-16 map)


def shapes_sample(rng: np.random.Generator, size: int = SIZE):
    """An image (size x size RGB uint8) with 1-3 filled rectangles whose colour is the class, and its targets."""
    from detectron2.structures import Instances

    image = np.full((size, size, 3), 110, np.uint8) + rng.integers(0, 30, (size, size, 1), np.uint8)
    count = int(rng.integers(1, 4))
    classes = rng.integers(0, len(COLOURS), count)
    masks = np.zeros((count, size, size), bool)
    for i, c in enumerate(classes):
        h, w = rng.integers(size // 4, size // 2, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        masks[i, y : y + h, x : x + w] = True
        masks[:i] &= ~masks[i]  # later rectangles occlude earlier ones
        image[masks[i]] = COLOURS[c]
    instances = Instances((size, size))
    instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
    instances.gt_masks = torch.from_numpy(masks)
    return image, instances


def train_briefly(iterations: int = 30) -> torch.nn.Module:
    """The tiny model trained on random coloured rectangles (batch 2, AdamW): seconds on 2 cores."""
    model = tiny_model(train=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(iterations):
        batch = []
        for _ in range(2):
            image, instances = shapes_sample(rng)
            tensor = torch.from_numpy(image.transpose(2, 0, 1).copy()).float()
            batch.append({"image": tensor, "instances": instances, "height": SIZE, "width": SIZE})
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return model.eval()


def match_by_iou(ref, got) -> list[float]:
    """For each instance of `ref` (in score order), the mask IoU of the best unused instance of `got` with the
    same class (0 if none): greedy matching."""
    ref_masks = ref.pred_masks.flatten(1).float()  # (k, HW)
    got_masks = got.pred_masks.flatten(1).float()  # (m, HW)
    inter = ref_masks @ got_masks.T  # (k, m)
    union = ref_masks.sum(1)[:, None] + got_masks.sum(1)[None] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    iou[ref.pred_classes[:, None] != got.pred_classes[None]] = 0
    used, best = set(), []
    for i in range(len(ref)):
        order = [j for j in torch.argsort(iou[i], descending=True).tolist() if j not in used]
        j = order[0] if order else None
        best.append(float(iou[i, j]) if j is not None else 0.0)
        if j is not None and iou[i, j] > 0:
            used.add(j)
    return best


@pytest.fixture(scope="module")
def trained_int8(tmp_path_factory):
    """The briefly trained tiny model and its INT8 IR written by tools/export_model.py, calibrated on 8 shapes
    images: one NNCF quantization (the slow part) for the CLI test and the accuracy test."""
    folder = tmp_path_factory.mktemp("int8")
    model = train_briefly()
    calibration = folder / "calibration"
    calibration.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(shapes_sample(rng)[0]).save(calibration / f"{i}.png")
    weights = folder / "trained.pth"
    torch.save({"model": model.state_dict()}, weights)
    output = folder / "out" / "trained_int8.xml"
    cmd = [
        sys.executable, str(EXPORT_TOOL), "--config-file", str(TINY_YAML), "--format", "openvino",
        "--output", str(output), "--input-size", str(SIZE), str(SIZE), "--int8", "--calibration",
        str(calibration), "--calibration-size", "8", "MODEL.WEIGHTS", str(weights),
        "INPUT.MIN_SIZE_TEST", str(SIZE), "INPUT.MAX_SIZE_TEST", str(SIZE),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return model, proc, output, calibration


@pytest.mark.slow  # a subprocess, an export and a quantization
def test_cli_writes_an_int8_ir(trained_int8):
    _, proc, output, calibration = trained_int8
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "calibration: 8 images from" in proc.stdout and "verify: INT8" in proc.stdout
    meta = read_openvino_metadata(output)
    assert meta["precision"] == "int8" and meta["calibration_size"] == 8
    assert meta["keep_fp32"] == ["decoder-attention"]
    assert sorted(p.name for p in output.parent.iterdir()) == [
        "trained_int8.bin",
        "trained_int8.xml",
    ]
    assert Path(output).stat().st_size > 0
    # the calibration images were prepared as at test time: (1, 3, SIZE, SIZE) graph inputs
    inputs = calibration_inputs(
        calibration_images(calibration), read_openvino_metadata(output), (SIZE, SIZE)
    )
    assert len(inputs) == 8 and inputs[0].shape == (1, 3, SIZE, SIZE)


def test_int8_matches_fp32_on_a_trained_model(trained_int8, tmp_path):
    model, proc, int8_xml, _ = trained_int8
    assert proc.returncode == 0, proc.stdout + proc.stderr
    onnx_path = export_onnx(model, tmp_path / "trained.onnx", (SIZE, SIZE))
    fp32 = OpenVinoFastInst(onnx_to_openvino(onnx_path, tmp_path / "fp32.xml"))
    int8 = OpenVinoFastInst(int8_xml)
    ious = []
    rng = np.random.default_rng(2)
    for _ in range(4):
        image = torch.from_numpy(shapes_sample(rng)[0].transpose(2, 0, 1).copy()).float()
        ref, got = fp32(image)[:INT8_TOP], int8(image)
        assert len(ref) == INT8_TOP and ref.pred_masks.flatten(1).any(1).all()
        ious += match_by_iou(ref, got)
        score_diff = np.abs(ref.scores.numpy() - got.scores.numpy()[:INT8_TOP]).max()
        assert score_diff <= INT8_SCORE_TOL
    ious = np.asarray(ious)
    matched = np.mean(ious >= INT8_MIN_IOU)
    assert matched >= INT8_MIN_MATCHED, f"{matched:.2f} of {len(ious)} instances matched: {ious}"
    assert ious.mean() >= INT8_MIN_MEAN_IOU
