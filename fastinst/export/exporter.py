"""Export FastInst to ONNX (torch.onnx dynamo exporter, opset 19), TorchScript or torch.export, with metadata.

    model = build_model(cfg); load_checkpoint(model, weights); model.eval()
    export_onnx(model, "fastinst.onnx", input_size=(576, 768))                # fixed size
    export_onnx(model, "fastinst.onnx", input_size=(576, 768), dynamic=True)  # sides: multiples of 32
    export_torchscript(model, "fastinst.ts", input_size=(576, 768))           # fixed size
    export_pt2(model, "fastinst.pt2", input_size=(576, 768), dynamic=True)    # torch.export program

The graph is `FastInstExportModel`: image (1, 3, H, W) float32 RGB 0-255 -> pred_logits (1, Q, K+1),
pred_masks (1, Q, Hp/8, Wp/8). Post-processing is `fastinst.export.postprocess.instance_postprocess` (numpy).
The metadata (`export_metadata`) is stored as JSON under the key "fastinst": in the ONNX model's metadata_props,
in TorchScript / .pt2 archives as the extra file "fastinst.json".

Dynamic sizes: H and W are declared as multiples of the size divisibility (32) between `min_dynamic_size` and
MAX_SIZE. With unpadded symbolic sizes torch.export cannot prove the shape facts the graph relies on (e.g. that
a reshape of the stride-32 map is valid), and exporting goes through `torch.export.export` first (strict=False)
so that such a failure is an error, not a silent fallback to a graph specialised to the example size.
"""

import json
import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from fastinst.export.wrapper import FastInstExportModel

METADATA_KEY = "fastinst"
INPUT_NAME = "image"
OUTPUT_NAMES = ("pred_logits", "pred_masks")
DEFAULT_OPSET = 19  # the first opset with DeformConv (R50-vd-DCN backbones)
# torch's ONNX exporter (dynamo) implements opset 18 and later; it "converts" a lower request after export and, when
# that fails (it does for FastInst), silently keeps 18. Lower opsets are refused instead.
MIN_OPSET = 18
DCN_MIN_OPSET = 19  # ONNX DeformConv exists from opset 19 on
MAX_SIZE = 8192  # largest side of a dynamic-size graph input


def default_input_size(cfg) -> tuple[int, int]:
    """The padded test size of a 4:3 landscape photo: INPUT.MIN_SIZE_TEST x min(4/3 of it, MAX_SIZE_TEST).

    576 x 768 for the x1_576 configs, 640 x 864 for the x3_640 ones.
    """
    short = cfg.INPUT.MIN_SIZE_TEST
    long = min(round(short * 4 / 3), cfg.INPUT.MAX_SIZE_TEST)
    div = max(cfg.MODEL.FASTINST.SIZE_DIVISIBILITY, 1)
    return math.ceil(short / div) * div, math.ceil(long / div) * div


def min_dynamic_size(num_queries: int, size_divisibility: int) -> int:
    """Smallest side of the input of a dynamic-size graph (a multiple of the size divisibility).

    Every accepted size must give a stride-16 map with side >= sqrt(Q), so that top-Q fits, and a stride-32 map
    with side >= 2: torch.export has to prove both from per-side bounds. 160 for Q = 100, 64 for Q <= 16.
    """
    div = max(size_divisibility, 1)
    low = max(2 * 32, 16 * math.ceil(math.sqrt(num_queries)))
    return math.ceil(low / div) * div


