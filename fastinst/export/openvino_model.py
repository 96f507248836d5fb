"""OpenVINO IR export of FastInst (fp32, or INT8 by NNCF post-training quantization) and `OpenVinoFastInst`.

    onnx_to_openvino("fastinst.onnx", "fastinst.xml")                           # fp32 IR (.xml + .bin)
    inputs = calibration_inputs(calibration_images("synthetic_train", 64), metadata, (176, 256))
    onnx_to_openvino("fastinst.onnx", "fastinst_int8.xml", calibration=inputs)  # INT8 IR
    model = OpenVinoFastInst("fastinst.xml")                                    # as OnnxFastInst
    instances = model(image, height=480, width=640)

The IR is converted from the ONNX export (`openvino.convert_model`), so it has the same input ("image", (1, 3, H, W)
float32 RGB 0-255), outputs ("pred_logits", "pred_masks") and metadata (the `export_metadata` JSON, here in the
model's rt_info under "fastinst"). Weights are saved in fp32 (`compress_to_fp16=False`; OpenVINO's default of
fp16 weights changes the raw outputs by ~1e-3 relative).

Precision at run time: OpenVINO's CPU plugin runs in bf16 by default on CPUs with native bf16 (AVX-512 BF16, AMX),
which gives ~1e-2 relative differences from onnxruntime / PyTorch. `OpenVinoFastInst` sets
INFERENCE_PRECISION_HINT f32 unless asked otherwise (`inference_precision="bf16"`).

INT8: `nncf.quantize` (post-training, min-max statistics on calibration images, the "mixed" preset: symmetric
weights, asymmetric activations). The parts of the network named in `keep_fp32` (see `FP32_SCOPES`) stay in
floating point; which ones is decided by measurement (docs/deployment.md).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fastinst.export.exporter import METADATA_KEY, read_onnx_metadata
from fastinst.export.onnx_model import OnnxFastInst, check_model_file, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Parts of the network that can be kept in floating point in an INT8 IR: regular expressions on the PyTorch
# module path of each ONNX node (torch's exporter records it in the node's "namespace" metadata).
FP32_SCOPES = {
    "backbone": r"^backbone(\.|$)",
    "pixel-decoder": r"^sem_seg_head\.pixel_decoder(\.|$)",
    "query-proposal": r"^sem_seg_head\.predictor\.query_proposal(\.|$)",
    "decoder-attention": r"^sem_seg_head\.predictor\.transformer_\w+_attention_layers\.",
    "decoder-ffn": r"^sem_seg_head\.predictor\.transformer_\w+_ffn_layers\.",
    "class-head": r"^sem_seg_head\.predictor\.class_embed_layers\.",
    # the mask embeddings, the mask features and their product (the einsum, in the predictor itself)
    "mask-head": r"^sem_seg_head\.predictor(\.mask_embed_layers\.|\.mask_features_layers\.|$)",
}
DEFAULT_KEEP_FP32 = ("decoder-attention",)  # measured: see docs/deployment.md


# ---------------------------------------------------------------------------------------------------------------
# reading an IR


def check_ir_files(path: str | os.PathLike) -> None:
    """Refuse, in one line naming the file, an IR that OpenVINO would refuse with a multi-line message.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is not XML or its root element is not <net> (not an OpenVINO IR), or the weights
            file beside it (same name, .bin) is missing or empty.
    """
    from xml.etree.ElementTree import ParseError, iterparse

    check_model_file(path)
    try:  # the first element only: an IR's .xml can be megabytes
        root = next(iterparse(os.fspath(path), events=("start",)))[1].tag
    except (ParseError, StopIteration) as e:
        reason = f" ({first_line(e)})" if isinstance(e, ParseError) else " (empty file)"
        raise ValueError(f"{path} is not an OpenVINO IR: not an XML file{reason}") from None
    if root != "net":
        raise ValueError(f"{path} is not an OpenVINO IR: its root element is <{root}>, not <net>")
    weights = Path(path).with_suffix(".bin")
    if not weights.is_file() or weights.stat().st_size == 0:
        state = "missing" if not weights.is_file() else "empty"
        raise ValueError(
            f"OpenVINO cannot read the model {path}: its weights file {weights} is {state} (an IR is the "
            ".xml and the .bin written beside it)"
        )


def openvino_error_line(error: BaseException) -> str:
    """The line of an OpenVINO exception that says what is wrong. OpenVINO's messages stack the source locations
    of each re-raise ("Exception from src/...", "Check '...' failed at src/...") above the reason, so the first
    line says nothing; the reason is the last line that is not one of those."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [x for x in lines if not x.startswith(("Exception from ", "Check '"))]
    return reasons[-1] if reasons else first_line(error)


