#!/usr/bin/env python
"""Convert torchvision ResNet weights into a detectron2 checkpoint for ``build_resnet_backbone``.

Usage::

    python tools/convert-torchvision-to-d2.py resnet50-0676ba61.pth checkpoints/R-50.pkl

Keys are renamed to detectron2's ResNet names (``conv1`` -> ``stem.conv1``, ``bn1`` ->
``stem.conv1.norm``, ``layerN`` -> ``res(N+1)``, ``bnK`` -> ``convK.norm``, ``downsample.0`` ->
``shortcut``, ``downsample.1`` -> ``shortcut.norm``); ``fc.*`` and ``num_batches_tracked`` are dropped.
The names carry **no** ``backbone.`` prefix, like detectron2's own ``ImageNetPretrained/.../R-50.pkl``:
``DetectionCheckpointer`` matches them by suffix (``matching_heuristics: True``) to
``backbone.stem.conv1.weight`` etc., with no missing or unexpected backbone keys. The output is
``{"model": {name: numpy array}, "__author__": "torchvision", "matching_heuristics": True}``. The
weights expect RGB input normalised with ImageNet mean/std and ``MODEL.RESNETS.STRIDE_IN_1X1 False``
(the shipped configs). Logic: :mod:`fastinst.modeling.backbone.convert`.
"""

import warnings

# fvcore (imported through detectron2 by the fastinst package) calls torch.jit.script at import time,
# which recent torch reports as deprecated; keep the tool's output to its own messages.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)

from fastinst.modeling.backbone.convert import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(source="torchvision"))
