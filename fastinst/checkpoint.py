"""Loading FastInst checkpoints with errors that say what does not fit.

detectron2's `DetectionCheckpointer` only logs keys that do not fit. `load_checkpoint(..., strict=True)` (used for
evaluation and inference, where every weight must come from the file) raises `CheckpointMismatchError` naming the
file and the offending keys instead, so a wrong config (e.g. NUM_CLASSES or DEC_LAYERS) is caught at once.
"""

import os

from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

# The official model registers its criterion twice (SPEC §10 F10): a checkpoint may hold either key or both.
EMPTY_WEIGHT_KEYS = ("criterion.empty_weight", "sem_seg_head.predictor.criterion.empty_weight")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model built from the config."""


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
    the model lacks, or a shape differs. Returns the checkpoint's extra entries (e.g. "iteration").
    """
    if not path:
        raise FileNotFoundError("No weights given: set MODEL.WEIGHTS to a checkpoint file or URL.")
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    checkpointer = _RecordingCheckpointer(model)
    try:
        extra = checkpointer.load(path)
    except (CheckpointMismatchError, FileNotFoundError):
        raise
    except Exception as e:
        if "://" not in path:
            raise
        raise FileNotFoundError(
            f"Could not fetch the checkpoint {path} ({type(e).__name__}: {e}). Without network access, "
            "download it elsewhere and pass the local file path as MODEL.WEIGHTS."
        ) from e
    incompatible = checkpointer.incompatible
    if strict and incompatible is not None:
        problems = []
        if incompatible.missing_keys:
            problems.append(f"missing from the file: {_describe(incompatible.missing_keys)}")
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

    def _load_model(self, checkpoint: dict):
        if "model" not in checkpoint:
            raise CheckpointMismatchError(
                "The file is not a detectron2/FastInst checkpoint (it has no 'model' entry)."
            )
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible
