"""Smoke tests of the dense stages with the real weights (marked `weights`: skipped unless
the files are in the local Hugging Face cache; docs/annotators-dense.md says how to fetch
them). On real photos the outputs must look like what the prompts say they are. Each runs on
the CPU in float32 and, where a GPU is visible (`GRAPH200K_TEST_GPU=1`), on CUDA in float16:
what `device: auto` / `dtype: auto` pick on each (tests/devices.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from annotators.base import Sample
from annotators.imaging import read_indexed_png
from graph200k.shards import decode_image, encode_image
from devices import DEVICES, float32_copy, maps_agree, stage_options
from hub_weights import cached_file, needs_weights
from pipelines.stage_ops import run_inline

ANNOTATORS = "lllyasviel/Annotators"


def photo_sample(name: str) -> Sample:
    from skimage import data

    img = getattr(data, name)()
    img = img if img.ndim == 3 else np.stack([img] * 3, axis=-1)
    img = cv2.resize(img[:, :, :3], (512, 512), interpolation=cv2.INTER_AREA)
    return Sample(name, {"target.jpg": encode_image(img, "jpg", 95)})


def ok(stage, name: str):
    (out,) = run_inline(stage, [photo_sample(name)], batch_size=1)
    assert out.ok, out.status
    return out


def needs_hf_model(repo: str):
    missing = not (cached_file(repo, "model.safetensors") or cached_file(repo, "pytorch_model.bin"))
    return lambda fn: pytest.mark.weights(pytest.mark.skipif(
        missing, reason=f"needs {repo} in the local HF cache: huggingface-cli download {repo}")(fn))


@needs_weights(ANNOTATORS, "ControlNetHED.pth")
@pytest.mark.parametrize("device", DEVICES)
def test_hed_edges_follow_the_photos_contours(device):
    from annotators.hed import HED

    out = ok(HED({"model": ANNOTATORS, **stage_options(device)}), "astronaut")
    hed = decode_image(out.members["hed.png"], "L").astype(float)
    canny = cv2.Canny(decode_image(photo_sample("astronaut").members["target.jpg"]), 100, 200)
    assert hed[canny > 0].mean() > 2 * hed[canny == 0].mean()


@needs_weights(ANNOTATORS, "mlsd_large_512_fp32.pth")
@pytest.mark.parametrize("device", DEVICES)
def test_mlsd_finds_the_rockets_straight_lines(device):
    from annotators.mlsd import MLSD

    out = ok(MLSD({"model": ANNOTATORS, **stage_options(device)}), "rocket")
    assert out.meta["segments"] >= 5


@needs_weights(ANNOTATORS, "body_pose_model.pth")
@pytest.mark.parametrize("device", DEVICES)
def test_openpose_finds_the_astronaut(device):
    from annotators.openpose import KEYPOINTS, OpenPose

    out = ok(OpenPose({"model": ANNOTATORS, **stage_options(device)}), "astronaut")
    person = max(out.meta["people"], key=lambda p: p["parts"])
    assert person["parts"] >= 8
    nose = person["keypoints"][KEYPOINTS.index("nose")]
    assert nose is not None and nose[1] < 0.5  # her face is in the upper half


@needs_hf_model("depth-anything/Depth-Anything-V2-Large-hf")
@pytest.mark.parametrize("device", DEVICES)
def test_depth_near_parts_bright(device):
    from annotators.depth import Depth

    out = ok(Depth({"model": "depth-anything/Depth-Anything-V2-Large-hf", **stage_options(device)}), "astronaut")
    depth = cv2.imdecode(np.frombuffer(out.members["depth.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint8  # 8-bit grey, near bright, as Graph200K
    # the astronaut (centre-bottom) stands in front of the backdrop (top corners)
    assert depth[300:500, 150:350].mean() > depth[:80, :80].mean()
    assert depth[300:500, 150:350].mean() > depth[:80, -80:].mean()


@needs_weights(ANNOTATORS, "dpt_hybrid-midas-501f0c75.pt")
@pytest.mark.parametrize("device", DEVICES)
def test_midas_normal_matches_the_detector_with_real_weights(device):
    from annotators.controlnet_nets import quiet_import
    from annotators.normal import MidasNormal

    stage = MidasNormal({"model": ANNOTATORS, **stage_options(device)})
    out = ok(stage, "coffee")
    ours = decode_image(out.members["normal.png"], "RGB")
    # the detector feeds `.float()` pixels: a float32 copy of the net, on the stage's device
    theirs = quiet_import("controlnet_aux.midas").MidasDetector(float32_copy(stage.model))(
        decode_image(photo_sample("coffee").members["target.jpg"]), depth_and_normal=True,
        output_type="np")[1]
    assert maps_agree(ours, theirs, stage.options.dtype)
    assert ours.reshape(-1, 3).std(axis=0).min() > 5  # surfaces, not one flat colour


@needs_weights(ANNOTATORS, "scannet.pt")
@pytest.mark.parametrize("device", DEVICES)
def test_normalbae_runs_with_real_weights(device):
    from annotators.normal import NormalBae

    out = ok(NormalBae({"model": ANNOTATORS, **stage_options(device)}), "coffee")
    assert decode_image(out.members["normal.png"], "RGB").reshape(-1, 3).std(axis=0).min() > 5


@needs_hf_model("openmmlab/upernet-convnext-small")
@pytest.mark.parametrize("device", DEVICES)
def test_uniformer_labels_the_astronaut_a_person(device):
    from annotators.uniformer import Uniformer

    out = ok(Uniformer({"model": "openmmlab/upernet-convnext-small", **stage_options(device)}), "astronaut")
    person = [c for c in out.meta["classes"] if c["name"] == "person"]
    assert person and person[0]["fraction"] > 0.1
    ids = read_indexed_png(out.members["uniformer.png"])
    assert (ids == person[0]["id"]).mean() == pytest.approx(person[0]["fraction"], abs=1e-3)
