"""`OnnxFastInst`: an exported FastInst ONNX file in onnxruntime, with the PyTorch model's input and output.

    model = OnnxFastInst("fastinst.onnx")                        # CPU; providers=[...] for others
    instances = model(image, height=480, width=640)               # image (3, h, w) RGB, already resized
    outputs = model.forward([{"image": image, "height": 480, "width": 640}])  # as FastInst (eval)

The image is what `FastInst` receives: CHW, RGB, 0-255, already resized for testing (ResizeShortestEdge). It is
padded here with the pixel mean (which normalises to exactly 0, the model's padding value) to the size the graph
takes, the graph runs, and the model's own post-processing (`instance_inference`, or the numpy version in
`fastinst.export.postprocess` with postprocess="numpy") builds the `Instances`.
"""

import json
import math
import os

import numpy as np
import torch
from detectron2.structures import Boxes, Instances

from fastinst.export.exporter import METADATA_KEY
from fastinst.export.postprocess import instance_postprocess
from fastinst.modeling.postprocessing import instance_inference


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (runtimes raise multi-line messages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def check_model_file(path: str | os.PathLike) -> None:
    """FileNotFoundError (one line naming `path`) if the exported model file does not exist."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Exported model file not found: {path}")


class OnnxFastInst:
    """FastInst inference with onnxruntime.

    Args:
        path: an ONNX file written by `fastinst.export.export_onnx` / tools/export_model.py.
        providers: onnxruntime execution providers (default ["CPUExecutionProvider"]).
        num_threads: onnxruntime intra-op threads (None: onnxruntime's default).
        pad_to_input_size: fixed-size graphs only. False (default): an image must pad (to the size divisibility)
            to the graph's padded size, so the results equal the PyTorch model's; anything else raises. True:
            smaller images are also padded up to the graph's size; the results then equal the PyTorch model's on a
            batch padded to that size (the positional embedding follows the padded size, SPEC §6.6).
        bool_masks: return pred_masks as bool instead of FastInst's float 0/1 (4x less memory).
        postprocess: "torch" (default) runs the PyTorch model's own `instance_inference` on the graph outputs;
            "numpy" runs `fastinst.export.postprocess.instance_postprocess`, the torch-free version shipped for
            deployments without PyTorch (same results within float rounding; slower on large images).

    Attributes: `session` (onnxruntime.InferenceSession), `metadata` (the export metadata dict).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: list | None = None,
        num_threads: int | None = None,
        pad_to_input_size: bool = False,
        bool_masks: bool = False,
        postprocess: str = "torch",
    ):
        import onnxruntime as ort

        check_model_file(path)
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
        try:
            self.session = ort.InferenceSession(
                os.fspath(path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            raise ValueError(f"onnxruntime cannot read the model {path}: {first_line(e)}") from e
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ValueError(
                f"{path} has no '{METADATA_KEY}' metadata: export it with tools/export_model.py "
                "(fastinst.export.export_onnx)."
            )
        self._setup(json.loads(props[METADATA_KEY]), pad_to_input_size, bool_masks, postprocess)

    def postprocess_options(self) -> dict:
        """MODEL.FASTINST.TEST.BOX_THRESHOLD / LARGEST_COMPONENT as the export metadata records them (files
        exported before they were recorded: 0.5 and False, the official behaviour)."""
        return {
            "box_threshold": float(self.metadata.get("box_threshold", 0.5)),
            "largest_component": bool(self.metadata.get("largest_component", False)),
        }

    def _setup(
        self, metadata: dict, pad_to_input_size: bool, bool_masks: bool, postprocess: str
    ) -> None:
        """What every runtime shares: the export metadata and the input / output options."""
        self.metadata = metadata
        self.pad_to_input_size = pad_to_input_size
        self.bool_masks = bool_masks
        if postprocess not in ("torch", "numpy"):
            raise ValueError(f"postprocess must be 'torch' or 'numpy', got {postprocess!r}.")
        self.postprocess = postprocess
        # "torch" post-processing: pairs whose class probability is below it are not pasted at full size (they
        # cannot pass the caller's score filter); FastInstPredictor sets its score_threshold here.
        self.score_threshold = 0.0
        self._mean = np.asarray(self.metadata["pixel_mean"], dtype=np.float32).reshape(3, 1, 1)

    # -- sizes --

    def _padded(self, h: int, w: int) -> tuple[int, int]:
        div = max(self.metadata["size_divisibility"], 1)
        return math.ceil(h / div) * div, math.ceil(w / div) * div

    def model_padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The padded size `FastInst.preprocess` uses for an h x w image (MODEL.FASTINST.SMALL_INPUT included)."""
        hp, wp = self._padded(h, w)
        if self.metadata["small_input"] == "pad":
            q, step = self.metadata["num_queries"], max(self.metadata["size_divisibility"], 16)
            while (hp // 16) * (wp // 16) < q:
                if hp <= wp:
                    hp += step
                else:
                    wp += step
        return hp, wp

    def graph_input_size(self, h: int, w: int) -> tuple[int, int]:
        """(H, W) of the tensor fed to the graph for an h x w image; raises if the graph cannot take it."""
        meta = self.metadata
        hp, wp = self.model_padded_size(h, w)
        if not meta["dynamic"]:
            gh, gw = meta["input_size"]
            if h <= gh and w <= gw:
                if self.pad_to_input_size or (hp, wp) == self._padded(gh, gw):
                    return gh, gw
            raise ValueError(
                f"This ONNX graph has a fixed input size {gh}x{gw} (padded {self._padded(gh, gw)}); the "
                f"image is {h}x{w} (padded {hp}x{wp}). Export a graph for this size "
                f"(tools/export_model.py --input-size {hp} {wp}) or a dynamic-size graph (--dynamic), or "
                "pass pad_to_input_size=True to pad smaller images up to the graph size."
            )
        q = meta["num_queries"]
        if (hp // 16) * (wp // 16) < q:
            raise ValueError(
                f"The image pads to {hp}x{wp}, a {hp // 16}x{wp // 16} stride-16 map: fewer locations than "
                f"the {q} object queries. Use larger images (the model was exported with "
                "MODEL.FASTINST.SMALL_INPUT 'error'; 'pad' pads small images instead)."
            )
        low, high = meta["min_size"], meta.get("max_size") or max(hp, wp)
        if min(hp, wp) < low or max(hp, wp) > high:
            raise ValueError(
                f"The image is {h}x{w} (padded {hp}x{wp}); this dynamic-size graph takes sides from {low} "
                f"to {high}. Resize the image, or export a fixed-size graph for this size "
                f"(tools/export_model.py --input-size {hp} {wp})."
            )
        return hp, wp

    # -- inference --

    def graph_input(self, image) -> np.ndarray:
        """One (3, h, w) RGB image -> the (1, 3, H, W) float32 graph input, padded with the pixel mean."""
        x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"Expected a (3, H, W) RGB image, got shape {tuple(x.shape)}.")
        h, w = x.shape[1:]
        gh, gw = self.graph_input_size(h, w)
        padded = np.empty((1, 3, gh, gw), dtype=np.float32)
        padded[0] = self._mean  # normalises to exactly 0, the model's padding value
        padded[0, :, :h, :w] = x
        return padded

    def run_graph(self, graph_input: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The runtime call: (1, 3, H, W) float32 -> pred_logits (1, Q, K+1), pred_masks (1, Q, H8, W8)."""
        logits, masks = self.session.run(None, {self.metadata["input_name"]: graph_input})
        return logits, masks

    def run(self, image) -> tuple[np.ndarray, np.ndarray]:
        """The raw graph outputs for one (3, h, w) RGB image: pred_logits (Q, K+1), pred_masks (Q, H8, W8)."""
        logits, masks = self.run_graph(self.graph_input(image))
        return logits[0], masks[0]

    def __call__(self, image, height: int | None = None, width: int | None = None) -> Instances:
        """Instances at (height, width) (default: the image size): pred_masks (k, height, width) float 0/1
        (bool with `bool_masks`), pred_boxes (tight mask boxes), scores, pred_classes (int64), sorted by
        score; as `FastInst`."""
        h, w = image.shape[-2:]
        out_size = (int(height or h), int(width or w))
        logits, masks = self.run(image)
        padded_size = (8 * masks.shape[-2], 8 * masks.shape[-1])
        topk = self.metadata["topk_per_image"]
        if self.postprocess == "torch":
            instances = instance_inference(
                torch.from_numpy(logits),
                torch.from_numpy(masks),
                padded_size,
                (h, w),
                out_size,
                topk,
                self.score_threshold,
                **self.postprocess_options(),
            )
            if not self.bool_masks:  # instance_inference returns bool; this option wants 0/1 floats
                instances.pred_masks = instances.pred_masks.float()
            return instances
        result = instance_postprocess(
            logits,
            masks,
            padded_size,
            (h, w),
            out_size,
            topk,
            **self.postprocess_options(),
        )
        instances = Instances(out_size)
        masks = torch.from_numpy(result["masks"])
        instances.pred_masks = masks if self.bool_masks else masks.float()
        instances.pred_boxes = Boxes(torch.from_numpy(result["boxes"]))
        instances.scores = torch.from_numpy(result["scores"])
        instances.pred_classes = torch.from_numpy(result["classes"])
        return instances

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        """`FastInst.forward` in eval mode: dicts with "image" and optional "height"/"width" ->
        [{"instances": Instances}], one graph run per image."""
        return [
            {"instances": self(x["image"], x.get("height"), x.get("width"))} for x in batched_inputs
        ]
