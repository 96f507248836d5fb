"""SSD-style photometric distortion (random brightness, contrast, saturation and hue).

The augmentation draws its parameters in `get_transform`, so the returned transform is deterministic and can be
replayed; it changes pixel values only (coordinates and segmentation masks pass through unchanged).
"""

from __future__ import annotations

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import Transform

__all__ = ["ColorAugSSD", "ColorAugSSDTransform"]


class ColorAugSSDTransform(Transform):
    """Apply fixed brightness / contrast / saturation / hue changes to a uint8 HWC image.

    Each step is skipped when its parameter is the identity (delta 0, factor 1). The order is brightness, then
    contrast (if `contrast_first`), saturation and hue in HSV, then contrast (if not `contrast_first`).
    """

    def __init__(
        self,
        *,
        img_format: str,
        brightness_delta: float = 0.0,
        contrast_factor: float = 1.0,
        saturation_factor: float = 1.0,
        hue_delta: float = 0.0,
        contrast_first: bool = True,
    ):
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(
                f"ColorAugSSD supports INPUT.FORMAT 'RGB' or 'BGR', got {img_format!r}"
            )
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32)
        if self.brightness_delta != 0:
            x = x + self.brightness_delta
        if self.contrast_first and self.contrast_factor != 1:
            x = x * self.contrast_factor
        if self.saturation_factor != 1 or self.hue_delta != 0:
            x = self._hsv(x)
        if not self.contrast_first and self.contrast_factor != 1:
            x = x * self.contrast_factor
        return np.clip(x, 0, 255).astype(np.uint8)

    def _hsv(self, x: np.ndarray) -> np.ndarray:
        to_hsv, from_hsv = (
            (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)
            if self.img_format == "RGB"
            else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
        )
        hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), to_hsv).astype(np.float32)
        hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation_factor, 0, 255)
        hsv[..., 0] = (hsv[..., 0] + self.hue_delta) % 180  # OpenCV's uint8 hue range is [0, 180)
        return cv2.cvtColor(hsv.astype(np.uint8), from_hsv).astype(np.float32)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return T.NoOpTransform()


class ColorAugSSD(T.Augmentation):
    """Random SSD photometric distortion; each of the four steps happens with probability 1/2."""

    def __init__(
        self,
        img_format: str,
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> ColorAugSSDTransform:
        def maybe(draw, identity):
            return draw() if np.random.rand() < 0.5 else identity

        return ColorAugSSDTransform(
            img_format=self.img_format,
            brightness_delta=maybe(
                lambda: np.random.uniform(-self.brightness_delta, self.brightness_delta), 0.0
            ),
            contrast_factor=maybe(lambda: np.random.uniform(*self.contrast_range), 1.0),
            saturation_factor=maybe(lambda: np.random.uniform(*self.saturation_range), 1.0),
            hue_delta=maybe(lambda: np.random.uniform(-self.hue_delta, self.hue_delta), 0.0),
            contrast_first=bool(np.random.rand() < 0.5),
        )
