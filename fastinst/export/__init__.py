"""Export FastInst to ONNX / TorchScript and run the exported ONNX graph (SPEC §1, §6).

- `FastInstExportModel` (wrapper.py): the graph, image (1, 3, H, W) RGB 0-255 -> pred_logits, pred_masks.
- `export_onnx`, `export_torchscript`, `export_pt2` (exporter.py): write the files, with a "fastinst" metadata record.
- `instance_postprocess` (postprocess.py): the post-processing in numpy.
- `OnnxFastInst` (onnx_model.py): onnxruntime inference returning detectron2 `Instances` (needs onnxruntime).
- `onnx_to_openvino`, `OpenVinoFastInst` (openvino_model.py): OpenVINO IR (fp32, or INT8 with NNCF) and its
  inference, as `OnnxFastInst` (needs openvino, nncf for INT8).

Command line: tools/export_model.py.
"""

from fastinst.export.exporter import (
    export_metadata,
    export_onnx,
    export_program,
    export_pt2,
    export_torchscript,
    read_onnx_metadata,
)
from fastinst.export.onnx_model import OnnxFastInst
from fastinst.export.openvino_model import (
    OpenVinoFastInst,
    onnx_to_openvino,
    read_openvino_metadata,
)
from fastinst.export.postprocess import instance_postprocess
from fastinst.export.wrapper import FastInstExportModel

__all__ = [
    "FastInstExportModel",
    "OnnxFastInst",
    "OpenVinoFastInst",
    "export_metadata",
    "export_onnx",
    "export_program",
    "export_pt2",
    "export_torchscript",
    "instance_postprocess",
    "onnx_to_openvino",
    "read_onnx_metadata",
    "read_openvino_metadata",
]
