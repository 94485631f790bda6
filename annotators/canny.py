"""Canny edges of `target`: the CPU stage, as ControlNet's annotator computes them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from annotators.base import Annotator, ConfigError, Result, Sample
from graph200k.shards import encode_image


@dataclass
class CannyOptions:
    low_threshold: int = 100  # ControlNet's defaults
    high_threshold: int = 200
    threads: int | None = None  # OpenCV threads; default: Ray's grant (OMP_NUM_THREADS)


class Canny(Annotator):
    """`canny.png`: cv2.Canny on the RGB target at its own size, stored as a 1-channel PNG.

    ControlNet's annotator (and controlnet_aux's CannyDetector) runs cv2.Canny on the RGB
    image with thresholds 100/200; it also resizes to 512 and stores 3 identical channels.
    We keep the sample's own size (Subjects200K panels are already 512²) and one channel:
    the same edges, a third of the PNG work; readers convert to RGB when they load it.
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
        self._canny = cv2.Canny
        o = self.options
        if not 0 <= o.low_threshold <= o.high_threshold:
            raise ConfigError(
                f"stage 'canny': need 0 <= low_threshold <= high_threshold, got "
                f"{o.low_threshold}/{o.high_threshold} (configs/annotate.yaml)"
            )

    def edges(self, rgb):
        return self._canny(rgb, self.options.low_threshold, self.options.high_threshold)

    def annotate(self, sample: Sample) -> Result:
        return Result({"canny.png": encode_image(self.edges(sample.image("target")), "png")})
