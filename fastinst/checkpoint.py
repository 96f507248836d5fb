"""Loading FastInst checkpoints with errors that say what does not fit.

detectron2's `DetectionCheckpointer` only logs keys that do not fit. `load_checkpoint(..., strict=True)` (used for
evaluation and inference, where every weight must come from the file) raises `CheckpointMismatchError` naming the
file and the offending keys instead, so a wrong config (e.g. NUM_CLASSES or DEC_LAYERS) is caught at once.
A file that cannot be read at all (truncated, not a checkpoint) raises `CheckpointReadError` naming it, in every
entry point (training, evaluation, predictor, demo, export).

Training also stores what a model needs to be used elsewhere under `METADATA_KEY` in each checkpoint (the
`ModelRecord` checkpointable): class names, the dataset's category ids, INPUT.FORMAT and the training datasets.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

# Key of the model record in checkpoints written by train_net.py (see `ModelRecord`).
METADATA_KEY = "fastinst_metadata"

# The official model registers its criterion twice (SPEC §10 F10): a checkpoint may hold either key or both.
EMPTY_WEIGHT_KEYS = ("criterion.empty_weight", "sem_seg_head.predictor.criterion.empty_weight")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model built from the config."""


class CheckpointReadError(ValueError):
    """A weights file that exists but cannot be read (truncated, empty, or not a PyTorch/detectron2 checkpoint)."""


def read_error(path: str, error: BaseException) -> CheckpointReadError:
    """The one-line `CheckpointReadError` for a file that `torch.load` / pickle could not read."""
    reason = type(error).__name__
    text = str(error).strip()
    if "WeightsUnpickler error:" in text:
        # torch.load(weights_only=True): the first lines advise weights_only=False, the reason comes after
        detail = [
            x.strip() for x in text.split("WeightsUnpickler error:", 1)[1].splitlines() if x.strip()
        ]
        reason += (
            f": torch.load(weights_only=True) refused it: {detail[0] if detail else 'no detail'}"
        )
    elif text:
        reason += ": " + text.splitlines()[0]
    size, head = 0, b""
    if os.path.isfile(path):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(2)
    # torch.save writes a zip archive ("PK"); older files and .pkl are pickles (protocol byte 0x80)
    if size == 0 or head == b"PK" or head[:1] == b"\x80":
        hint = "It is probably incomplete (an interrupted download or copy): download or copy it again."
    else:
        hint = "It does not start like a checkpoint (neither a zip archive nor a pickle)."
    return CheckpointReadError(
        f"{path}: cannot be read as a PyTorch checkpoint ({size} bytes; {reason}). {hint}"
    )


def read_checkpoint(path: str) -> dict:
    """Read a local checkpoint file (.pth / .pkl, as detectron2 does) without a model -> its dict.

    Raises FileNotFoundError if `path` does not exist, `CheckpointReadError` (naming it) if it cannot be read.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    checkpointer = DetectionCheckpointer(nn.Module())
    checkpointer._parsed_url_during_load = urlparse(path)  # as `load` sets it for `_load_file`
    try:
        checkpoint = checkpointer._load_file(path)  # detectron2's reading of .pth / .pkl / .pyth
    except Exception as e:  # truncated zip, bad pickle, empty file ...: all "cannot be read"
        raise read_error(path, e) from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointReadError(
            f"{path}: not a detectron2/FastInst checkpoint (it has no 'model' entry)."
        )
    return checkpoint


class ModelRecord:
    """What a trained model needs to be used in another process, saved in its checkpoints under METADATA_KEY.

    A fvcore checkpointable: `state_dict()` is the record (thing_classes, thing_dataset_ids, input_format,
    datasets); `load_state_dict` keeps the record read from a checkpoint in `loaded` (the training run's own
    record is not replaced by it).
    """

    def __init__(self, record: dict) -> None:
        self.record = dict(record)
        self.loaded: dict | None = None

    def state_dict(self) -> dict:
        return dict(self.record)

    def load_state_dict(self, state: dict) -> None:
        self.loaded = dict(state)


def fill_duplicate_empty_weight(state_dict: dict, prefix: str = "") -> None:
    """Copy the criterion's `empty_weight` to its second path when a checkpoint holds only one of them."""
    a, b = (prefix + k for k in EMPTY_WEIGHT_KEYS)
    if a in state_dict and b not in state_dict:
        state_dict[b] = state_dict[a]
    elif b in state_dict and a not in state_dict:
        state_dict[a] = state_dict[b]


