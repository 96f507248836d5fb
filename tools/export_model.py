#!/usr/bin/env python
"""Export a FastInst model to ONNX (default), TorchScript or a torch.export program (.pt2).

Usage::

    python tools/export_model.py \\
        --config-file configs/coco/instance-segmentation/fastinst_R50_ppm-fpn_x1_576.yaml \\
        --output fastinst_R50_x1_576.onnx --input-size 576 768 \\
        MODEL.WEIGHTS fastinst_R50_ppm-fpn_x1_576.pth

    # any input size (sides multiples of 32): --dynamic; other formats: --format torchscript | pt2

The graph takes one (1, 3, H, W) float32 RGB image in 0-255 (normalised and padded inside) and returns
``pred_logits`` (1, Q, K+1) and ``pred_masks`` (1, Q, H/8, W/8). Post-processing to instances is
``fastinst.export.postprocess.instance_postprocess`` (numpy); ``fastinst.export.OnnxFastInst`` runs an
exported file in onnxruntime and returns detectron2 ``Instances``. Logic: :mod:`fastinst.export.cli`.
"""

import warnings

# fvcore (imported through detectron2 by the fastinst package) calls torch.jit.script at import time,
# which recent torch reports as deprecated; keep the tool's output to its own messages.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)

from fastinst.export.cli import configure_logging, main  # noqa: E402

if __name__ == "__main__":
    configure_logging()
    raise SystemExit(main())
