"""The one image reader of the project: training mappers, the evaluation loader, the predictor and the demo.

    read_image(path, "RGB")        -> uint8 (H, W, 3), EXIF orientation applied
    read_image_header(path)        -> ImageHeader (size before/after EXIF orientation, mode, format); reads only
                                      the file header, no pixel data

Every mode Pillow opens is read the same way (what detectron2's `read_image` does for 8-bit images):

| Pillow mode | result |
|---|---|
| RGB, RGBX, YCbCr, HSV, LAB, CMYK, P, 1, L | `Image.convert("RGB")` (grayscale repeated in the 3 channels) |
| RGBA, RGBa, LA, La, PA, P with transparency | the colour values as stored; the alpha channel is ignored |
| I;16, I;16L, I;16B, I;16N, I (high bit depth) | grayscale scaled from 0..65535 to 0..255 (value / 257, rounded; I is clipped to 0..65535) |
| F (32-bit float) | refused: it has no standard 0..255 scale |

Every failure (missing or empty file, unknown format, truncated data, a mode that cannot be converted) raises
`UnreadableImageError` with one line naming the file and the reason.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "EXIF_ORIENTATION_TAG",
    "ImageHeader",
    "UnreadableImageError",
    "array_from_pil",
    "read_image",
    "read_image_header",
]

EXIF_ORIENTATION_TAG = 0x0112  # EXIF 2.32, tag 274 "Orientation", values 1..8
# How to turn the stored pixels upright for each EXIF orientation (the same table as PIL.ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class UnreadableImageError(ValueError):
    """An image file cannot be read; the message names the file and the reason (one line).

    Attributes: `path` (the file) and `reason` (why, e.g. "empty file (0 bytes)").
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"Cannot read image {path} ({reason}).")
        self.path, self.reason = path, reason

    def __reduce__(self):  # picklable, so that data loader workers can pass it on
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says.

    `width` x `height` is the size after EXIF orientation (what `read_image` returns by default);
    `stored_width` x `stored_height` the size of the pixel data as stored; `orientation` the EXIF value (1..8,
    1 = upright); `mode` and `format` are Pillow's names ("RGB", "PNG", ...).
    """

    width: int
    height: int
    stored_width: int
    stored_height: int
    orientation: int
    mode: str
    format: str | None

    @property
    def num_pixels(self) -> int:
        return self.width * self.height


def _orientation(image: Image.Image) -> int:
    try:
        # Image.getexif, not the PNG subclass's, which decodes the whole image to look for an eXIf chunk after
        # the pixel data (10 ms for a 500 px PNG); the header check and the reader both read it this way.
        value = Image.Image.getexif(image).get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block does not make the pixels unreadable
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _reason(path: str, error: BaseException) -> str:
    if isinstance(error, FileNotFoundError) or not os.path.exists(path):
        return "file not found"
    if os.path.isdir(path):
        return "a folder, not a file"
    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    if isinstance(error, Image.DecompressionBombError):
        return f"too many pixels for Pillow ({error})"
    message = " ".join(str(error).split())  # one line
    return f"truncated or corrupt image data ({type(error).__name__}: {message})"


def _check_mode(mode: str, path: str) -> None:
    if mode == "F":
        raise UnreadableImageError(
            path,
            "32-bit floating-point pixels (Pillow mode F) have no standard 0-255 scale; convert the image to "
            "8 or 16 bits per channel",
        )


def read_image_header(path: str | os.PathLike) -> ImageHeader:
    """Read only the header of an image file: size, EXIF orientation, mode and format (no decoding).

    Raises:
        UnreadableImageError: missing, empty or unidentifiable file, too many pixels for Pillow, or a mode that
            `read_image` cannot convert.
    """
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", Image.DecompressionBombWarning
            )  # callers check the pixel count
            with Image.open(path) as image:
                stored_w, stored_h = image.size
                orientation = _orientation(image)
                mode, fmt = image.mode, image.format
    except Exception as e:
        raise UnreadableImageError(path, _reason(path, e)) from e
    _check_mode(mode, path)
    w, h = (stored_h, stored_w) if orientation in (5, 6, 7, 8) else (stored_w, stored_h)
    return ImageHeader(w, h, stored_w, stored_h, orientation, mode, fmt)


def array_from_pil(image: Image.Image, format: str = "RGB", name: str = "image") -> np.ndarray:
    """A PIL image of any mode (see the module docstring) -> contiguous uint8 (H, W, 3) in `format` order.

    Args:
        format: "RGB" or "BGR" (INPUT.FORMAT).
        name: how error messages name the image (its path).
    """
    if format not in ("RGB", "BGR"):
        raise ValueError(f"format must be 'RGB' or 'BGR' (INPUT.FORMAT), got {format!r}.")
    _check_mode(image.mode, name)
    if image.mode in _HIGH_BIT_DEPTH:
        values = np.asarray(image).astype(np.float32)  # (H, W), 0..65535
        gray = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)  # (H, W, 3)
    else:
        if image.mode != "RGB":
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter(
                        "ignore"
                    )  # "Palette images with Transparency ..." (alpha ignored)
                    image = image.convert("RGB")
            except ValueError as e:
                raise UnreadableImageError(
                    name, f"Pillow cannot convert mode {image.mode} to RGB: {e}"
                ) from e
        rgb = np.asarray(image)
    if format == "BGR":
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def read_image(
    path: str | os.PathLike, format: str = "RGB", *, exif_transpose: bool = True
) -> np.ndarray:
    """Decode an image file to a contiguous uint8 (H, W, 3) array in `format` ("RGB" or "BGR") channel order.

    Args:
        exif_transpose: turn the pixels upright as the EXIF orientation says (as detectron2 and image viewers
            do). False reads the pixels as stored (for a json that describes the stored size).

    Raises:
        UnreadableImageError: the file is missing, empty, not an image, truncated or in an unsupported mode.
    """
    path = os.fspath(path)
    if format not in ("RGB", "BGR"):
        raise ValueError(f"format must be 'RGB' or 'BGR' (INPUT.FORMAT), got {format!r}.")
    try:
        with Image.open(path) as image:
            method = (
                _UPRIGHT.get(_orientation(image)) if exif_transpose else None
            )  # before load(), as the header
            image.load()
            upright = image.transpose(method) if method is not None else image
            return array_from_pil(upright, format, name=path)
    except UnreadableImageError:
        raise
    except Exception as e:
        raise UnreadableImageError(path, _reason(path, e)) from e