def _describe(keys, limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(str(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_checkpoint(model: nn.Module, path: str, strict: bool = True) -> dict:
    """Load `path` (local file or URL) into `model` with detectron2's checkpointer.

    With `strict`, raise `CheckpointMismatchError` if any model key is missing from the file, the file has keys
    the model lacks, or a shape differs. Returns the checkpoint's extra entries (e.g. "iteration", and the
    training run's record under METADATA_KEY). Raises `CheckpointReadError` naming a file that cannot be read.
    """
    if not path:
        raise FileNotFoundError("No weights given: set MODEL.WEIGHTS to a checkpoint file or URL.")
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    checkpointer = _RecordingCheckpointer(model)
    checkpointer.quiet = strict  # the error lists the keys, instead of detectron2's warnings
    try:
        extra = checkpointer.load(path)
    except (CheckpointMismatchError, FileNotFoundError):
        raise
    except Exception as e:
        if "://" not in path:
            raise read_error(path, e) from None
        raise FileNotFoundError(
            f"Could not fetch the checkpoint {path} ({type(e).__name__}: {e}). Without network access, "
            "download it elsewhere and pass the local file path as MODEL.WEIGHTS."
        ) from e
    incompatible = checkpointer.incompatible
    if strict and incompatible is not None:
        problems = []
        reshaped = {k for k, _, _ in incompatible.incorrect_shapes}
        missing = [k for k in incompatible.missing_keys if k not in reshaped]
        if missing:
            problems.append(f"missing from the file: {_describe(missing)}")
        if incompatible.unexpected_keys:
            problems.append(f"not in the model: {_describe(incompatible.unexpected_keys)}")
        if incompatible.incorrect_shapes:
            shapes = [
                f"{k} (file {tuple(a)}, model {tuple(b)})"
                for k, a, b in incompatible.incorrect_shapes
            ]
            problems.append(f"shape differs: {_describe(shapes)}")
        if problems:
            raise CheckpointMismatchError(
                f"{path} does not fit the model built from the config: "
                + "; ".join(problems)
                + ". Check that the config matches the checkpoint (NUM_CLASSES, DEC_LAYERS, backbone)."
            )
    return extra


class _RecordingCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that keeps the incompatible-keys report of the last load."""

    incompatible = None
    path = ""
    quiet = False

    def load(self, path: str, *args, **kwargs):
        self.path = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint: dict):
        if "model" not in checkpoint:
            raise CheckpointMismatchError(
                f"{self.path}: not a detectron2/FastInst checkpoint (it has no 'model' entry)."
            )
        drop_warnings = _DropWarnings()
        if self.quiet:  # fvcore warns about each skipped shape itself
            self.logger.addFilter(drop_warnings)
        try:
            self.incompatible = super()._load_model(checkpoint)
        finally:
            self.logger.removeFilter(drop_warnings)
        return self.incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        if not self.quiet:
            super()._log_incompatible_keys(incompatible)


class _DropWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def model_record(cfg) -> dict:
    """The `ModelRecord` of a training run: class names, dataset category ids, input format, datasets, K."""
    return {
        "thing_classes": list(cfg.DATASETS.THING_CLASSES),
        "thing_dataset_ids": [int(i) for i in cfg.DATASETS.THING_DATASET_IDS],
        "input_format": cfg.INPUT.FORMAT,
        "num_classes": int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        "datasets": list(cfg.DATASETS.TRAIN),
    }


def guard_optimizer_state(optimizer, model: nn.Module) -> None:
    """Make `optimizer.load_state_dict` refuse saved state whose shapes differ from the parameters'.

    torch checks only the number of parameters per group; AdamW's fused step would then read and write the
    saved moments (e.g. `exp_avg` of a 7-class head) as if they had the shape of the parameter (a 4-class head).
    The check runs before anything is applied and raises `CheckpointMismatchError` naming the parameter.
    """
    names = {id(p): n for n, p in model.named_parameters()}

    def check(opt, state_dict: dict) -> None:
        params = [p for group in opt.param_groups for p in group["params"]]
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        if len(saved_ids) != len(params):
            raise CheckpointMismatchError(
                f"The saved optimizer state holds {len(saved_ids)} parameters, the model has {len(params)}."
            )
        for saved_id, param in zip(saved_ids, params):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if hasattr(value, "shape") and value.dim() > 0 and value.shape != param.shape:
                    name = names.get(id(param), f"parameter {saved_id}")
                    raise CheckpointMismatchError(
                        f"The saved optimizer state '{key}' of {name} has shape {tuple(value.shape)}, "
                        f"the parameter has {tuple(param.shape)}: it belongs to another model."
                    )

    optimizer.register_load_state_dict_pre_hook(check)
