"""The fixed colour palette of the mask and box maps, and the painting of those maps.

Colour i is the same in every image and every run: object i of `mask.png` and `bbox.png`
share it, and the i-th largest SAM2 mask of every `sam2_mask.png` gets it. Hues step by the
golden angle so neighbours in the list differ strongly; no colour is black (the background)
or close to it.
"""

from __future__ import annotations

import colorsys

import numpy as np

_GOLDEN = 0.618033988749895
_SHADES = ((0.85, 1.0), (0.55, 0.95), (1.0, 0.75))  # (saturation, value), cycled


def palette(n: int = 256) -> np.ndarray:
    out = np.empty((n, 3), dtype=np.uint8)
    for i in range(n):
        s, v = _SHADES[i % len(_SHADES)]
        r, g, b = colorsys.hsv_to_rgb((i * _GOLDEN) % 1.0, s, v)
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
    return out


PALETTE = palette()


def colour(i: int) -> tuple[int, int, int]:
    r, g, b = PALETTE[i % len(PALETTE)]
    return int(r), int(g), int(b)


def paint_masks(masks, colours=None, size=None) -> np.ndarray:
    """An RGB map of boolean masks on black, painted in list order (the first ones under
    the later): pass them largest first so that no small mask is hidden by a big one."""
    masks = [np.asarray(m, dtype=bool) for m in masks]
    if size is None:
        if not masks:
            raise ValueError("paint_masks needs a size when there is no mask")
        size = masks[0].shape
    out = np.zeros((*size, 3), dtype=np.uint8)
    for i, m in enumerate(masks):
        if m.shape != tuple(size):
            raise ValueError(f"mask {i} is {m.shape}, the map is {tuple(size)}")
        out[m] = colours[i] if colours is not None else colour(i)
    return out


def draw_boxes(boxes, size, colours=None, thickness: int | None = None) -> np.ndarray:
    """An RGB map of box outlines (x1, y1, x2, y2 in pixels) on black, in list order."""
    import cv2

    h, w = size
    out = np.zeros((h, w, 3), dtype=np.uint8)
    t = thickness or max(2, round(min(h, w) / 170))  # 3 px at 512^2: visible after resizing
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        c = colours[i] if colours is not None else colour(i)
        p1 = (int(round(x1)), int(round(y1)))
        p2 = (min(w - 1, int(round(x2)) - 1), min(h - 1, int(round(y2)) - 1))
        cv2.rectangle(out, p1, p2, tuple(int(v) for v in c), t)
    return out