def export_metadata(
    model: nn.Module, input_size: tuple[int, int], dynamic: bool, classes: dict | None = None
) -> dict:
    """What a runtime needs besides the graph: sizes, normalisation, queries, classes, the small-input policy.

    `classes` names the model's classes as a training checkpoint records them (`fastinst.checkpoint.METADATA_KEY`):
    "thing_classes" (K names) and "thing_dataset_ids" (K dataset category ids, or empty). They are stored as
    the metadata's "thing_classes" / "thing_dataset_ids" (None when not given), so a runtime that loads the file
    in another process names the classes and writes the dataset's category ids.
    """
    div = int(model.size_divisibility)
    num_queries = int(model.num_queries)
    classes = classes or {}
    return {
        "format_version": 1,
        "input_name": INPUT_NAME,
        "output_names": list(OUTPUT_NAMES),
        "input_size": [int(s) for s in input_size],
        "dynamic": bool(dynamic),
        "min_size": min_dynamic_size(num_queries, div) if dynamic else None,
        "max_size": MAX_SIZE if dynamic else None,
        "size_divisibility": div,
        "num_queries": num_queries,
        "num_classes": int(model.sem_seg_head.num_classes),
        "topk_per_image": int(model.test_topk_per_image),
        "small_input": str(getattr(model, "small_input", "error")),
        # post-processing settings (MODEL.FASTINST.TEST.*); files without them mean 0.5 / False
        "box_threshold": float(getattr(model, "test_box_threshold", 0.5)),
        "largest_component": bool(getattr(model, "test_largest_component", False)),
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
        "pixel_std": [float(v) for v in model.pixel_std.flatten()],
        "thing_classes": list(classes["thing_classes"]) if classes.get("thing_classes") else None,
        "thing_dataset_ids": (
            [int(i) for i in classes["thing_dataset_ids"]]
            if classes.get("thing_dataset_ids")
            else None
        ),
    }


def _check_input_size(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(s) for s in input_size)
    div = max(int(model.size_divisibility), 1)
    hp, wp = math.ceil(h / div) * div, math.ceil(w / div) * div
    if (hp // 16) * (wp // 16) < model.num_queries:
        raise ValueError(
            f"Input size {h}x{w} (padded {hp}x{wp}) gives a {hp // 16}x{wp // 16} stride-16 map, fewer "
            f"locations than the {model.num_queries} queries. Use a larger --input-size."
        )
    return h, w


def example_image(model: nn.Module, input_size: tuple[int, int]) -> torch.Tensor:
    """A fixed random (1, 3, H, W) image in 0-255, for tracing and verification."""
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 3, *input_size), generator=g).float()
    return image.to(model.pixel_mean.device)


def has_deform_conv(model: nn.Module) -> bool:
    """True if the model has deformable convolutions (R50-vd-DCN backbones), which need ONNX opset >= 19."""
    from fastinst.modeling.backbone.resnet_vd import DeformConv2d

    return any(isinstance(m, DeformConv2d) for m in model.modules())


def writable_opsets(model: nn.Module) -> range:
    """The ONNX opsets `export_onnx` can write for `model`: 18 (19 with DCN) to the installed onnx's newest."""
    import onnx.defs

    low = DCN_MIN_OPSET if has_deform_conv(model) else MIN_OPSET
    return range(low, onnx.defs.onnx_opset_version() + 1)


def check_opset(model: nn.Module, opset_version: int, path: str | os.PathLike) -> None:
    """Raise ValueError (one line naming `path`) if `opset_version` is not in `writable_opsets(model)`."""
    opsets = writable_opsets(model)
    if opset_version not in opsets:
        needs = (
            " (DeformConv of the DCN backbone needs 19)" if opsets.start == DCN_MIN_OPSET else ""
        )
        if opset_version < opsets.start:
            advice = f"Pass --opset {opsets.start} or higher."
        else:  # newer than the installed onnx package knows
            advice = (
                f"Pass --opset {opsets.stop - 1} or lower (the newest the installed onnx knows)."
            )
        raise ValueError(
            f"Cannot write {path} at ONNX opset {opset_version}: this model exports at opsets "
            f"{opsets.start} to {opsets.stop - 1}{needs}. {advice}"
        )


