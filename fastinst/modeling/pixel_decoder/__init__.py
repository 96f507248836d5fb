"""Pixel decoders: multi-scale features for the FastInst decoder."""

from fastinst.modeling.pixel_decoder.ppm_fpn import (
    BaseFPN,
    PyramidPoolingModule,
    PyramidPoolingModuleFPN,
    build_pixel_decoder,
)

__all__ = ["BaseFPN", "PyramidPoolingModule", "PyramidPoolingModuleFPN", "build_pixel_decoder"]
