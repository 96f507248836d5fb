"""demo/demo.py end to end (subprocesses on the tiny model), plus its helpers in-process."""

import runpy
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances

from fastinst.predictor import build_predictor_cfg
from tests.conftest import REPO

DEMO = REPO / "demo" / "demo.py"
TINY_YAML = REPO / "tests" / "fixtures" / "tiny.yaml"


@pytest.fixture(scope="module")
def demo():
    """demo.py's functions, loaded in-process (demo/ is not a package)."""
    return runpy.run_path(str(DEMO), run_name="demo")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(build_predictor_cfg(TINY_YAML))
    path = tmp_path_factory.mktemp("demo") / "tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def run_demo(*args, checkpoint=None):
    cmd = [sys.executable, str(DEMO), "--config-file", str(TINY_YAML), "--device", "cpu", *args]
    if checkpoint is not None:
        cmd += ["--opts", "MODEL.WEIGHTS", checkpoint]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def write_image(path, seed=0, h=64, w=96):
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def test_single_image_to_file(tmp_path, checkpoint):
    write_image(tmp_path / "photo.png")
    out = tmp_path / "drawn" / "result.png"
    proc = run_demo(
        "--input", str(tmp_path / "photo.png"), "--output", str(out),
        "--confidence-threshold", "0", checkpoint=checkpoint,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "80 instances" in proc.stdout  # threshold 0: every (query, class) pair is drawn
    assert "1 ok, 0 failed" in proc.stdout
    drawing = cv2.imread(str(out))
    assert drawing is not None and drawing.shape == (64, 96, 3)


def test_folder_with_bad_files(tmp_path, checkpoint):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.png", seed=1)
    write_image(images / "b.jpg", seed=2, h=72, w=64)
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.jpg").write_text("this is text, not a JPEG")
    (images / "readme.txt").write_text("not an image suffix: not collected from a folder")
    out = tmp_path / "out"
    proc = run_demo(
        "--input", str(images), "--output", str(out), "--confidence-threshold", "2",
        checkpoint=checkpoint,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg"]
    assert "0 instances" in proc.stdout  # no score reaches 2: the threshold filters (SPEC F1)
    assert "2 ok, 2 failed" in proc.stdout
    for bad in ("empty.jpg", "notes.jpg"):
        assert sum(bad in line for line in proc.stderr.splitlines() if "skipped" in line) == 1
    assert "readme.txt" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_video(tmp_path, checkpoint):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64))
    assert writer.isOpened()
    for seed in range(5):
        writer.write(np.random.default_rng(seed).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    proc = run_demo("--video-input", str(video), "--output", str(out), checkpoint=checkpoint)
    assert proc.returncode == 0, proc.stderr
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 5


def test_missing_video_exits_2(tmp_path):
    missing = tmp_path / "no_such_clip.mp4"
    proc = run_demo("--video-input", str(missing), "--output", str(tmp_path))
    assert proc.returncode == 2
    assert "no_such_clip.mp4" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_errors_in_process(demo, tmp_path, capsys):
    main = demo["main"]
    # headless OpenCV: without --output there is nowhere to show the drawings
    assert main(["--input", str(tmp_path), "--config-file", str(TINY_YAML)]) == 2
    assert "--output" in capsys.readouterr().err
    # a file that is not a video
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    assert main(["--video-input", str(text), "--output", str(tmp_path / "out")]) == 2
    assert "notes.mp4" in capsys.readouterr().err
    # nothing to read
    assert main(["--input", str(tmp_path / "*.png"), "--output", str(tmp_path / "out")]) == 2
    assert "No image found" in capsys.readouterr().err


def test_unwritable_output_is_a_usage_error_before_the_model(demo, tmp_path, capsys, monkeypatch):
    def no_model(args):
        raise AssertionError("the model must not be built for an --output that cannot be written")

    monkeypatch.setitem(demo["main"].__globals__, "build_predictor", no_model)
    main = demo["main"]
    image = tmp_path / "photo.png"
    write_image(image)
    named = tmp_path / "result.jfif"
    assert main(["--input", str(image), "--output", str(named), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: --output {named}: OpenCV cannot write .jfif"
    )
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the output folder would go")
    assert main(["--input", str(image), "--output", str(blocker / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create the folder" in err[0] and str(blocker) in err[0]
    assert not named.exists()


def test_output_folder_names_with_a_dot(demo, tmp_path, capsys, checkpoint):
    """`run.v2/` (trailing separator) and an existing `run.v3` are folders; `drawn.png` with two inputs is a
    usage error naming the way out."""
    main, images = demo["main"], [tmp_path / "a.png", tmp_path / "b.png"]
    for i, image in enumerate(images):
        write_image(image, seed=i)
    base = [
        "--config-file",
        str(TINY_YAML),
        "--device",
        "cpu",
        "--opts",
        "MODEL.WEIGHTS",
        checkpoint,
    ]
    dotted = tmp_path / "run.v2"
    assert main(["--input", *map(str, images), "--output", f"{dotted}/", *base]) == 0
    assert sorted(p.name for p in dotted.iterdir()) == ["a.png", "b.png"]
    assert main(["--input", str(images[0]), "--output", f"{tmp_path / 'one.v1'}/", *base]) == 0
    assert [p.name for p in (tmp_path / "one.v1").iterdir()] == ["a.png"]
    existing = tmp_path / "run.v3"
    existing.mkdir()
    assert main(["--input", str(images[1]), "--output", str(existing), *base]) == 0
    assert [p.name for p in existing.iterdir()] == ["b.png"]
    capsys.readouterr()
    named = tmp_path / "drawn.png"
    assert main(["--input", *map(str, images), "--output", str(named), *base]) == 2
    assert capsys.readouterr().err == (
        f"error: --output {named} looks like a file name, but there are 2 inputs (end it with / to name a "
        "folder).\n"
    )
    assert not named.exists()


def test_input_extension_opencv_cannot_write_gets_a_jpg_drawing(demo, tmp_path, capsys, checkpoint):
    from PIL import Image

    rgb = np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    photo = tmp_path / "photo.jfif"  # a JPEG under the name some browsers and phones use
    Image.fromarray(rgb).save(photo, format="JPEG")
    out = tmp_path / "out"
    args = ["--input", str(photo), "--output", str(out), "--device", "cpu", "--config-file"]
    args.append(str(TINY_YAML))
    assert demo["main"]([*args, "--opts", "MODEL.WEIGHTS", checkpoint]) == 0
    printed = capsys.readouterr().out
    assert f"writing {out / 'photo.jpg'} instead" in printed and "1 ok, 0 failed" in printed
    drawing = cv2.imread(str(out / "photo.jpg"))
    assert drawing is not None and drawing.shape == (64, 80, 3)
    assert sorted(p.name for p in out.iterdir()) == ["photo.jpg"]


def test_truncated_weights_are_one_line(demo, tmp_path, capsys, checkpoint):
    truncated = tmp_path / "model.pth"
    truncated.write_bytes(open(checkpoint, "rb").read()[:5000])
    image = tmp_path / "photo.png"
    write_image(image)
    args = ["--input", str(image), "--output", str(tmp_path / "out"), "--device", "cpu"]
    args += ["--config-file", str(TINY_YAML), "--opts", "MODEL.WEIGHTS", str(truncated)]
    assert demo["main"](args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        f"error: {truncated}: cannot be read as a PyTorch checkpoint (5000 bytes"
    )


def test_expand_inputs(demo, tmp_path):
    for name in ("b.png", "a.jpg", "c.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.PNG").write_bytes(b"")
    files, unmatched = demo["expand_inputs"](
        [str(tmp_path), str(tmp_path / "sub" / "*.PNG"), str(tmp_path / "c.txt"), "nope/*.jpg"]
    )
    names = [f.rsplit("/", 1)[-1] for f in files]
    assert names == ["a.jpg", "b.png", "d.PNG", "c.txt"]
    assert unmatched == ["nope/*.jpg"]
    # a folder listed twice (or a file matched twice) is processed once
    files, _ = demo["expand_inputs"]([str(tmp_path), str(tmp_path / "a.jpg")])
    assert len(files) == 2


def test_draw_fast(demo):
    h, w = 48, 64
    image = np.full((h, w, 3), 100, np.uint8)
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 5:20, 5:30] = True
    masks[1, 25:40, 30:60] = True
    instances = Instances((h, w))
    instances.pred_masks = masks
    instances.pred_boxes = BitMasks(masks).get_bounding_boxes()
    instances.scores = torch.tensor([0.9, 0.6])
    instances.pred_classes = torch.tensor([0, 7])
    drawing = demo["draw_fast"](image, instances, ["cat", "dog"])
    assert drawing.shape == image.shape and drawing.dtype == np.uint8
    assert (drawing[10, 20] != 100).any() and (drawing[45, 2] == 100).all()
    assert np.array_equal(image, np.full((h, w, 3), 100, np.uint8))  # input untouched
    empty = demo["draw_fast"](image, instances[:0], [])
    assert np.array_equal(empty, image)
