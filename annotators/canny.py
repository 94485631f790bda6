"""Canny edges of `target`: the CPU stage, as Graph200K's `canny_100_200_512` files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from annotators.base import Annotator, ConfigError, Result, Sample
from graph200k.shards import encode_image

DETECT_MULTIPLE = 64  # ControlNet's detectors round both detect sides to a multiple of 64


@dataclass
class CannyOptions:
    low_threshold: int = 100  # ControlNet's defaults (Graph200K: `_canny_100_200_512`)
    high_threshold: int = 200
    # the short side Canny runs at; the edges are resized back to the image. Graph200K's 512:
    # at a 1024^2 panel's own size the F1 against its shipped canny files was 0.36-0.54,
    # at 512 0.76-0.88 (the rest is their JPEG). null: the image's own size.
    detect_resolution: int | None = 512
    threads: int | None = None  # OpenCV threads; default: Ray's grant (OMP_NUM_THREADS)


def detect_size(h: int, w: int, resolution: int) -> tuple[int, int]:
    """(h, w) with the short side scaled to `resolution`, each side rounded to a multiple
    of 64, as controlnet_aux's `resize_image` computes it (that module itself costs a
    torch import, ~6 s per worker, for five lines of arithmetic)."""
    k = resolution / min(h, w)
    return (int(np.round(h * k / DETECT_MULTIPLE)) * DETECT_MULTIPLE,
            int(np.round(w * k / DETECT_MULTIPLE)) * DETECT_MULTIPLE)


class Canny(Annotator):
    """`canny.png`: cv2.Canny 100/200 on the RGB target at the detect resolution, resized
    back to the sample's size (bilinear), stored as a 1-channel PNG.

    These are controlnet_aux's `CannyDetector(detect_resolution=512)` edges with the map
    returned at the image's size: the Lanczos (enlarging) / area (shrinking) resize to the
    detect size, Canny there, a bilinear resize back. At 512^2 (most Subjects200K panels)
    nothing is resized and the edges are binary. One channel where the detector repeats
    it three times: a third of the PNG work; readers convert to RGB when they load it.
    """

    name: ClassVar[str] = "canny"
    produces: ClassVar[tuple[str, ...]] = ("canny",)
    needs: ClassVar[tuple[str, ...]] = ("target",)
    requires: ClassVar[tuple[str, ...]] = ("cv2",)
    Options = CannyOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        import cv2

        # OpenCV runs Canny on its own thread pool (2 threads here by default) on top of
        # Ray's one task per granted CPU: oversubscribed cores. Follow Ray's grant, which it
        # passes as OMP_NUM_THREADS (1 for a 1-CPU task); `threads:` in the config overrides.
        threads = self.options.threads or os.environ.get("OMP_NUM_THREADS")
        if threads:
            cv2.setNumThreads(int(threads))
        self._cv2 = cv2
        o = self.options
        if not 0 <= o.low_threshold <= o.high_threshold:
            raise ConfigError(
                f"stage 'canny': need 0 <= low_threshold <= high_threshold, got "
                f"{o.low_threshold}/{o.high_threshold} (configs/annotate.yaml)"
            )
        if o.detect_resolution is not None and o.detect_resolution < DETECT_MULTIPLE:
            raise ConfigError(f"stage 'canny': detect_resolution must be >= {DETECT_MULTIPLE} "
                              f"or null (the image's own size), got {o.detect_resolution}")

    def edges(self, rgb: np.ndarray) -> np.ndarray:
        cv2, o = self._cv2, self.options
        h, w = rgb.shape[:2]
        if o.detect_resolution is None:
            return cv2.Canny(rgb, o.low_threshold, o.high_threshold)
        dh, dw = detect_size(h, w, o.detect_resolution)
        small = rgb
        if (dh, dw) != (h, w):
            grow = o.detect_resolution > min(h, w)
            small = cv2.resize(rgb, (dw, dh),
                               interpolation=cv2.INTER_LANCZOS4 if grow else cv2.INTER_AREA)
        edges = cv2.Canny(small, o.low_threshold, o.high_threshold)
        if edges.shape != (h, w):
            edges = cv2.resize(edges, (w, h), interpolation=cv2.INTER_LINEAR)
        return edges

    def annotate(self, sample: Sample) -> Result:
        return Result({"canny.png": encode_image(self.edges(sample.image("target")), "png")})
