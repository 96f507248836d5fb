"""`FastInstPredictor`: images in, detectron2 `Instances` out, for scripts, notebooks and the demo.

    predictor = FastInstPredictor("fastinst_R50_ppm-fpn_x1_576", weights="fastinst_R50_ppm-fpn_x1_576.pth")
    instances = predictor("photo.jpg")                     # a path, a numpy image (BGR/RGB) or a PIL image
    batch = predictor.predict_batch(images, batch_size=8)  # one forward pass per batch
    results = predictor.to_coco_results(images, image_ids=[139, 285])  # COCO result dicts (RLE masks)

Pre-processing is detectron2's `DefaultPredictor` (and the evaluation mapper): the image in RGB, resized with
ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST), converted to INPUT.FORMAT; the outputs come back at
the original image size. Every backend-specific step is in `_forward`, so another runtime (e.g. ONNX) can replace
the PyTorch model by overriding that one method.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.structures import Instances
from PIL import Image, ImageOps

from fastinst.checkpoint import METADATA_KEY, load_checkpoint
from fastinst.config import load_config, merge_config_opts
from fastinst.data.image_io import UnreadableImageError as ImageReadError
from fastinst.data.image_io import array_from_pil, read_image
from fastinst.inference import check_precision, inference_context, prepare_for_inference

__all__ = [
    "MODEL_NAMES",
    "FastInstPredictor",
    "UnreadableImageError",
    "build_predictor_cfg",
    "dataset_metadata",
    "instances_to_coco_results",
    "resolve_config",
    "to_rgb",
]

logger = logging.getLogger(__name__)

# The five official models; `FastInstPredictor(name)` reads configs/coco/instance-segmentation/<name>.yaml.
MODEL_NAMES = (
    "fastinst_R50_ppm-fpn_x1_576",
    "fastinst_R50_ppm-fpn_x3_640",
    "fastinst_R101_ppm-fpn_x3_640",
    "fastinst_R50-vd-dcn_ppm-fpn_x1_576",
    "fastinst_R50-vd-dcn_ppm-fpn_x3_640",
)
# MODEL.WEIGHTS of the official YAMLs: ImageNet backbones for training, not FastInst checkpoints.
BACKBONE_PRETRAINS = (
    "detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    "checkpoints/R-101.pkl",
    "checkpoints/resnet50d_ra2-464e36ba.pkl",
)

ImageInput = str | os.PathLike | np.ndarray | Image.Image


class UnreadableImageError(ValueError):
    """An image file that exists but cannot be decoded (empty, truncated, or not an image)."""


# ---------------------------------------------------------------------------------------------------------------
# config


def config_dirs() -> list[Path]:
    """Folders searched for `configs/coco/instance-segmentation/<name>.yaml`, most specific first.

    The repository checkout (the package is installed editable) and a `configs/` folder shipped inside the package.
    """
    package = Path(__file__).resolve().parent  # the fastinst package
    return [
        package.parent / "configs" / "coco" / "instance-segmentation",
        package / "configs" / "coco" / "instance-segmentation",
    ]


def resolve_config(config: str | os.PathLike) -> Path:
    """A YAML path, or an official model name (e.g. "fastinst_R50_ppm-fpn_x1_576") -> the YAML file."""
    path = Path(config).expanduser()
    if path.is_file():
        return path
    name = str(config).removesuffix(".yaml")
    if name in MODEL_NAMES:
        for folder in config_dirs():
            if (folder / f"{name}.yaml").is_file():
                return folder / f"{name}.yaml"
        searched = ", ".join(str(d) for d in config_dirs())
        raise FileNotFoundError(f"Config of model {name!r} not found (searched {searched}).")
    raise FileNotFoundError(
        f"Config file not found: {config}. Pass a YAML path or one of the model names {list(MODEL_NAMES)}."
    )


def build_predictor_cfg(
    config: str | os.PathLike | CfgNode,
    opts: Sequence[Any] | None = None,
    device: str | None = None,
) -> CfgNode:
    """A frozen inference config from a YAML path, a model name or a CfgNode (cloned), plus KEY VALUE `opts`."""
    if isinstance(config, CfgNode):
        cfg = config.clone()
        cfg.defrost()
    else:
        cfg = load_config(resolve_config(config))
    if opts:
        merge_config_opts(cfg, opts)
    if device is not None:
        cfg.MODEL.DEVICE = str(device)
    cfg.freeze()
    return cfg


def dataset_metadata(cfg: CfgNode, record: dict | None = None) -> Metadata:
    """The class names and dataset category ids of the model built from `cfg`: the one place that answers them.

    Sources, in order; the first with exactly MODEL.SEM_SEG_HEAD.NUM_CLASSES names wins:

    1. DATASETS.THING_CLASSES / DATASETS.THING_DATASET_IDS, which train_net.py writes into OUTPUT_DIR/config.yaml;
    2. `record`: what a training run stored in its checkpoints (`fastinst.checkpoint.METADATA_KEY` of the dict
       that `load_checkpoint` returns), for a checkpoint used with another config;
    3. the registered metadata of DATASETS.TEST[0], else DATASETS.TRAIN[0] (official COCO configs: COCO's 80 names
       and category ids 1..90);
    4. stand-ins "class 0" .. "class K-1" with category ids 1..K, with a warning that says so.

    Returns a `Metadata` with `thing_classes` (K names) and, when the ids are known,
    `thing_dataset_id_to_contiguous_id` ({dataset category id: class index}, used by `to_coco_results`).
    A source with another number of names is skipped with a warning. Raises ValueError if
    DATASETS.THING_DATASET_IDS is set but does not give one distinct id per name of DATASETS.THING_CLASSES.
    """
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    stored = list(cfg.DATASETS.get("THING_CLASSES", []))
    stored_ids = list(cfg.DATASETS.get("THING_DATASET_IDS", []))
    if stored_ids and (len(stored_ids) != len(stored) or len(set(stored_ids)) != len(stored_ids)):
        raise ValueError(
            f"DATASETS.THING_DATASET_IDS {stored_ids} must give one distinct category id per name of "
            f"DATASETS.THING_CLASSES ({len(stored)} names)."
        )
    candidates = [("DATASETS.THING_CLASSES of the config", stored, stored_ids)]
    if record:
        candidates.append(
            (
                "the checkpoint's record",
                record.get("thing_classes"),
                record.get("thing_dataset_ids"),
            )
        )
    for source, classes, ids in candidates:
        if not classes:
            continue
        if len(classes) != num_classes:
            logger.warning(
                "%s lists %d classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES is %d; not using its names.",
                source,
                len(classes),
                num_classes,
            )
            continue
        meta = Metadata(name="fastinst_model", thing_classes=list(classes))
        if ids:
            meta.thing_dataset_id_to_contiguous_id = {int(d): i for i, d in enumerate(ids)}
        return meta
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    if names:
        meta = MetadataCatalog.get(names[0])
        classes = meta.get("thing_classes")
        if classes is not None and len(classes) == num_classes:
            return meta
        if classes is not None:
            logger.warning(
                "Dataset %s has %d classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES is %d; not using its names.",
                names[0],
                len(classes),
                num_classes,
            )
    if not names:
        where = "no dataset in DATASETS.TEST / TRAIN"
    elif MetadataCatalog.get(names[0]).get("thing_classes") is None:
        where = f"dataset {names[0]!r} is not registered in this process"
    else:
        where = f"dataset {names[0]!r} has other classes"
    logger.warning(
        "The model's class names are unknown (no DATASETS.THING_CLASSES in the config, no record in the "
        "checkpoint, %s): using the stand-ins 'class 0' .. 'class %d' and category ids 1 .. %d. Use the "
        "config.yaml that training wrote into its OUTPUT_DIR to get the real names and ids.",
        where,
        num_classes - 1,
        num_classes,
    )
    return Metadata(
        name="fastinst_generic", thing_classes=[f"class {i}" for i in range(num_classes)]
    )


# ---------------------------------------------------------------------------------------------------------------
# images


def to_rgb(image: ImageInput, format: str = "BGR") -> np.ndarray:
    """Any supported image -> an (H, W, 3) uint8 RGB array (contiguous).

    - str / PathLike: read with `fastinst.data.image_io.read_image`, as in training and evaluation (EXIF
      orientation applied, every Pillow mode; see that module); `format` is ignored.
    - numpy (H, W, 3) uint8: channel order `format` ("BGR", as OpenCV reads, or "RGB"); (H, W, 4) is BGRA/RGBA
      and the alpha channel is dropped (no compositing); (H, W) or (H, W, 1) is grayscale.
    - PIL image of any mode: EXIF orientation applied, converted to RGB (alpha dropped).
    """
    if isinstance(image, str | os.PathLike):
        return _read_rgb(image)
    if isinstance(image, Image.Image):
        return array_from_pil(ImageOps.exif_transpose(image), "RGB", name="the PIL image")
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"Unsupported image type {type(image).__name__}: pass a file path, a numpy array or a PIL image."
        )
    if format not in ("BGR", "RGB"):
        raise ValueError(f"format must be 'BGR' or 'RGB', got {format!r}.")
    if image.dtype != np.uint8:
        raise ValueError(f"numpy images must be uint8 (0-255), got {image.dtype}; convert first.")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"numpy images must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}.")
    image = image[:, :, :3]
    if format == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def _read_rgb(path: str | os.PathLike) -> np.ndarray:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {path}")
    try:
        return read_image(path, "RGB")  # the reader of training and evaluation
    except ImageReadError as e:
        raise UnreadableImageError(str(e)) from e


# ---------------------------------------------------------------------------------------------------------------
# COCO results


def instances_to_coco_results(
    instances: Instances, image_id: Any, contiguous_to_dataset_id: dict[int, int] | None = None
) -> list[dict]:
    """COCO result dicts for one image: image_id, category_id, segmentation (RLE, counts as str), bbox XYWH, score.

    `category_id` is `contiguous_to_dataset_id[class]` when a mapping is given, else class + 1 (COCO-style ids
    counting from 1).
    """
    from pycocotools import mask as mask_util

    masks = np.asarray(instances.pred_masks.numpy(), dtype=np.uint8)  # (k, H, W)
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    boxes = instances.pred_boxes.tensor.numpy().astype(float)  # (k, 4) XYXY
    results = []
    for rle, box, score, label in zip(
        rles, boxes, instances.scores.tolist(), instances.pred_classes.tolist()
    ):
        rle["counts"] = rle["counts"].decode("utf-8")
        x0, y0, x1, y1 = box.tolist()
        category = contiguous_to_dataset_id[label] if contiguous_to_dataset_id else label + 1
        results.append(
            {
                "image_id": image_id,
                "category_id": int(category),
                "segmentation": rle,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(score),
            }
        )
    return results


# ---------------------------------------------------------------------------------------------------------------
# predictor


class FastInstPredictor:
    """FastInst inference on single images or batches, with pre-processing and score filtering.

    Args:
        config: a YAML path, an official model name (see `MODEL_NAMES`) or a detectron2 CfgNode (not modified).
        weights: checkpoint path or URL; None reads MODEL.WEIGHTS. Loaded strictly (every key must fit, see
            `fastinst.checkpoint.load_checkpoint`). None with an empty MODEL.WEIGHTS gives random weights (with a
            warning): useful for timing only.
        device: "cpu", "cuda", "cuda:1" ...; None keeps MODEL.DEVICE.
        score_threshold: instances with a score below it are dropped (0 keeps all TEST.DETECTIONS_PER_IMAGE).
        precision: "fp32", "bf16" or "fp16" (CUDA only) autocast for the network; post-processing stays fp32.
        compile: `torch.compile` the backbone.
        opts: KEY VALUE config overrides, e.g. ["INPUT.MIN_SIZE_TEST", 512].

    Attributes: `cfg` (frozen), `model`, `metadata` (always has `thing_classes`), `input_format`, `aug`.
    """

    def __init__(
        self,
        config: str | os.PathLike | CfgNode,
        weights: str | os.PathLike | None = None,
        device: str | None = "cpu",
        score_threshold: float = 0.5,
        precision: str = "fp32",
        compile: bool = False,
        opts: Sequence[Any] | None = None,
    ):
        self.cfg = build_predictor_cfg(config, opts, device)
        self.score_threshold = float(score_threshold)
        self.precision = check_precision(precision, self.cfg.MODEL.DEVICE)
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}.")
        self.aug = T.ResizeShortestEdge(
            [self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MIN_SIZE_TEST],
            self.cfg.INPUT.MAX_SIZE_TEST,
        )
        self._record: dict | None = None  # the training run's record in the checkpoint, if any
        self.model = self._build_model(weights, precision, compile)
        if self._record is None and isinstance(getattr(self.model, "metadata", None), dict):
            self._record = self.model.metadata  # an exported file's classes (ONNX / OpenVINO)
        self.metadata = dataset_metadata(self.cfg, self._record)

    def _build_model(self, weights, precision: str, compile: bool) -> torch.nn.Module:
        """Build the PyTorch model and load its weights (the part an ONNX backend replaces)."""
        weights = os.fspath(weights) if weights is not None else self.cfg.MODEL.WEIGHTS
        if weights.endswith(
            ".onnx"
        ):  # an exported graph (tools/export_model.py), run by onnxruntime
            from fastinst.export import OnnxFastInst

            if precision != "fp32" or compile:
                raise ValueError(
                    "An ONNX model runs in fp32 without compile: use precision='fp32', compile=False."
                )
            if self.cfg.INPUT.FORMAT != "RGB":
                raise ValueError(
                    "ONNX models take RGB input; the config's INPUT.FORMAT must be 'RGB'."
                )
            cuda = self.cfg.MODEL.DEVICE.startswith("cuda")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else None
            return OnnxFastInst(weights, providers=providers, bool_masks=True)
        if weights.endswith(".xml"):  # an OpenVINO IR (tools/export_model.py --format openvino)
            from fastinst.export import OpenVinoFastInst

            if precision not in ("fp32", "bf16") or compile:
                raise ValueError(
                    "An OpenVINO model runs in fp32 or bf16 without compile: use precision='fp32' "
                    "(or 'bf16'), compile=False."
                )
            if self.cfg.INPUT.FORMAT != "RGB":
                raise ValueError(
                    "OpenVINO models take RGB input; the config's INPUT.FORMAT must be 'RGB'."
                )
            hint = "bf16" if precision == "bf16" else "f32"
            return OpenVinoFastInst(weights, bool_masks=True, inference_precision=hint)
        if weights in BACKBONE_PRETRAINS:
            raise ValueError(
                f"MODEL.WEIGHTS is {weights}, the ImageNet backbone used to start training, not a FastInst "
                "checkpoint. Pass a trained FastInst checkpoint (weights=... or MODEL.WEIGHTS path/to/model.pth), "
                "or MODEL.WEIGHTS '' for random weights."
            )
        model = build_model(self.cfg)
        if weights:
            extra = load_checkpoint(model, weights, strict=True)
            self._record = extra.get(METADATA_KEY)
        else:
            logger.warning(
                "No weights given (MODEL.WEIGHTS is empty): the model has random weights."
            )
        return prepare_for_inference(model, precision, compile)

    # -- the backend --

    def _forward(self, batch_inputs: list[dict]) -> list[Instances]:
        """Run one batch: dicts with "image" (C, H, W) float tensor in INPUT.FORMAT, "height", "width".

        Returns `Instances` at (height, width) on the CPU, sorted by score, with bool pred_masks, not yet
        filtered by `score_threshold`; a PyTorch model leaves out, before pasting their masks at full size,
        the instances whose class probability alone is below `score_threshold` (they could not pass it).
        This is the only method that touches the network.
        """
        if not isinstance(self.model, torch.nn.Module):  # OnnxFastInst: one graph run per image
            self.model.score_threshold = self.score_threshold  # memory follows what is kept
            return [self.model(x["image"], x["height"], x["width"]) for x in batch_inputs]
        self.model.test_score_threshold = self.score_threshold  # memory follows what is kept
        with inference_context(self.model, self.precision):
            outputs = self.model(batch_inputs)
        results = []
        for out in outputs:
            instances = out["instances"].to("cpu")
            if instances.pred_masks.dtype != torch.bool:
                instances.pred_masks = instances.pred_masks > 0.5
            results.append(instances)
        return results

    # -- pre- and post-processing --

    def preprocess(self, image: ImageInput, format: str = "BGR") -> dict:
        """One image -> the model's input dict (resized, INPUT.FORMAT, float32 CHW) with the original size."""
        rgb = to_rgb(image, format)
        height, width = rgb.shape[:2]
        resized = self.aug.get_transform(rgb).apply_image(rgb)
        if self.input_format == "BGR":
            resized = resized[:, :, ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(resized).astype("float32").transpose(2, 0, 1))
        return {"image": tensor, "height": height, "width": width}

    def _filter(self, instances: Instances) -> Instances:
        return instances[instances.scores >= self.score_threshold]

    def __call__(self, image: ImageInput, format: str = "BGR") -> Instances:
        """Predict one image (path, numpy (BGR by default, or `format="RGB"`), or PIL) -> filtered Instances."""
        return self._filter(self._forward([self.preprocess(image, format)])[0])

    def predict_batch(
        self, images: Iterable[ImageInput], batch_size: int = 8, format: str = "BGR"
    ) -> list[Instances]:
        """Predict many images, `batch_size` per forward pass; a list of filtered Instances in input order.

        Images of different sizes are padded to a common size in a batch, which changes the results slightly
        (the positional embedding is resized to the padded size, SPEC §6.6); batch_size=1 matches `__call__`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        images = list(images)
        results: list[Instances] = []
        for start in range(0, len(images), batch_size):
            batch = [self.preprocess(im, format) for im in images[start : start + batch_size]]
            results.extend(self._filter(inst) for inst in self._forward(batch))
        return results

    def to_coco_results(
        self,
        images: ImageInput | Sequence[ImageInput],
        image_ids: Sequence[Any] | None = None,
        batch_size: int = 1,
        format: str = "BGR",
    ) -> list[dict]:
        """COCO-format results (as for `COCO.loadRes`) for one image or a list of images.

        image_ids default to 0, 1, ... in input order. category_id maps the model's contiguous class through the
        metadata's `thing_dataset_id_to_contiguous_id` when present (COCO: 1..90 with gaps), else class + 1.
        Masks are RLE with `counts` as str; bbox is XYWH of the mask's tight box. Only instances that pass
        `score_threshold` are included (use score_threshold=0 for evaluation).
        """
        if isinstance(images, str | os.PathLike | np.ndarray | Image.Image):
            images = [images]
        images = list(images)
        image_ids = list(range(len(images))) if image_ids is None else list(image_ids)
        if len(image_ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(image_ids)} image_ids.")
        id_map = self.metadata.get("thing_dataset_id_to_contiguous_id")
        contiguous_to_dataset = {v: k for k, v in id_map.items()} if id_map else None
        results = []
        for instances, image_id in zip(self.predict_batch(images, batch_size, format), image_ids):
            results.extend(instances_to_coco_results(instances, image_id, contiguous_to_dataset))
        return results

    def explain(self, image: ImageInput, format: str = "BGR"):
        """Predict one image and return what the query proposal saw: a `fastinst.explain.Explanation`.

        It holds the proposal head's class-probability map (stride 16 of the padded input, and mapped back to the
        image), the Q selected query locations, the instances (as `__call__` returns them) and the query each
        came from. PyTorch models only (ValueError for ONNX). Draw it with `fastinst.explain.draw_explanation`.
        """
        from fastinst.explain import explain_image

        return explain_image(self, image, format)

    def class_name(self, label: int) -> str:
        """The name of a contiguous class id."""
        classes = self.metadata.thing_classes
        return classes[label] if 0 <= label < len(classes) else f"class {label}"
