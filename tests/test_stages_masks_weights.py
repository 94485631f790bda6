"""Real-weights smoke tests of the mask stages (`make test-weights`; skipped unless cached).

Fetch once: `huggingface-cli download facebook/sam2.1-hiera-large sam2.1_hiera_large.pt`,
`huggingface-cli download Qwen/Qwen2-VL-7B-Instruct` (GPU: ~17 GB in bf16), and for RMBG-2.0
a vetted local copy: `huggingface-cli download briaai/RMBG-2.0 --local-dir models/RMBG-2.0`,
read its `birefnet.py`, then `RMBG_DIR=models/RMBG-2.0`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from annotate_helpers import stage_samples
from graph200k.shards import decode_image
from devices import DEVICES, stage_options
from hub_weights import needs_weights
from pipelines.stage_ops import run_inline

pytest.importorskip("sam2", reason="the sam2 extra (docs/annotators-masks.md)")
SAM2 = "facebook/sam2.1-hiera-large"
QWEN = "Qwen/Qwen2-VL-7B-Instruct"
RMBG_DIR = os.environ.get("RMBG_DIR", "models/RMBG-2.0")


@needs_weights(SAM2, "sam2.1_hiera_large.pt")
@pytest.mark.parametrize("device", DEVICES)
def test_real_sam2_finds_several_masks_on_photos(device):
    from annotators.sam2_mask import SAM2AutoMask

    out = run_inline(SAM2AutoMask({"model": SAM2, **stage_options(device)}), stage_samples(2, 512), batch_size=2)
    assert all(o.ok and o.meta["masks"] >= 3 for o in out), [o.status for o in out]


@needs_weights(RMBG_DIR, "model.safetensors")
@pytest.mark.parametrize("device", DEVICES)
def test_real_rmbg_matte_separates_the_subject(device):
    from annotators.rmbg import RMBG

    stage = RMBG({"model": RMBG_DIR, "trust_remote_code": True, **stage_options(device)})
    out = run_inline(stage, stage_samples(2, 512), batch_size=2)
    for o in out:
        matte = decode_image(o.members["rmbg.png"], "L")
        assert o.ok and 0.02 < (matte >= 128).mean() < 0.98  # neither empty nor everything


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="Qwen2-VL-7B needs a GPU")
@needs_weights(SAM2, "sam2.1_hiera_large.pt")
@needs_weights(QWEN, "config.json")
def test_real_grounding_boxes_the_astronaut():
    from annotators.grounded_mask import GroundedMask

    samples = stage_samples(1, 512)  # the astronaut
    out = run_inline(GroundedMask({"grounding_model": QWEN, "model": SAM2, **stage_options("cuda")}), samples)[0]
    assert out.ok, out.status
    subject = out.meta["objects"][out.meta["subject"]]
    assert out.meta["subject_match"] != "largest" and "astronaut" in subject["name"].lower()
    assert np.asarray(decode_image(out.members["mask.png"])).any()
