#!/usr/bin/env python
"""FastInst in the browser: a local Gradio page to try a model on your own images (docs/web_demo.md).

Examples::

    python demo/web.py                      # the model `make quickstart` trained (output/quickstart/)
    python demo/web.py --config-file output/run/config.yaml --opts MODEL.WEIGHTS output/run/model_final.pth
    python demo/web.py --config-file cfg.yaml --opts MODEL.WEIGHTS model.onnx     # no activation view for ONNX
    python demo/web.py --host 0.0.0.0 --port 8080    # reachable from other machines: read docs/web_demo.md first

The page: upload an image (or pick a shipped example from demo/examples/), move the confidence threshold, and get
the picture with masks, boxes and class names (detectron2's Visualizer, as demo/demo.py draws), a table of the
instances (class, score, box, mask area, the query it came from), the results as COCO json (RLE masks) to
download, and the time the prediction took. The "activation map" tab shows the proposal head's class-probability
map at stride 16 with the Q query locations the decoder picked (`fastinst.explain`); click an instance in the
picture or a row of the table to see the query it came from.

The model runs on the CPU (or `--device`), one request at a time: a request that arrives while another runs waits
in Gradio's queue. Moving the threshold re-filters the last prediction without running the model again. A file
that is not an image, or an image over `--max-pixels`, gets a message on the page; the app keeps serving.

Exit status 2, with one line, when the model cannot be loaded (no quickstart model and no --config-file, a missing
or mismatched checkpoint) or Gradio is not installed.
"""

import argparse
import atexit
import json
import os
import runpy
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fastinst.checkpoint import CheckpointMismatchError
from fastinst.explain import Explanation, draw_explanation
from fastinst.predictor import FastInstPredictor, instances_to_coco_results, to_rgb

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_CONFIG = REPO / "output" / "quickstart" / "config.yaml"
QUICKSTART_WEIGHTS = REPO / "output" / "quickstart" / "model_final.pth"
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
DEFAULT_MAX_PIXELS = (
    16_000_000  # a 16-megapixel photo: ~1 s to decode and draw on a CPU, ~200 MB of masks
)
IMAGE_HEIGHT = 440  # pixels of the page's picture boxes
DISPLAY_SIZE = (
    400  # pictures of smaller images are drawn larger, to this long side (sharper labels and rings)
)
KEEP_DOWNLOADS = 32  # the newest COCO json files kept in the work folder
TABLE_HEADERS = ["#", "class", "score", "box (x0, y0, x1, y1)", "area (px)", "query"]

# demo/demo.py's drawing (demo/ is not a package)
_DEMO = runpy.run_path(str(Path(__file__).resolve().parent / "demo.py"), run_name="fastinst_demo")
draw_visualizer = _DEMO["draw_visualizer"]


class PageError(Exception):
    """A problem with the user's input, shown on the page as one line."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="FastInst web demo: a local page to upload images and see the instances."
    )
    parser.add_argument(
        "--config-file",
        metavar="FILE",
        help=f"config YAML or official model name (default: the quickstart model, {QUICKSTART_CONFIG})",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the page "
        "to the network, see docs/web_demo.md)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="initial position of the page's threshold slider (default 0.5)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--max-file-mb", type=float, default=50, help="upload size limit in MB (default 50)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth",
    )
    return parser


# ---------------------------------------------------------------------------------------------------------------
# the work behind the page (no Gradio here: tests call it directly)


def display_scale(height: int, width: int) -> float:
    """How much larger the page draws an image: its long side up to DISPLAY_SIZE, never smaller (>= 1)."""
    return max(1.0, DISPLAY_SIZE / max(height, width))


def read_upload(path: str | os.PathLike, max_pixels: int) -> np.ndarray:
    """An uploaded file -> (H, W, 3) uint8 RGB; PageError naming the file if it is not an image or too large.

    The size is read from the header before the pixels are decoded, so a huge image costs no memory.
    """
    name = Path(path).name
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise PageError(
                    f"{name} is {width} x {height} = {width * height / 1e6:.3g} megapixels, more than this "
                    f"page's limit of {max_pixels / 1e6:.3g} (--max-pixels): use a smaller image."
                )
            return to_rgb(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        if isinstance(e, Image.DecompressionBombError):
            raise PageError(f"{name} is too large to decode safely ({e}).") from e
        raise PageError(
            f"{name} is not an image (or a format Pillow cannot read): upload a PNG, JPEG, BMP, TIFF or WebP."
        ) from e


@dataclass
class Prediction:
    """One image's prediction, kept per browser session so the threshold can move without re-running."""

    name: str
    rgb: np.ndarray  # (H, W, 3) uint8
    instances: Any  # all instances (threshold 0), sorted by score
    queries: np.ndarray | None  # (k,) query of each instance; None for ONNX models
    explanation: Explanation | None
    seconds: float


