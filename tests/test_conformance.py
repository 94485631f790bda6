"""Conformance with Graph200K's annotations, on the photos the demo uses (scikit-image's):
canny is controlnet_aux's `CannyDetector(detect_resolution=512)` edges at the image's size,
byte for byte; HED, M-LSD and OpenPose, built from the production config's blocks (their
resolutions Graph200K's: `_hed_512`, detect 512, `_openpose_fullres_nohand`), store maps in
Graph200K's encoding: the file's mode and channels, the values a reader sees as RGB, the
image's own size. Tiny random nets stand in for the weights: the encodings, resizes and
drawing are the stages' own code."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from annotators.base import Sample
from annotators.canny import Canny
from annotators.controlnet_nets import quiet_import
from graph200k.fixtures import SUBJECTS, _photo
from graph200k.shards import decode_image, encode_image
from pipelines.annotate_config import RESOURCE_KEYS, import_class
from pipelines.stage_ops import run_inline

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = [name for name, *_ in SUBJECTS]
# (h, w): Subjects200K's two panel sizes, a 768 x 1344 photo (as several of the reference
# repository's examples), and sizes that are no multiple of 64 (ControlNet's detect grid)
SIZES = [(512, 512), (1024, 1024), (768, 1344), (450, 600), (333, 500)]


def photo(name: str, h: int, w: int) -> np.ndarray:
    img = _photo(name, 0)
    return np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))


def production_block(stage: str) -> tuple[type, dict]:
    raw = yaml.safe_load((ROOT / "configs/annotate.yaml").read_text())["stages"][stage]
    return import_class(raw["class"], stage), {k: v for k, v in raw.items()
                                               if k not in RESOURCE_KEYS}


@pytest.fixture(scope="module")
def canny_detector():
    return quiet_import("controlnet_aux.canny").CannyDetector()


@pytest.mark.parametrize("h, w", SIZES)
def test_canny_is_controlnet_aux_at_detect_resolution_512(h, w, canny_detector):
    """Exactly the detector's edges: where the image is on ControlNet's 64-px grid, its
    map at `image_resolution` = the short side is the image's size; elsewhere the
    detector cannot return the image's size, and its detect-size map resized (bilinear,
    as the detector resizes) is ours."""
    cls, cfg = production_block("canny")
    assert cfg["detect_resolution"] == 512 and (cfg["low_threshold"], cfg["high_threshold"]) == (100, 200)
    stage = cls(cfg)
    for name in PHOTOS[:4]:
        img = photo(name, h, w)
        ours = stage.edges(img)
        assert ours.shape == (h, w) and ours.dtype == np.uint8
        if h % 64 == 0 and w % 64 == 0:
            theirs = canny_detector(img, 100, 200, detect_resolution=512,
                                    image_resolution=min(h, w), output_type="np")[..., 0]
        else:
            at_detect = canny_detector(img, 100, 200, detect_resolution=512,
                                       image_resolution=512, output_type="np")[..., 0]
            theirs = cv2.resize(at_detect, (w, h), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(ours, theirs)
        assert (ours > 127).mean() > 0.005  # a photo has edges
        if (h, w) == (512, 512):  # a Subjects200K panel: nothing resized, binary edges
            assert set(np.unique(ours)) <= {0, 255}


def test_canny_member_is_a_one_channel_png_a_reader_sees_as_grey_rgb():
    stage = Canny(production_block("canny")[1])
    img = photo("astronaut", 1024, 1024)
    out = run_inline(stage, [Sample("0000001", {"target.jpg": encode_image(img, "png")})])[0]
    data = out.members["canny.png"]
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw.ndim == 2 and raw.dtype == np.uint8 and raw.shape == (1024, 1024)
    as_rgb = decode_image(data, "RGB")  # Graph200K's canny JPEGs are RGB, three equal channels
    assert as_rgb.shape == (1024, 1024, 3)
    assert (as_rgb[..., 0] == as_rgb[..., 1]).all() and (as_rgb[..., 1] == as_rgb[..., 2]).all()
    np.testing.assert_array_equal(raw, stage.edges(decode_image(encode_image(img, "png"))))


def test_canny_at_own_size_is_the_option_null():
    img = photo("coffee", 1024, 1024)
    own = Canny({"detect_resolution": None}).edges(img)
    np.testing.assert_array_equal(own, cv2.Canny(img, 100, 200))
    assert not np.array_equal(own, Canny({}).edges(img))  # not Graph200K's map at 1024^2


# -- the model stages, in the production config's options, on tiny nets --------------------

OPENPOSE_COLOURS = np.array([[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0],
                             [85, 255, 0], [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255],
                             [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255], [170, 0, 255],
                             [255, 0, 255], [255, 0, 170], [255, 0, 85]])


def _stage(name: str, tiny_models):
    cls, cfg = production_block(name)
    cfg = {**cfg, "model": str(tiny_models(name)), "device": "cpu", "micro_batch": 8}
    stage = cls(cfg)
    stage.ensure_loaded()
    return stage


@pytest.fixture(scope="module")
def panels():
    """Two Subjects200K panel sizes, the demo's photos."""
    return [Sample(f"{i:07d}", {"target.jpg": encode_image(photo(n, s, s), "png")})
            for i, (n, s) in enumerate([("astronaut", 512), ("camera", 1024)])]


