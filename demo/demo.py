#!/usr/bin/env python
"""Run FastInst on images, a video or a webcam and draw the instances (SPEC §9; fixes F1: the threshold filters).

Examples::

    python demo/demo.py --input photo.jpg --output out/ --opts MODEL.WEIGHTS fastinst_R50_ppm-fpn_x1_576.pth
    python demo/demo.py --input "images/*.jpg" more_images/ --output out/ --confidence-threshold 0.3 \\
        --opts MODEL.WEIGHTS model.pth
    python demo/demo.py --video-input clip.mp4 --output out/clip.mp4 --device cuda --precision fp16 \\
        --opts MODEL.WEIGHTS model.pth
    python demo/demo.py --webcam --opts MODEL.WEIGHTS model.pth        # needs an OpenCV build with a GUI
    python demo/demo.py --input photo.jpg --output out/ --explain --opts MODEL.WEIGHTS model.pth
        # also out/photo_explain.png: the activation map and the Q query locations (fastinst.explain)

`--config-file` takes a YAML path or an official model name (default fastinst_R50_ppm-fpn_x1_576). The weights
go in `--opts MODEL.WEIGHTS PATH` as in detectron2 (`MODEL.WEIGHTS ""` runs with random weights, for timing).

Images are drawn with detectron2's Visualizer (masks, class names, scores); videos and the webcam use a faster
OpenCV drawing (the Visualizer takes ~0.2 s per frame on a CPU). With several inputs, `--output` is a folder and
each drawing keeps its input's file name; with one input it may also be a file name. Without `--output` the
drawings are shown in a window, which needs an OpenCV build with a GUI (not opencv-python-headless).

Exit status: 0 if every input (or at least one of several images) was processed; an unreadable image is reported
by name on stderr and skipped, and the run ends with "N ok, M failed". 1 if every image failed; 2 for a usage
error (among them an --output that cannot be written, found before the model is built), a config or checkpoint
that cannot be loaded, or a video that cannot be opened or written. A drawing whose input extension OpenCV cannot
write (e.g. photo.jfif) is saved as .jpg, with a note.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.utils.colormap import colormap
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

from fastinst.checkpoint import CheckpointMismatchError
from fastinst.explain import draw_explanation
from fastinst.predictor import FastInstPredictor, to_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
FALLBACK_SUFFIX = ".jpg"  # drawings of inputs whose extension OpenCV cannot write (e.g. .jfif)
WINDOW = "FastInst"


class DemoError(Exception):
    """A problem to report as one line (exit status 2), without a traceback."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="FastInst demo: draw instance masks on images, a video or a webcam stream."
    )
    parser.add_argument(
        "--config-file",
        default="fastinst_R50_ppm-fpn_x1_576",
        metavar="FILE",
        help="config YAML or official model name (default: fastinst_R50_ppm-fpn_x1_576)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", nargs="+", help="image files, folders or glob patterns (quote the patterns)"
    )
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="camera 0")
    parser.add_argument(
        "--output",
        help="output folder (or file for a single image / a video); omit to show a window",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="draw instances with at least this score (default 0.5)",
    )
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="images only: also write NAME_explain.png beside each drawing, the proposal head's class-"
        "probability map (stride 16) with the Q query locations (fastinst.explain; PyTorch models)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda, cuda:1, ... (default: cuda if available)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth",
    )
    return parser


# ---------------------------------------------------------------------------------------------------------------
# inputs and outputs


def expand_inputs(items: list[str]) -> tuple[list[str], list[str]]:
    """Files named by `--input` (files, folders, glob patterns) in order, and the items that match nothing.

    Folders contribute the files with an image suffix directly inside them (sorted); files named explicitly are
    always tried, whatever their suffix.
    """
    files: list[str] = []
    unmatched: list[str] = []
    for item in items:
        item = os.path.expanduser(item)
        if os.path.isdir(item):
            matches = [item]
        elif os.path.isfile(item) or not glob.has_magic(item):
            matches = [item] if os.path.exists(item) else []
        else:
            matches = sorted(glob.glob(item))
        if not matches:
            unmatched.append(item)
        for match in matches:
            if os.path.isdir(match):
                files += sorted(
                    str(p)
                    for p in Path(match).iterdir()
                    if p.is_file()
                    and p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith(".")
                )
            else:
                files.append(match)
    return list(dict.fromkeys(files)), unmatched


def names_a_file(output: str) -> bool:
    """Whether --output names a file: it has an extension, does not end with a path separator and is not an
    existing folder (`out/`, `run.v2/` and an existing `run.v2` are folders; `out/a.png` is a file)."""
    ends_with_separator = output.endswith((os.sep, os.altsep or os.sep))
    return bool(Path(output).suffix) and not ends_with_separator and not os.path.isdir(output)


def output_path(output: str, source: str, many: bool, suffix: str | None = None) -> str:
    """Where the drawing of `source` goes: inside `output` if it is (or must be) a folder, else `output`."""
    name = Path(source).name if suffix is None else Path(source).stem + suffix
    if many or not names_a_file(output):
        os.makedirs(output, exist_ok=True)
        return os.path.join(output, name)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    return output


