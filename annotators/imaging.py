"""CPU image steps the dense stages share: the detect-size resize, the way back to the
sample's size, and the PNG forms of their maps."""

from __future__ import annotations

import io

import cv2
import numpy as np

MAX_ASPECT = 4.0  # beyond this a short-side resize makes a huge or degenerate model input
MIN_SIDE = 16


def check_model_size(rgb: np.ndarray, stage: str) -> None:
    """An image a dense model can take: not tiny, not a sliver."""
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE or max(h, w) / min(h, w) > MAX_ASPECT:
        raise ValueError(f"stage {stage!r} cannot take a {w}x{h} image (needs both sides >= "
                         f"{MIN_SIDE} px and an aspect ratio <= {MAX_ASPECT:g}); crop or drop it")


def detect_image(rgb: np.ndarray, resolution: int, stage: str) -> np.ndarray:
    """The image at ControlNet's detect resolution: short side -> `resolution`, both sides
    rounded to a multiple of 64 (controlnet_aux's own `resize_image`, so our batched
    stages see the pixels its detectors see)."""
    from annotators.controlnet_nets import cn_util

    check_model_size(rgb, stage)
    util = cn_util()
    return util.resize_image(util.HWC3(np.ascontiguousarray(rgb)), resolution)


def back_to(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """A map at the model's size -> the sample's (h, w). Bilinear, as the detectors resize
    their maps to `image_resolution`; nearest for class ids."""
    h, w = size
    if array.shape[:2] == (h, w):
        return array
    mode = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(array, (w, h), interpolation=mode)


def indexed_png(ids: np.ndarray, palette: np.ndarray) -> bytes:
    """A palette PNG: the pixels are the class ids, the PLTE chunk their colours. Any
    reader that decodes to RGB (OpenCV, PIL .convert("RGB"), the training reader) sees
    the colours; `PIL.Image.open(...)` (mode "P") gives back the ids exactly, also where
    two classes share a colour. PIL, not OpenCV: OpenCV writes no palette PNGs."""
    from PIL import Image

    if ids.dtype != np.uint8 or ids.ndim != 2:
        raise ValueError(f"class ids must be a uint8 H x W array, got {ids.dtype} {ids.shape}")
    if int(ids.max(initial=0)) >= len(palette):
        raise ValueError(f"class id {int(ids.max())} has no colour in a {len(palette)}-colour "
                         "palette")
    img = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids).tobytes())
    img.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def read_indexed_png(data: bytes) -> np.ndarray:
    """The class ids of an `indexed_png`."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.mode != "P":
        raise ValueError(f"not a palette PNG (mode {img.mode})")
    return np.asarray(img)