def export_program(
    model: nn.Module, input_size: tuple[int, int], dynamic: bool = False
) -> torch.export.ExportedProgram:
    """`torch.export` the inference graph; with `dynamic`, H and W are symbolic (>= `min_dynamic_size`).

    Exporting here, not inside `torch.onnx.export`, makes a graph that cannot be exported dynamically fail loudly
    instead of falling back to a specialised one.
    """
    input_size = _check_input_size(model, input_size)
    wrapper = FastInstExportModel(model).eval()
    example = example_image(model, input_size)
    dynamic_shapes = None
    if dynamic:
        low = min_dynamic_size(wrapper.num_queries, wrapper.size_divisibility)
        if min(input_size) < low:
            raise ValueError(
                f"The example size {input_size} (--input-size) of a dynamic export must be at least {low} "
                "on each side."
            )
        div = max(wrapper.size_divisibility, 1)
        if input_size[0] % div or input_size[1] % div:
            raise ValueError(
                f"A dynamic export needs an example size (--input-size) divisible by {div}, got {input_size}."
            )
        # sides are multiples of the size divisibility (callers pad), which keeps the shape algebra provable
        rows = torch.export.Dim("rows", min=low // div, max=MAX_SIZE // div)
        cols = torch.export.Dim("cols", min=low // div, max=MAX_SIZE // div)
        dynamic_shapes = {"image": {2: div * rows, 3: div * cols}}
    with torch.no_grad():
        return torch.export.export(wrapper, (example,), dynamic_shapes=dynamic_shapes, strict=False)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int],
    *,
    dynamic: bool = False,
    opset_version: int = DEFAULT_OPSET,
    classes: dict | None = None,
) -> Path:
    """Write an ONNX file (weights inside, one file) for `model` (a FastInst, eval mode); returns its path.

    Inputs "image" (1, 3, H, W) float32 RGB 0-255; outputs "pred_logits", "pred_masks". Fixed H x W =
    `input_size` unless `dynamic`. The `export_metadata` JSON (with `classes`, see there) is stored under
    metadata_props["fastinst"].
    The file declares exactly `opset_version`; an opset outside `writable_opsets(model)` raises ValueError
    before anything is written. The file is written under a temporary name and renamed when complete, so a
    failure leaves no partial file at `path`.
    """
    path = Path(path)
    check_opset(model, opset_version, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = export_program(model, input_size, dynamic)
    onnx_program = torch.onnx.export(
        program,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        opset_version=opset_version,
        dynamo=True,
        verbose=False,
    )
    written = onnx_program.model.opset_imports.get("", None)
    if written != opset_version:  # never report another opset than requested as a success
        raise ValueError(
            f"Cannot write {path} at ONNX opset {opset_version}: torch's exporter produced opset {written}."
        )
    meta = export_metadata(model, input_size, dynamic, classes)
    onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(meta)
    partial = path.with_name(path.name + ".partial")
    try:
        onnx_program.save(partial, external_data=False)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int],
    classes: dict | None = None,
) -> Path:
    """Write a traced TorchScript module (fixed input size) with the metadata as extra file "fastinst.json".

    TorchScript is deprecated in recent torch; prefer ONNX or `export_pt2`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    input_size = _check_input_size(model, input_size)
    wrapper = FastInstExportModel(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # shape checks (e.g. "enough locations for top-Q") are evaluated once at the traced size, as intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        traced = torch.jit.trace(wrapper, (example_image(model, input_size),), check_trace=False)
        meta = export_metadata(model, input_size, dynamic=False, classes=classes)
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
    return path


def export_pt2(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int],
    *,
    dynamic: bool = False,
    classes: dict | None = None,
) -> Path:
    """Write the `torch.export` program (`torch.export.load(path).module()` runs it) with the metadata as extra
    file "fastinst.json"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = export_program(model, input_size, dynamic)
    meta = export_metadata(model, input_size, dynamic, classes)
    torch.export.save(program, path, extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
    return path


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The "fastinst" metadata of an exported ONNX file (without loading the weights)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(
            f"{path} has no '{METADATA_KEY}' metadata: it was not written by fastinst.export.export_onnx "
            "(tools/export_model.py)."
        )
    return json.loads(props[METADATA_KEY])