@pytest.mark.usefixtures("one_torch_thread")
def test_hed_mlsd_openpose_store_graph200k_encodings(tiny_models, panels):
    hed, mlsd, openpose = (_stage(n, tiny_models) for n in ("hed", "mlsd", "openpose"))
    assert hed.options.detect_resolution == 512 == mlsd.options.detect_resolution
    assert openpose.options.detect_resolution is None  # `_openpose_fullres_nohand`
    sizes = [s.image().shape[:2] for s in panels]
    for o, size in zip(run_inline(hed, panels, batch_size=2), sizes):
        assert o.status == "ok", o.status
        raw = cv2.imdecode(np.frombuffer(o.members["hed.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert raw.ndim == 2 and raw.dtype == np.uint8 and raw.shape == size  # grey, 0..255
        assert raw.std() > 0
    for o, size in zip(run_inline(mlsd, panels, batch_size=2), sizes):
        if o.status.startswith("skipped"):  # a random net may find no segment
            continue
        raw = cv2.imdecode(np.frombuffer(o.members["mlsd.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert raw.ndim == 2 and raw.dtype == np.uint8 and raw.shape == size
        if size == (512, 512):  # drawn at the detect size: white 1-px lines on black
            assert set(np.unique(raw)) <= {0, 255}
    limb = (OPENPOSE_COLOURS * 0.6).astype(int)  # sticks at 0.6, joints full (draw_bodypose)
    allowed = {(0, 0, 0)} | {tuple(c) for c in OPENPOSE_COLOURS} | {tuple(c) for c in limb}
    drawn = 0
    for o, s, size in zip(run_inline(openpose, panels, batch_size=2), panels, sizes):
        if o.status.startswith("skipped"):
            continue
        assert o.status == "ok", o.status
        raw = cv2.imdecode(np.frombuffer(o.members["openpose.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert raw.ndim == 3 and raw.shape == (*size, 3)
        rgb = decode_image(o.members["openpose.png"], "RGB")
        # drawn at the image's own size: no resize blends, only ControlNet's colours on black
        colours = {tuple(int(v) for v in c) for c in np.unique(rgb.reshape(-1, 3), axis=0)}
        assert colours <= allowed, sorted(colours - allowed)[:5]
        assert len(colours) > 1
        drawn += 1
        # and the same pixels as controlnet_aux's detector told to detect at the full size
        body = quiet_import("controlnet_aux.open_pose.body")
        estimation = body.Body.__new__(body.Body)
        estimation.model = openpose.model
        det = quiet_import("controlnet_aux.open_pose").OpenposeDetector(estimation)
        theirs = det(s.image(), detect_resolution=size[0], image_resolution=size[0],
                     include_hand=False, include_face=False, output_type="np")
        np.testing.assert_array_equal(rgb, theirs)
    assert drawn, "the tiny OpenPose found nobody in either photo: nothing was checked"
