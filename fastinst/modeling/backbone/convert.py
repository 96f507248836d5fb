"""Convert ImageNet ResNet weights (timm, torchvision) into detectron2 pickles.

Used by ``tools/convert-timm-to-d2.py`` and ``tools/convert-torchvision-to-d2.py``. Both write
``{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": True}``, the format that
detectron2's ``DetectionCheckpointer`` reads from ``.pkl`` files (name matching by suffix).

- timm ``resnet50d``/``resnet101d`` -> :class:`~fastinst.modeling.backbone.resnet_vd.ResNetVD`: the key
  names are already ours, so each key just gets the ``backbone.`` prefix (SPEC §9).
- torchvision ``resnet50``/``resnet101`` -> detectron2 ``build_resnet_backbone`` names (SPEC §10 F3):
  ``conv1`` -> ``stem.conv1``, ``bn1`` -> ``stem.conv1.norm``, ``layerN`` -> ``res(N+1)``,
  ``bnK`` -> ``convK.norm``, ``downsample.0`` -> ``shortcut``, ``downsample.1`` -> ``shortcut.norm``. No
  prefix, like detectron2's own ``R-50.pkl``: the checkpointer's suffix matching adds ``backbone.``.

Both drop ``fc.*`` (the classifier) and ``num_batches_tracked`` (detectron2's FrozenBN has no such key).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "ConversionError",
    "convert_file",
    "convert_timm_resnet",
    "convert_torchvision_resnet",
    "load_state_dict",
    "main",
]

_SOURCES = ("timm", "torchvision")
_TORCHVISION_KEY = re.compile(
    r"^(?:(?:conv1|bn1)|layer[1-4]\.\d+\.(?:conv[1-3]|bn[1-3]|downsample\.[01]))\."
    r"(?:weight|bias|running_mean|running_var)$"
)


class ConversionError(Exception):
    """A checkpoint could not be read or converted; the message names the file or key."""


def _is_dropped(key: str) -> bool:
    return key.startswith("fc.") or key.endswith("num_batches_tracked")


def _to_numpy(key: str, value: object) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise ConversionError(f"value of key {key!r} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    if value.dtype in (torch.float16, torch.bfloat16):
        value = value.float()  # numpy has no bfloat16
    return value.numpy()


def convert_timm_resnet(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """timm ResNet-D state dict -> ``{"backbone." + key: array}`` for the vd backbone.

    Raises :class:`ConversionError` when the deep-stem key ``conv1.0.weight`` is missing (not a
    ResNet-D checkpoint; a torchvision-style ResNet needs ``convert-torchvision-to-d2.py``).
    """
    if "conv1.0.weight" not in state_dict:
        raise ConversionError(
            "key 'conv1.0.weight' is missing, so this is not a timm ResNet-D (deep stem) state dict; "
            "for torchvision-style ResNets use tools/convert-torchvision-to-d2.py"
        )
    return {
        "backbone." + key: _to_numpy(key, value)
        for key, value in state_dict.items()
        if not _is_dropped(key)
    }


def _torchvision_to_d2_name(key: str) -> str:
    if not key.startswith("layer"):
        key = "stem." + key  # conv1 -> stem.conv1, bn1 -> stem.bn1 (renamed below)
    key = re.sub(r"layer([1-4])", lambda m: f"res{int(m.group(1)) + 1}", key)
    key = re.sub(r"bn([1-3])", r"conv\1.norm", key)
    key = key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    return key


def convert_torchvision_resnet(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """torchvision ResNet state dict -> detectron2 ResNet names (no ``backbone.`` prefix).

    Example: ``layer1.0.bn2.weight`` -> ``res2.0.conv2.norm.weight``. Raises :class:`ConversionError`
    on a key that torchvision's ResNet does not have (e.g. a timm ResNet-D's ``conv1.0.weight``).
    """
    converted: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if _is_dropped(key):
            continue
        if not _TORCHVISION_KEY.match(key):
            raise ConversionError(
                f"key {key!r} is not a torchvision ResNet key; for timm ResNet-D weights use "
                "tools/convert-timm-to-d2.py"
            )
        converted[_torchvision_to_d2_name(key)] = _to_numpy(key, value)
    return converted


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` state dict, unwrapping ``{"state_dict": ...}`` / ``{"model": ...}``.

    A ``module.`` prefix (DataParallel) is stripped. Raises :class:`ConversionError` naming ``path``.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to unpickle means "not a checkpoint" (or a truncated one)
        from fastinst.checkpoint import read_error

        raise ConversionError(str(read_error(path, e))) from None
    for wrapper_key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper_key), Mapping):
            obj = obj[wrapper_key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(
            f"{path}: not a state dict (expected a non-empty dict of tensors, got "
            f"{type(obj).__name__})"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(
            f"{path}: not a state dict ({len(bad)} entries are not name -> tensor, e.g. {bad[0]!r})"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def convert_file(src: str, dst: str, source: str) -> int:
    """Convert ``src`` (.pth) into a detectron2 pickle at ``dst``; return the number of keys written."""
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {_SOURCES}, got {source!r}")
    if not dst.endswith(".pkl"):
        raise ConversionError(
            f"{dst}: the output name must end in .pkl (detectron2 reads pickles by that suffix)"
        )
    state_dict = load_state_dict(src)
    convert = convert_timm_resnet if source == "timm" else convert_torchvision_resnet
    try:
        model = convert(state_dict)
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}") from None
    payload = {"model": model, "__author__": source, "matching_heuristics": True}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        with open(dst, "wb") as f:
            pickle.dump(payload, f)
    except OSError as e:
        raise ConversionError(f"{dst}: cannot write output ({e.strerror or e})") from None
    return len(model)


def main(argv: Sequence[str] | None = None, *, source: str) -> int:
    """Command-line entry point of the ``tools/convert-*-to-d2.py`` scripts; returns the exit code."""
    parser = argparse.ArgumentParser(
        description=f"Convert {source} ResNet weights (.pth) into a detectron2 .pkl checkpoint."
    )
    parser.add_argument("input", help=f"{source} state dict (.pth)")
    parser.add_argument("output", help="detectron2 checkpoint to write (.pkl)")
    args = parser.parse_args(argv)
    try:
        num_keys = convert_file(args.input, args.output, source)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2  # bad input (the project's convention for command-line tools)
    print(f"wrote {num_keys} tensors to {args.output}")
    return 0
