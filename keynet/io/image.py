"""Image input: every accepted form becomes a float32 grayscale array in [0, 1].

Decisions, stated once:
- Colour is converted to luminance (ITU-R BT.601 weights, as OpenCV and kornia); alpha is dropped.
- 16-bit images are scaled by 1/65535, 8-bit by 1/255, so both land in [0, 1].
- EXIF orientation is applied (as OpenCV's ``imread`` does), so keypoints are in the frame of the
  image as viewers and most pipelines (hloc, COLMAP) show it.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch


class ImageError(ValueError):
    """An input that is not a usable image; the message says which and why."""


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W) float32 grayscale array in [0, 1]."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if not path.is_file():
        raise ImageError(f"not a file: {path}")
    return decode_image(np.fromfile(path, dtype=np.uint8), str(path))


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """An encoded image file's bytes (e.g. read by a distributed engine) as (H, W) float32 in [0, 1],
    exactly as ``load_image`` reads the file; ``name`` is used in error messages."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if data.size == 0:
        raise ImageError(f"empty file (0 bytes): {name}")
    # ANYDEPTH keeps 16-bit samples; without IMREAD_UNCHANGED OpenCV applies EXIF orientation.
    # OpenCV returns None for a truncated or undecodable file, and raises for a header that declares
    # more pixels than its limit (a decompression bomb) before allocating them; its own log lines
    # about such a file are silenced, since the ImageError below names the file and the reason.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    except cv2.error as e:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(e):
            raise ImageError(f"{name}: the image declares more pixels than OpenCV decodes "
                             "(OPENCV_IO_MAX_IMAGE_PIXELS, default 2^30); a corrupt file or a decompression bomb") from None
        raise ImageError(f"cannot decode {name}: {e.err or e}") from None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        raise ImageError(f"cannot decode {name}: not an image, or a truncated/corrupt file")
    return to_float_gray(image, name=name)


def to_float_gray(image: np.ndarray, name: str = "image") -> np.ndarray:
    """An (H, W) or (H, W, 3|4) array (uint8, uint16 or float in [0, 1]) as (H, W) float32 in [0, 1]."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = _luminance(image[..., :3])
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ImageError(f"{name}: expected shape (H, W) or (H, W, 3|4), got {image.shape}")
    if image.size == 0:
        raise ImageError(f"{name}: image has zero size {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if np.issubdtype(image.dtype, np.floating):
        out = image.astype(np.float32)
        if not np.isfinite(out).all():
            raise ImageError(f"{name}: contains NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(
                f"{name}: float values must lie in [0, 1], got [{lo:g}, {hi:g}] (divide 8-bit data by 255)"
            )
        return out
    raise ImageError(f"{name}: unsupported dtype {image.dtype} (use uint8, uint16 or float)")


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) to gray with BT.601 weights, computed in float to keep 16-bit precision."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float64)
    gray = rgb.astype(np.float64) @ weights
    return gray.astype(np.float32) if np.issubdtype(rgb.dtype, np.floating) else np.round(gray).astype(rgb.dtype)


def to_image_batch(image: str | Path | np.ndarray | torch.Tensor, min_side: int = 1) -> tuple[torch.Tensor, bool]:
    """Any accepted image input as a (B,1,H,W) float32 tensor in [0, 1], and whether it was a batch.

    Accepted: a path; an (H, W) or (H, W, 3|4) numpy array (uint8, uint16 or float in [0, 1]); a float
    tensor in [0, 1] of shape (H, W), (1, H, W) or (B, 1, H, W). Images smaller than ``min_side`` px
    per side, and anything else, raise ``ImageError``.
    """
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(to_float_gray(image))[None, None]
        batched = False
    elif isinstance(image, torch.Tensor):
        batched = image.ndim == 4
        if image.ndim == 2:
            image = image[None, None]
        elif image.ndim == 3 and image.shape[0] == 1:
            image = image[None]
        if image.ndim != 4 or image.shape[1] != 1:
            raise ImageError(f"tensor image must be (H,W), (1,H,W) or (B,1,H,W) grayscale, got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ImageError(f"tensor image must be float in [0, 1], got {image.dtype}")
        if image.numel() == 0:
            raise ImageError(f"tensor image has zero size {tuple(image.shape)}")
        lo, hi = (float(v) for v in torch.aminmax(image))  # one pass; NaN anywhere makes both NaN
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ImageError("tensor image contains NaN or infinite values")
        if lo < 0 or hi > 1:
            raise ImageError("tensor image values must lie in [0, 1] (divide 8-bit data by 255)")
        image = image.float()
    else:
        raise ImageError(f"unsupported image type {type(image).__name__}: use a path, numpy array or tensor")
    h, w = image.shape[-2:]
    if min(h, w) < min_side:
        raise ImageError(f"image is {w}x{h} px; the detector needs at least {min_side} px per side")
    return image, batched