class WebDemo:
    """The page's logic around one `FastInstPredictor` (its score_threshold is set to 0: the page filters).

    `predict` runs the model (serialised by a lock, also outside Gradio's queue); `table`, `picture`, `coco_json`
    and `explain_view` give the page's outputs for a prediction at a threshold.
    """

    def __init__(self, predictor: FastInstPredictor, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.predictor = predictor
        self.predictor.score_threshold = 0.0
        self.max_pixels = int(max_pixels)
        self.can_explain = isinstance(predictor.model, torch.nn.Module)
        self.workdir = Path(tempfile.mkdtemp(prefix="fastinst-web-"))  # the COCO json downloads
        atexit.register(shutil.rmtree, self.workdir, ignore_errors=True)
        self._lock = threading.Lock()
        id_map = predictor.metadata.get("thing_dataset_id_to_contiguous_id")
        self._to_dataset_id = {v: k for k, v in id_map.items()} if id_map else None

    def predict(self, path: str | os.PathLike) -> Prediction:
        rgb = read_upload(path, self.max_pixels)
        with self._lock:
            if self.can_explain:
                explanation = self.predictor.explain(rgb, format="RGB")
                instances, seconds = explanation.instances, explanation.seconds
                queries = explanation.instance_queries
            else:
                start = time.perf_counter()
                instances = self.predictor(rgb, format="RGB")
                seconds = time.perf_counter() - start
                explanation = queries = None
        return Prediction(Path(path).name, rgb, instances, queries, explanation, seconds)

    def kept(self, prediction: Prediction, threshold: float) -> np.ndarray:
        """Indices of the instances with score >= threshold (the predictor's rule)."""
        return np.flatnonzero(prediction.instances.scores.numpy() >= threshold)

    def table(self, prediction: Prediction, threshold: float) -> list[list]:
        """Rows: #, class name, score (3 decimals), box "x0, y0, x1, y1" (pixels), mask area, query."""
        inst = prediction.instances
        rows = []
        for n, i in enumerate(self.kept(prediction, threshold)):
            box = ", ".join(f"{v:.0f}" for v in inst.pred_boxes.tensor[i].tolist())
            query = int(prediction.queries[i]) if prediction.queries is not None else ""
            rows.append(
                [
                    n,
                    self.predictor.class_name(int(inst.pred_classes[i])),
                    round(float(inst.scores[i]), 3),
                    box,
                    int(inst.pred_masks[i].sum()),
                    query,
                ]
            )
        return rows

    def coco_json(self, prediction: Prediction, threshold: float) -> str:
        """Write the kept instances as COCO results (image_id 0, RLE masks); returns the file path."""
        kept = prediction.instances[torch.as_tensor(self.kept(prediction, threshold))]
        results = instances_to_coco_results(kept, 0, self._to_dataset_id)
        folders = sorted(self.workdir.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in folders[:-KEEP_DOWNLOADS]:  # Gradio has copied them into its cache by now
            shutil.rmtree(old, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(dir=self.workdir))
        path = folder / f"{Path(prediction.name).stem}_coco_results.json"
        path.write_text(json.dumps(results))
        return str(path)

    def picture(self, prediction: Prediction, threshold: float) -> np.ndarray:
        kept = prediction.instances[torch.as_tensor(self.kept(prediction, threshold))]
        scale = display_scale(*prediction.rgb.shape[:2])
        drawing = draw_visualizer(prediction.rgb, kept, self.predictor.metadata, scale=scale)
        return np.ascontiguousarray(drawing[:, :, ::-1])

    def explain_view(
        self, prediction: Prediction, threshold: float, instance: int | None = None
    ) -> np.ndarray | None:
        """The activation map with the Q query locations (filled: queries of kept instances); `instance` (an
        index into all instances) highlighted. None without an explanation (ONNX)."""
        if prediction.explanation is None:
            return None
        return draw_explanation(
            prediction.rgb,
            prediction.explanation,
            instance,
            scale=display_scale(*prediction.rgb.shape[:2]),
            kept=self.kept(prediction, threshold),
        )

    def describe(self, prediction: Prediction, threshold: float) -> str:
        n = len(self.kept(prediction, threshold))
        return (
            f"**{prediction.name}**: {n} instance{'s' if n != 1 else ''} with score ≥ {threshold:.2f} "
            f"(of {len(prediction.instances)}) · prediction took **{prediction.seconds * 1000:.0f} ms** "
            f"on {self.predictor.cfg.MODEL.DEVICE} (resize, model, post-processing; drawing not included)"
        )

    def instance_at(self, prediction: Prediction, threshold: float, x: int, y: int) -> int | None:
        """The best-scored kept instance whose mask covers pixel (x, y), as an index into all instances."""
        for i in self.kept(prediction, threshold):
            mask = prediction.instances.pred_masks[i]
            if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and bool(mask[y, x]):
                return int(i)
        return None

    def query_text(self, prediction: Prediction, i: int) -> str:
        inst, e = prediction.instances, prediction.explanation
        q = int(prediction.queries[i])
        row, col = e.query_cells[q].tolist()
        name = self.predictor.class_name(int(inst.pred_classes[i]))
        return (
            f"Instance **{name} {float(inst.scores[i]):.3f}** came from query **{q}** of "
            f"{len(e.query_indices)}: stride-16 cell (row {row}, column {col}), activation "
            f"{e.activation[row, col]:.3f} (magenta ring)."
        )


# ---------------------------------------------------------------------------------------------------------------
# the page


def build_app(demo: WebDemo, threshold: float = 0.5, title: str = "FastInst"):
    """The Gradio Blocks of the page (not launched). API endpoint "/predict": (file, threshold) -> outputs."""
    import gradio as gr

    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))
    classes = ", ".join(demo.predictor.metadata.thing_classes)
    weights = demo.predictor.cfg.MODEL.WEIGHTS or "random weights"

    def outputs_for(prediction: Prediction | None, threshold: float, message: str | None = None):
        if prediction is None:
            return None, None, [], None, message or ""
        return (
            demo.picture(prediction, threshold),
            demo.explain_view(prediction, threshold),
            demo.table(prediction, threshold),
            demo.coco_json(prediction, threshold),
            message or demo.describe(prediction, threshold),
        )

    def on_image(path, threshold):
        if path is None:
            return (None, *outputs_for(None, threshold))
        try:
            prediction = demo.predict(path)
        except PageError as e:
            return (None, *outputs_for(None, threshold, f"⚠️ {e}"))
        return (prediction, *outputs_for(prediction, threshold))

    def on_threshold(prediction, threshold):
        return outputs_for(prediction, threshold)

    def show_instance(prediction, threshold, i):
        if prediction is None or i is None:
            return gr.update(), gr.update(), "No instance there."
        if prediction.explanation is None:
            text = "The activation map needs the PyTorch model (not available for ONNX)."
            return gr.update(), None, text
        shown = gr.Tabs(selected="activation")
        return shown, demo.explain_view(prediction, threshold, i), demo.query_text(prediction, i)

    def on_row(prediction, threshold, evt: gr.SelectData):
        if prediction is None:
            return gr.update(), gr.update(), ""
        kept = demo.kept(prediction, threshold)
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        return show_instance(prediction, threshold, int(kept[row]) if row < len(kept) else None)

    def on_click(prediction, threshold, evt: gr.SelectData):
        if prediction is None:
            return gr.update(), gr.update(), ""
        scale = display_scale(*prediction.rgb.shape[:2])  # the picture is drawn this much larger
        x, y = (int(v / scale) for v in evt.index)
        return show_instance(prediction, threshold, demo.instance_at(prediction, threshold, x, y))

    # delete_cache: Gradio removes uploads and results older than an hour from its cache, every hour
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        state = gr.State(None)
        gr.Markdown(
            f"# {title}: instance segmentation\n"
            f"Model: `{demo.predictor.cfg.MODEL.META_ARCHITECTURE}` with `{weights}` · classes: {classes}"
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image", file_count="single", elem_id="upload")
                if examples:
                    gr.Examples(
                        examples=examples, inputs=upload, label="Examples (synthetic shapes)"
                    )
                slider = gr.Slider(
                    0.0,
                    1.0,
                    value=threshold,
                    step=0.01,
                    label="Confidence threshold",
                    elem_id="threshold",
                )
                message = gr.Markdown(elem_id="message")
                download = gr.File(label="COCO results (json, RLE masks)", elem_id="coco")
            with gr.Column(scale=2):
                with gr.Tabs(selected="instances") as tabs:
                    with gr.Tab("Instances", id="instances"):
                        picture = gr.Image(
                            label="Prediction (click an instance)",
                            height=IMAGE_HEIGHT,
                            interactive=False,
                            format="png",
                            elem_id="picture",
                        )
                    with gr.Tab("Activation map", id="activation", elem_id="activation-tab"):
                        activation = gr.Image(
                            label="Proposal class probability (stride 16) and the Q query locations",
                            height=IMAGE_HEIGHT,
                            interactive=False,
                            format="png",
                            elem_id="activation",
                        )
                query_info = gr.Markdown(elem_id="query-info")
                table = gr.Dataframe(
                    headers=TABLE_HEADERS,
                    value=[],
                    interactive=False,
                    label="Instances (click a row to see its query)",
                    elem_id="instances",
                )
        outputs = [picture, activation, table, download, message]
        upload.change(on_image, [upload, slider], [state, *outputs], api_name="predict").then(
            lambda: "", None, query_info, api_visibility="private"
        )
        slider.change(
            on_threshold,
            [state, slider],
            outputs,
            trigger_mode="always_last",
            api_visibility="private",
        ).then(lambda: "", None, query_info, api_visibility="private")
        table.select(
            on_row, [state, slider], [tabs, activation, query_info], api_visibility="private"
        )
        picture.select(
            on_click, [state, slider], [tabs, activation, query_info], api_visibility="private"
        )
    app.queue(default_concurrency_limit=1)  # one prediction at a time; the others wait their turn
    return app


def launch(app, host: str, port: int, max_file_mb: float, block: bool = True) -> str:
    """Start serving; returns the local address (and blocks until Ctrl+C when `block`)."""
    import gradio as gr

    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )  # system fonts: the page loads nothing from the internet
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=True,
        quiet=True,
        max_file_size=f"{max_file_mb}mb",
        ssr_mode=False,
        footer_links=["api"],
        theme=theme,
    )
    print(f"FastInst web demo running at {url} (Ctrl+C to stop)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {host}: anyone who can reach this machine on port {port} can use the "
            "page and its API (no login, no encryption); see docs/web_demo.md",
            flush=True,
        )
    if block:
        try:
            app.block_thread()
        except KeyboardInterrupt:
            pass
    return url