# ---------------------------------------------------------------------------------------------------------------
# export


def node_module_paths(onnx_path: str | os.PathLike) -> dict[str, str]:
    """ONNX node name -> the PyTorch module path that emitted it ("" for the top level).

    Reads the "namespace" metadata of torch's ONNX exporter: "name: Class/name: Class/.../fx_node: op".
    """
    import onnx

    proto = onnx.load(os.fspath(onnx_path), load_external_data=False)
    paths = {}
    for node in proto.graph.node:
        namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        parts = namespace.split("/")
        paths[node.name] = parts[-2].split(":")[0].strip() if len(parts) > 1 else ""
    return paths


def fp32_node_names(onnx_path: str | os.PathLike, keep_fp32: Sequence[str]) -> list[str]:
    """Names of the ONNX (= IR) nodes inside the `keep_fp32` scopes (keys of `FP32_SCOPES`)."""
    unknown = [s for s in keep_fp32 if s not in FP32_SCOPES]
    if unknown:
        raise ValueError(
            f"Unknown scope(s) {unknown} to keep in fp32; choose from {sorted(FP32_SCOPES)}."
        )
    patterns = [re.compile(FP32_SCOPES[s]) for s in keep_fp32]
    return [
        name
        for name, module in node_module_paths(onnx_path).items()
        if any(p.search(module) for p in patterns)
    ]