def writable_path(out_file: str) -> str:
    """`out_file`, or the same name with FALLBACK_SUFFIX when OpenCV has no writer for its extension (says so).

    Inputs OpenCV reads through PIL, or names without an image extension (e.g. `photo.jfif`), still get a
    drawing instead of being lost after the prediction.
    """
    if cv2.haveImageWriter(out_file):
        return out_file
    fallback = str(Path(out_file).with_suffix(FALLBACK_SUFFIX))
    suffix = Path(out_file).suffix or "(no extension)"
    tqdm.write(f"note: OpenCV cannot write {suffix} images; writing {fallback} instead")
    return fallback


def check_output(output: str, num_inputs: int) -> None:
    """Usage errors of --output, before the model is built: an image name OpenCV cannot write, or a folder
    that cannot be created or written."""
    is_file = num_inputs == 1 and names_a_file(output)
    if is_file and not cv2.haveImageWriter(output):
        raise DemoError(
            f"--output {output}: OpenCV cannot write {Path(output).suffix} images; name the drawing "
            "with an extension it writes (.jpg, .png, .bmp, .tif, .webp) or give a folder."
        )
    folder = os.path.dirname(os.path.abspath(output)) if is_file else output
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DemoError(
            f"--output {output}: cannot create the folder {folder} ({e.strerror or e})."
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DemoError(f"--output {output}: the folder {folder} is not writable.")


def has_display() -> bool:
    """Whether cv2.imshow can work (a GUI-enabled OpenCV build and, on Linux, a display)."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# drawing


def draw_visualizer(rgb: np.ndarray, instances, metadata, scale: float = 1.0) -> np.ndarray:
    """detectron2's Visualizer drawing (masks, outlines, "name score%" labels); returns BGR.

    `scale` > 1 draws on a canvas that many times larger (sharper labels on small images; the web demo).
    """
    visualizer = Visualizer(rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(instances).get_image()[:, :, ::-1]


_PALETTE = colormap(rgb=False, maximum=255).astype(np.uint8)  # (N, 3) BGR


def draw_fast(bgr: np.ndarray, instances, class_names: list[str], alpha: float = 0.5) -> np.ndarray:
    """A quick OpenCV drawing for video: masks blended in their class colour, outlines, "name score" labels.

    Lower-scored instances are painted first, so the best instance of a pixel is on top.
    """
    out = bgr.copy()
    masks = instances.pred_masks.numpy()
    classes = instances.pred_classes.tolist()
    if len(masks):
        layer = out.copy()
        for i in reversed(range(len(masks))):
            layer[masks[i]] = _PALETTE[classes[i] % len(_PALETTE)]
        covered = masks.any(axis=0)
        out[covered] = (out[covered] * (1 - alpha) + layer[covered] * alpha).astype(np.uint8)
    items = list(
        zip(masks, classes, instances.scores.tolist(), instances.pred_boxes.tensor.tolist())
    )
    for mask, label, score, box in reversed(items):  # the best label on top
        color = tuple(int(c) for c in _PALETTE[label % len(_PALETTE)])
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, color, 1, cv2.LINE_AA)
        name = class_names[label] if label < len(class_names) else f"class {label}"
        text = f"{name} {score:.0%}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        x, y = int(box[0]), max(int(box[1]), th + base)
        cv2.rectangle(out, (x, y - th - base), (x + tw, y), color, cv2.FILLED)
        ink = (
            (0, 0, 0)
            if 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2] > 140
            else (255,) * 3
        )
        cv2.putText(out, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, 0.45, ink, 1, cv2.LINE_AA)
    return out


# ---------------------------------------------------------------------------------------------------------------
# runs


def run_images(
    predictor: FastInstPredictor, files: list[str], output: str | None, explain: bool = False
) -> tuple[int, list]:
    """Predict and draw every file; returns (number ok, [(file, reason) for each failure]).

    With `explain`, each drawing gets a companion NAME_explain.png (shown beside it in the window).
    """
    if explain and not isinstance(predictor.model, torch.nn.Module):
        raise DemoError("--explain needs the PyTorch model (a .pth checkpoint), not an ONNX graph.")
    ok, failed = 0, []
    for path in tqdm(files, desc="images", unit="img", disable=len(files) < 2):
        try:
            rgb = to_rgb(path)
            start = time.perf_counter()
            if explain:  # the same instances, and what the query proposal saw
                explanation = predictor.explain(rgb, format="RGB")
                instances = explanation.instances
            else:
                instances = predictor(rgb, format="RGB")
            elapsed = time.perf_counter() - start
            drawing = draw_visualizer(rgb, instances, predictor.metadata)
            if explain:
                explained = draw_explanation(rgb, explanation)[:, :, ::-1]  # BGR
            if output is not None:
                out_file = writable_path(output_path(output, path, many=len(files) > 1))
                if not cv2.imwrite(out_file, drawing):
                    raise OSError(f"could not write {out_file}")
                if explain:
                    out = Path(out_file)
                    explain_file = str(out.with_name(f"{out.stem}_explain.png"))
                    if not cv2.imwrite(explain_file, explained):
                        raise OSError(f"could not write {explain_file}")
            elif explain:
                drawing = np.hstack([drawing, explained])
            tqdm.write(f"{path}: {len(instances)} instances in {elapsed:.3f} s")
        except (OSError, ValueError, cv2.error) as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)
            failed.append((path, reason))
            continue
        ok += 1
        if output is None:
            cv2.imshow(WINDOW, drawing)
            if cv2.waitKey(0) == 27:  # Esc quits
                break
    if output is None:
        cv2.destroyAllWindows()
    return ok, failed


def open_capture(path: str | None) -> tuple[cv2.VideoCapture, str]:
    """Open a video file (or camera 0 when `path` is None); DemoError naming it if that fails."""
    if path is None:
        capture = cv2.VideoCapture(0)
        if not capture.isOpened():
            raise DemoError("Cannot open the webcam (camera 0).")
        return capture, "webcam"
    if not os.path.isfile(path):
        raise DemoError(f"Video file not found: {path}")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise DemoError(f"Cannot open the video {path} (not a video, or a codec OpenCV lacks).")
    return capture, Path(path).name


def open_writer(capture: cv2.VideoCapture, out_file: str) -> cv2.VideoWriter:
    """An mp4v VideoWriter with the capture's frame size and rate; DemoError if OpenCV cannot open it."""
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    writer = cv2.VideoWriter(out_file, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise DemoError(f"Cannot write the video {out_file} (mp4v codec, {size[0]}x{size[1]}).")
    return writer


def run_stream(
    predictor: FastInstPredictor,
    capture: cv2.VideoCapture,
    name: str,
    writer: cv2.VideoWriter | None,
) -> int:
    """Predict and draw each frame into `writer` (or a window when None); returns the number of frames."""
    class_names = list(predictor.metadata.thing_classes)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames, seconds = 0, 0.0
    progress = tqdm(total=total if total > 0 else None, desc=name, unit="frame")
    try:
        while True:
            grabbed, frame = capture.read()
            if not grabbed:
                break
            start = time.perf_counter()
            instances = predictor(frame, format="BGR")
            seconds += time.perf_counter() - start
            frames += 1
            drawing = draw_fast(frame, instances, class_names)
            progress.update()
            progress.set_postfix(ms_per_frame=f"{1000 * seconds / frames:.1f}")
            if writer is not None:
                writer.write(drawing)
            else:
                cv2.imshow(WINDOW, drawing)
                if cv2.waitKey(1) == 27:  # Esc quits
                    break
    except KeyboardInterrupt:
        pass
    finally:
        progress.close()
    if frames:
        print(f"{name}: {frames} frames, {1000 * seconds / frames:.1f} ms per frame (model)")
    return frames


def build_predictor(args: argparse.Namespace) -> FastInstPredictor:
    return FastInstPredictor(
        args.config_file,
        device=args.device,
        score_threshold=args.confidence_threshold,
        precision=args.precision,
        compile=args.compile,
        opts=args.opts,
    )


def main_stream(args: argparse.Namespace) -> int:
    """--video-input or --webcam. Opens the source and the output before building the model."""
    if args.explain:
        raise DemoError("--explain works on images (--input), not on a video or the webcam.")
    capture, name = open_capture(args.video_input)
    writer = out_file = None
    try:
        if args.output is not None:
            source = args.video_input or "webcam"
            out_file = output_path(args.output, source, many=False, suffix=".mp4")
            writer = open_writer(capture, out_file)
        frames = run_stream(build_predictor(args), capture, name, writer)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0 and args.video_input:
        raise DemoError(f"No frame could be read from the video {args.video_input}.")
    if out_file is not None:
        print(f"wrote {out_file}")
    return 0


def main_images(args: argparse.Namespace) -> int:
    files, unmatched = expand_inputs(args.input)
    for item in unmatched:
        print(f"skipped {item}: no such file, folder or matching pattern", file=sys.stderr)
    if not files:
        raise DemoError(f"No image found in --input {' '.join(args.input)}.")
    output = args.output
    if output is not None and len(files) > 1 and names_a_file(output):
        raise DemoError(
            f"--output {output} looks like a file name, but there are {len(files)} inputs (end it with "
            f"{os.sep} to name a folder)."
        )
    if output is not None:
        check_output(output, len(files))
    names = [Path(f).name for f in files]
    if output is not None and len(set(names)) < len(names):
        print(
            "warning: several inputs share a file name; their drawings overwrite each other",
            file=sys.stderr,
        )
    ok, failed = run_images(build_predictor(args), files, args.output, args.explain)
    failed += [(item, "not found") for item in unmatched]
    summary = f"{ok} ok, {len(failed)} failed"
    if failed:
        summary += ": " + ", ".join(path for path, _ in failed)
    print(summary)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="fastinst", abbrev_name="fastinst")
    try:
        if args.output is None and not has_display():
            raise DemoError(
                "No display available (OpenCV without GUI support, or no DISPLAY): pass --output FOLDER "
                "(or FILE) to save the drawings instead."
            )
        return main_images(args) if args.input else main_stream(args)
    except (DemoError, CheckpointMismatchError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
