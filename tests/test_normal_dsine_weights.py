"""DSINE with the released weights (marked `weights`: skipped unless `dsine.pt` is in the
local Hugging Face cache: `huggingface-cli download camenduru/DSINE dsine.pt`). On a real
photo, surfaces facing the camera come out lavender-blue, as in Graph200K's files."""

from __future__ import annotations

import cv2
import numpy as np

from annotators.base import Sample
from graph200k.shards import decode_image, encode_image
import pytest

from devices import DEVICES, stage_options
from hub_weights import needs_weights
from pipelines.stage_ops import run_inline

DSINE_REPO = "camenduru/DSINE"


@needs_weights(DSINE_REPO, "dsine.pt")
@pytest.mark.parametrize("device", DEVICES)  # CPU float32; CUDA float16 (refinement in float32)
def test_dsine_colours_the_astronauts_face_and_backdrop_lavender(device):
    from skimage import data

    from annotators.normal import DSINE

    img = cv2.resize(data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
    sample = Sample("astronaut", {"target.jpg": encode_image(img, "jpg", 95)})
    (out,) = run_inline(DSINE({"model": DSINE_REPO, **stage_options(device)}), [sample], batch_size=1)
    assert out.ok, out.status
    rgb = decode_image(out.members["normal.png"], "RGB").astype(float)
    assert rgb.shape == (512, 512, 3)
    # her face (nose, cheeks) and the grey backdrop above her right shoulder face the camera
    for region in (rgb[95:140, 200:250], rgb[10:60, 300:370]):
        r, g, b = np.median(region.reshape(-1, 3), axis=0)
        assert b > 200 and abs(r - 127) < 50 and abs(g - 127) < 50, (r, g, b)
    # the map is not one colour: her shoulders and the helmet turn away
    assert rgb.reshape(-1, 3).std(axis=0)[:2].min() > 10