def save_ir(ov_model, xml_path: str | os.PathLike) -> Path:
    """Save an OpenVINO model as `xml_path` + the .bin beside it, fp32 weights; written under temporary names and
    renamed when complete, so that a failure leaves no partial IR."""
    import openvino as ov

    xml_path = Path(xml_path)
    if xml_path.suffix != ".xml":
        raise ValueError(f"An OpenVINO IR path must end in .xml, got {xml_path}.")
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_xml = xml_path.with_name(xml_path.stem + ".partial.xml")
    tmp_bin, bin_path = tmp_xml.with_suffix(".bin"), xml_path.with_suffix(".bin")
    try:
        ov.save_model(ov_model, os.fspath(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_bin, bin_path)
        os.replace(tmp_xml, xml_path)  # the .xml last: it names a complete IR
    finally:
        tmp_xml.unlink(missing_ok=True)
        tmp_bin.unlink(missing_ok=True)
    return xml_path


def onnx_to_openvino(
    onnx_path: str | os.PathLike,
    xml_path: str | os.PathLike,
    calibration: Sequence[np.ndarray] | None = None,
    keep_fp32: Sequence[str] = DEFAULT_KEEP_FP32,
) -> Path:
    """Convert an ONNX export (`export_onnx`) to an OpenVINO IR at `xml_path` (+ .bin); returns the .xml path.

    Same input, outputs and "fastinst" metadata (in rt_info) as the ONNX file. With `calibration` (graph inputs,
    (1, 3, H, W) float32, e.g. from `calibration_inputs`), the IR is quantized to INT8 with `nncf.quantize`,
    leaving the `keep_fp32` scopes (keys of `FP32_SCOPES`) in floating point; the metadata then records
    "precision": "int8" and the scopes kept.
    """
    import openvino as ov

    meta = read_onnx_metadata(onnx_path)
    ov_model = ov.convert_model(os.fspath(onnx_path))
    meta["precision"] = "fp32"
    if calibration is not None:
        ov_model = quantize_int8(ov_model, calibration, fp32_node_names(onnx_path, keep_fp32))
        meta.update(precision="int8", keep_fp32=list(keep_fp32), calibration_size=len(calibration))
    ov_model.set_rt_info(json.dumps(meta), [METADATA_KEY])
    return save_ir(ov_model, xml_path)


def quantize_int8(ov_model, calibration: Sequence[np.ndarray], fp32_names: Sequence[str] = ()):
    """NNCF post-training INT8 quantization of an OpenVINO model; the named ops stay in floating point.

    calibration: graph inputs (1, 3, H, W) float32 RGB 0-255, at least one. Fast bias correction is on (NNCF's
    default); SmoothQuant is off (it is for transformer LLM activations; FastInst is mostly convolutions).
    """
    import nncf

    if len(calibration) == 0:
        raise ValueError("INT8 quantization needs at least one calibration image.")
    ignored = nncf.IgnoredScope(names=list(fp32_names), validate=False)
    return nncf.quantize(
        ov_model,
        nncf.Dataset(list(calibration)),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(calibration),
        ignored_scope=ignored,
    )


# ---------------------------------------------------------------------------------------------------------------
# calibration data


def calibration_images(source: str | os.PathLike, count: int | None = None) -> list[str]:
    """Image files for calibration: the images of a folder (sorted by name, not recursive) or of a registered
    detectron2 dataset (its "file_name"s), evenly spread over the source when `count` is smaller.

    Raises FileNotFoundError for a path that does not exist and is no dataset name, ValueError for a folder or
    dataset without images.
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        files = sorted(
            os.path.join(source, f)
            for f in os.listdir(source)
            if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(source, f))
        )
        if not files:
            raise ValueError(
                f"Calibration folder {source} has no images ({', '.join(IMAGE_EXTENSIONS)})."
            )
    else:
        from detectron2.data import DatasetCatalog

        if source not in DatasetCatalog.list():
            raise FileNotFoundError(
                f"Calibration source not found: {source} is neither a folder nor a registered dataset name "
                "(e.g. synthetic_train)."
            )
        files = [d["file_name"] for d in DatasetCatalog.get(source)]
        if not files:
            raise ValueError(f"Calibration dataset {source} has no images.")
    if count is not None and 0 < count < len(files):
        step = len(files) / count
        files = [files[int(i * step)] for i in range(count)]
    return files


def _unreadable(image, error: BaseException) -> str:
    """Why `image` could not be read, in one clause that names it."""
    reason = first_line(error).rstrip(".")
    return reason if str(image) in reason else f"{image}: {reason}"


def check_calibration_source(source: str | os.PathLike, count: int | None = None) -> list[str]:
    """`calibration_images(source, count)`, refused unless one of them can be read: the check a command line
    makes before an export that takes minutes. Decodes images in order up to the first readable one.

    Raises FileNotFoundError / ValueError as `calibration_images`, and ValueError naming `source` when none of
    its images can be read (with the first file's reason).
    """
    from fastinst.predictor import to_rgb

    files = calibration_images(source, count)
    reasons = []
    for image in files:
        try:
            to_rgb(image, format="RGB")
            return files
        except (OSError, ValueError) as e:
            reasons.append(_unreadable(image, e))
    raise ValueError(
        f"Calibration source {os.fspath(source)}: none of its {len(files)} images can be read "
        f"(first: {reasons[0]})."
    )


def calibration_inputs(
    images: Iterable[str | os.PathLike | np.ndarray],
    metadata: dict,
    test_size: tuple[int, int],
) -> list[np.ndarray]:
    """Graph inputs (1, 3, H, W) float32 for calibration, prepared as at inference: RGB, resized with
    ResizeShortestEdge(test_size = (INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)), padded with the pixel mean.

    For a fixed-size graph an image is further scaled down to fit the graph's input size if needed. Images that
    cannot be read are skipped (ValueError if none is left). `images`: paths or (H, W, 3) RGB uint8 arrays.
    """
    from detectron2.data import transforms as T

    from fastinst.predictor import to_rgb

    resize = T.ResizeShortestEdge([test_size[0], test_size[0]], test_size[1])
    layout = OnnxFastInst.__new__(OnnxFastInst)  # only the size logic and the padding
    layout._setup(metadata, pad_to_input_size=True, bool_masks=False, postprocess="torch")
    inputs, skipped = [], []
    for image in images:
        try:
            rgb = to_rgb(image, format="RGB")
        except (OSError, ValueError) as e:
            skipped.append(_unreadable(image, e))
            continue
        rgb = resize.get_transform(rgb).apply_image(rgb)
        if not metadata["dynamic"]:
            gh, gw = metadata["input_size"]
            scale = min(gh / rgb.shape[0], gw / rgb.shape[1], 1.0)
            if scale < 1.0:
                h, w = rgb.shape[:2]
                new_h, new_w = max(1, math.floor(h * scale)), max(1, math.floor(w * scale))
                rgb = T.ResizeTransform(h, w, new_h, new_w).apply_image(rgb)
        inputs.append(layout.graph_input(rgb.transpose(2, 0, 1).astype(np.float32)))
    if not inputs:
        raise ValueError(
            f"None of the {len(skipped)} calibration images could be read (first: {skipped[0]})."
        )
    return inputs


# ---------------------------------------------------------------------------------------------------------------
# runtime


def read_openvino_metadata(xml_path: str | os.PathLike, ov_model=None) -> dict:
    """The "fastinst" metadata of an IR written by `onnx_to_openvino` (reads the .xml only if no model given)."""
    import openvino as ov

    if ov_model is None:
        check_model_file(xml_path)
        ov_model = ov.Core().read_model(os.fspath(xml_path))
    if not ov_model.has_rt_info([METADATA_KEY]):
        raise ValueError(
            f"{xml_path} has no '{METADATA_KEY}' metadata: export it with tools/export_model.py "
            "--format openvino."
        )
    return json.loads(ov_model.get_rt_info([METADATA_KEY]).astype(str))


class OpenVinoFastInst(OnnxFastInst):
    """FastInst inference with OpenVINO (CPU): an IR written by tools/export_model.py --format openvino.

    Same inputs, outputs and options as `OnnxFastInst` (the image as FastInst receives it, resized; Instances at
    the requested size), plus:

    Args:
        num_threads: OpenVINO inference threads (None: OpenVINO's default, all cores).
        inference_precision: "f32" (default; the fp32 IR then matches PyTorch within 1e-4) or "bf16" (faster on
            CPUs with native bf16, ~1e-2 relative differences); the CPU plugin's INFERENCE_PRECISION_HINT.
        device: OpenVINO device name ("CPU").
        static_size: (H, W), multiples of the size divisibility: a dynamic-size IR is reshaped to this one input
            size before compiling (faster; other sizes are then refused by the runtime).
        perf_count: compile with OpenVINO's PERF_COUNT, so that `op_times()` can say where the graph's time goes
            (adds a little time to each call).

    Raises FileNotFoundError for a missing .xml, ValueError (naming the file) for one OpenVINO cannot read or
    that has no FastInst metadata.
    Attributes: `compiled` (openvino.CompiledModel), `metadata` (the export metadata dict).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_threads: int | None = None,
        pad_to_input_size: bool = False,
        bool_masks: bool = False,
        postprocess: str = "torch",
        inference_precision: str = "f32",
        device: str = "CPU",
        static_size: tuple[int, int] | None = None,
        perf_count: bool = False,
    ):
        import openvino as ov

        check_ir_files(path)
        if inference_precision not in ("f32", "bf16"):
            raise ValueError(
                f"inference_precision must be 'f32' or 'bf16', got {inference_precision!r}."
            )
        core = ov.Core()
        try:
            ov_model = core.read_model(os.fspath(path))
        except Exception as e:  # OpenVINO raises RuntimeError with a long multi-line message
            raise ValueError(
                f"OpenVINO cannot read the model {path}: {openvino_error_line(e)}"
            ) from e
        metadata = read_openvino_metadata(path, ov_model)
        if static_size is not None and metadata["dynamic"]:
            ov_model.reshape({metadata["input_name"]: [1, 3, *static_size]})
        config = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY"}
        if num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        if perf_count:
            config["PERF_COUNT"] = "YES"
        self.perf_count = perf_count
        self.compiled = core.compile_model(ov_model, device, config)
        self._request = self.compiled.create_infer_request()
        self._setup(metadata, pad_to_input_size, bool_masks, postprocess)

    def op_times(self) -> dict[str, float]:
        """Milliseconds per kind of operation in the last graph run, largest first: "NodeType exec_type" (e.g.
        "Convolution jit_avx2_I8": an INT8 convolution in oneDNN's AVX2 kernel) -> summed real time of the
        nodes of that kind, from OpenVINO's profiling info. Needs `perf_count=True` (RuntimeError otherwise)."""
        if not self.perf_count:
            raise RuntimeError("op_times() needs an OpenVinoFastInst created with perf_count=True.")
        totals: dict[str, float] = {}
        for info in self._request.profiling_info:
            key = f"{info.node_type} {info.exec_type}".strip()
            totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds() * 1e3
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def run_graph(self, graph_input: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, 3, H, W) float32 -> pred_logits (1, Q, K+1), pred_masks (1, Q, H8, W8) (copies)."""
        outputs = self._request.infer({self.metadata["input_name"]: graph_input})
        by_name = {port.get_any_name(): value for port, value in outputs.items()}
        return tuple(np.array(by_name[name]) for name in self.metadata["output_names"])
