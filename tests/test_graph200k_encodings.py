"""Graph200K's own encodings (issue 28, items 3 and 10): depth an 8-bit grey image with near
bright, as the reference repository's `*_depth-anything-v2_Large.jpg`; foreground and
background black outside the matte, as its data reader's `target * (mask > 0.5)`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graph200k.reader import foreground_background

EXAMPLES = Path("/work/ref/VisualCloze/examples/examples")


def floor_disparity(h: int = 64, w: int = 48) -> np.ndarray:
    """A ground plane seen from above it: inverse depth grows towards the bottom rows (the
    floor at the camera's feet is near), the horizon row is far."""
    rows = np.linspace(0.05, 1.0, h, dtype=np.float32)  # 1/z rises as the floor nears
    return np.repeat(rows[:, None], w, axis=1) * 7.5 + 0.3  # any scale and shift


def stored_depth(disparity: np.ndarray, **options):
    import torch

    from annotators.base import Sample
    from annotators.depth import Depth, quantise

    stage = Depth({"model": "unused-no-weights-loaded", **options})
    (output,) = quantise(torch.from_numpy(disparity)[None])
    sample = Sample("0000000", {}, {})
    return stage, stage.encode(sample, None, output)


def test_depth_is_stored_8_bit_grey_near_bright_far_dark():
    stage, result = stored_depth(floor_disparity())
    assert set(result.members) == {"depth.png"} == set(stage.output_members)
    img = Image.open(io.BytesIO(result.members["depth.png"]))
    assert img.mode == "L"  # one 8-bit channel, like the example JPEGs
    rgb = np.asarray(img.convert("RGB"), np.int32)  # what the reference loader does
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    grey = rgb[..., 0]
    assert grey[-4:].mean() > 240 and grey[:4].mean() < 15  # near floor bright, far dark
    assert (np.diff(grey.mean(axis=1)) >= 0).all()  # brighter row after row towards the camera
    assert result.meta["levels"] == 255 and result.meta["near"] == "bright"


def test_16_bit_depth_only_as_a_named_extra_member():
    stage, result = stored_depth(floor_disparity(), store_16bit=True)
    assert set(result.members) == {"depth.png", "depth_16bit.png"} == set(stage.output_members)
    wide = Image.open(io.BytesIO(result.members["depth_16bit.png"]))
    assert wide.mode in ("I;16", "I")
    levels = np.asarray(wide, np.int64)
    assert levels.max() == 65535 and levels[-1].mean() > levels[0].mean()
    eight = np.asarray(Image.open(io.BytesIO(result.members["depth.png"])), np.int64)
    assert np.abs(levels / 257 - eight).max() <= 1  # the same map, finer


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="the reference repository is not cloned here")
def test_graph200k_example_depth_files_are_8_bit_grey_like_ours():
    files = sorted(EXAMPLES.glob("*/*_depth-anything-v2_Large.jpg"))
    assert files
    for f in files[:3]:
        with Image.open(f) as img:
            rgb = np.asarray(img.convert("RGB"), np.int32)
        # grey (up to JPEG chroma noise), using the range: not the all-white of a 16-bit map
        assert np.abs(rgb[..., 0] - rgb[..., 2]).mean() < 3
        assert rgb.min() < 64 and rgb.max() > 192 and (rgb == 255).mean() < 0.5


def test_foreground_and_background_are_black_outside_the_matte_as_the_reference():
    rng = np.random.default_rng(0)
    target = rng.integers(1, 256, (32, 40, 3), dtype=np.uint8)  # no black pixel of its own
    matte = np.zeros((32, 40), np.uint8)
    matte[8:24, 10:30] = 255
    matte[8:24, 10] = 128  # exactly 0.5 + 1/510: inside, as `mask / 255 > 0.5`
    matte[8:24, 11] = 127  # below 0.5: outside
    mask = (matte.astype(np.float32) / 255.0 > 0.5).astype(np.int32)[..., None]
    np.testing.assert_array_equal(foreground_background(target, matte, "foreground"),
                                  (target * mask).astype(np.uint8))
    np.testing.assert_array_equal(foreground_background(target, matte, "background"),
                                  (target * (1 - mask)).astype(np.uint8))
