#!/usr/bin/env python
"""Convert timm ResNet-D weights into a detectron2 checkpoint for ``build_resnet_vd_backbone``.

Usage::

    python tools/convert-timm-to-d2.py resnet50d_ra2-464e36ba.pth checkpoints/resnet50d_ra2-464e36ba.pkl

The input is a plain timm state dict (or one wrapped in ``{"state_dict": ...}`` / ``{"model": ...}``).
Every key keeps its timm name with a ``backbone.`` prefix; ``fc.*`` and ``num_batches_tracked`` are
dropped. The output is ``{"model": {name: numpy array}, "__author__": "timm", "matching_heuristics":
True}``. Loading it leaves only the ``conv2_offset`` weights of the deformable blocks missing (timm has
none); they stay zero, so each DCN starts out as a plain 3x3 conv. Logic:
:mod:`fastinst.modeling.backbone.convert`.
"""

import warnings

# fvcore (imported through detectron2 by the fastinst package) calls torch.jit.script at import time,
# which recent torch reports as deprecated; keep the tool's output to its own messages.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)

from fastinst.modeling.backbone.convert import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(source="timm"))