def build_predictor(args: argparse.Namespace) -> FastInstPredictor:
    """The model named on the command line, else the quickstart model; ValueError with the fix if neither."""
    config, opts = args.config_file, list(args.opts)
    if config is None:
        if not (QUICKSTART_CONFIG.is_file() and QUICKSTART_WEIGHTS.is_file()):
            raise ValueError(
                f"No model given and no quickstart model at {QUICKSTART_WEIGHTS.relative_to(REPO)}: run "
                "`make quickstart` (trains one in about 10 minutes on a CPU) or pass --config-file CFG "
                "--opts MODEL.WEIGHTS PATH."
            )
        config = QUICKSTART_CONFIG
        if "MODEL.WEIGHTS" not in opts[::2]:
            opts += ["MODEL.WEIGHTS", str(QUICKSTART_WEIGHTS)]
    return FastInstPredictor(config, device=args.device, score_threshold=0.0, opts=opts)


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(
            "error: the web demo needs Gradio: pip install -r requirements-web.txt", file=sys.stderr
        )
        return 2
    if not 0.0 <= args.confidence_threshold <= 1.0:
        print("error: --confidence-threshold must be in [0, 1].", file=sys.stderr)
        return 2
    try:
        predictor = build_predictor(args)
    except (CheckpointMismatchError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = build_app(WebDemo(predictor, args.max_pixels), args.confidence_threshold)
    try:
        launch(app, args.host, args.port, args.max_file_mb)
    except OSError as e:  # port taken, address not on this machine
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
