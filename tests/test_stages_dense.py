"""The dense stages (hed, mlsd, openpose, normal, depth, uniformer) on tiny models, through
the pipeline's own operators (`run_inline`): formats, batch == one by one, determinism,
equivalence with controlnet_aux's detectors and transformers, bad outputs, GPU options."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from annotate_helpers import stage_samples
from annotators.base import ConfigError
from annotators.controlnet_nets import cn_util, quiet_import
from annotators.imaging import read_indexed_png
from annotators.openpose import KEYPOINTS
from dense_helpers import SIZE, STAGES, flat_sample, make_stage, poison, sliver_sample
from devices import DEVICES, float32_copy, maps_agree
from graph200k.shards import decode_image
from pipelines.stage_ops import run_inline

ALL = list(STAGES)
MEMBER = {"hed": "hed.png", "mlsd": "mlsd.png", "openpose": "openpose.png",
          "normal": "normal.png", "midas_normal": "normal.png", "normalbae": "normal.png",
          "depth": "depth.png", "uniformer": "uniformer.png"}
CHANNELS = {"hed": 1, "mlsd": 1, "openpose": 3, "normal": 3, "midas_normal": 3, "normalbae": 3,
            "depth": 1, "uniformer": 3}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def photos():
    return stage_samples(3, size=SIZE)


@pytest.fixture(scope="module")
def loaded(tiny_models):
    """One loaded stage per test id, shared by the tests that only run it."""
    cache = {}

    def get(test_id):
        if test_id not in cache:
            cache[test_id] = make_stage(test_id, tiny_models)
            cache[test_id].ensure_loaded()
        return cache[test_id]

    return get


@pytest.fixture(scope="module")
def batched(loaded, photos):
    """Each stage's outcomes on the three photos in one batch (computed once)."""
    cache = {}

    def get(test_id):
        if test_id not in cache:
            cache[test_id] = run_inline(loaded(test_id), photos, batch_size=3)
        return cache[test_id]

    return get


@pytest.fixture()
def misbehaving(loaded):
    """A loaded stage whose net is made to misbehave (`poison`); restored afterwards."""
    touched = []

    def get(test_id, output_fn):
        stage = loaded(test_id)
        touched.append((stage, stage.model))
        poison(stage, output_fn)
        return stage

    yield get
    for stage, model in touched:
        stage.model = model


def raw(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def as_rgb(data: bytes) -> np.ndarray:
    return decode_image(data, "RGB")


@pytest.mark.parametrize("test_id", ALL)
def test_members_shapes_dtypes_and_ranges(test_id, batched):
    out = batched(test_id)
    assert [o.status for o in out] == ["ok"] * 3, [o.status for o in out]
    for o in out:
        assert set(o.members) == {MEMBER[test_id]}
        img = raw(o.members[MEMBER[test_id]])
        assert img.shape[:2] == (SIZE, SIZE)
        assert (img.ndim == 2 and CHANNELS[test_id] == 1) or img.shape[2] == CHANNELS[test_id]
        assert img.dtype == np.uint8  # depth too: 8-bit grey, as Graph200K stores it
        assert img.any()
    if test_id == "depth":  # normalised per image: the full 8-bit range, the raw span in meta
        for o in out:
            img = raw(o.members["depth.png"])
            assert img.min() == 0 and img.max() == 255
            assert o.meta["min"] < o.meta["max"] and o.meta["levels"] == 255
    if test_id == "mlsd":  # lines white on black, drawn at the image's own size
        for o in out:
            assert set(np.unique(raw(o.members["mlsd.png"]))) <= {0, 255}
            assert o.meta["segments"] > 0
    if test_id == "openpose":
        for o in out:
            assert o.meta["keypoint_order"] == "body18" and o.meta["people"]
            for person in o.meta["people"]:
                assert len(person["keypoints"]) == len(KEYPOINTS)
                found = [k for k in person["keypoints"] if k is not None]
                assert len(found) == person["parts"] >= 4
                assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y, _ in found)
    if test_id == "uniformer":
        palette = np.asarray(cn_util().ade_palette(), np.uint8)
        for o in out:
            ids = read_indexed_png(o.members["uniformer.png"])
            assert ids.max() < 150
            np.testing.assert_array_equal(as_rgb(o.members["uniformer.png"]), palette[ids])
            classes = o.meta["classes"]
            fractions = [c["fraction"] for c in classes]
            assert fractions == sorted(fractions, reverse=True) and 0.99 <= sum(fractions) <= 1.01
            counts = np.bincount(ids.ravel(), minlength=150) / ids.size
            assert {c["id"] for c in classes} == set(np.flatnonzero(counts >= 1e-4).tolist())


# how far a batch may differ from one image at a time: float GEMMs of other shapes round
# differently; maps quantised to 8 bit almost never see it, depth (a min-max stretch) 1 level
BATCH_TOLERANCE = {"depth": 2}


@pytest.mark.parametrize("test_id", ALL)
def test_batch_equals_one_by_one(test_id, loaded, batched, photos):
    single = run_inline(loaded(test_id), photos, batch_size=1)
    for b, s in zip(batched(test_id), single):
        assert b.status == s.status == "ok"
        x, y = raw(b.members[MEMBER[test_id]]), raw(s.members[MEMBER[test_id]])
        if test_id == "uniformer":  # argmax ties may flip: nearly every pixel agrees
            assert (read_indexed_png(b.members["uniformer.png"])
                    == read_indexed_png(s.members["uniformer.png"])).mean() >= 0.999
        else:
            assert np.abs(x.astype(int) - y).max() <= BATCH_TOLERANCE.get(test_id, 1)


@pytest.mark.parametrize("test_id", ALL)
def test_same_input_gives_the_same_bytes(test_id, batched, tiny_models, photos):
    fresh = make_stage(test_id, tiny_models)  # its own load of the weights
    a, b = batched(test_id), run_inline(fresh, photos, 3)
    assert [o.members for o in a] == [o.members for o in b]
    assert [o.meta for o in a] == [o.meta for o in b]


def test_the_cpu_default_of_one_image_per_pass_gives_the_same_maps(tiny_models, batched,
                                                                   photos):
    for test_id in ("hed", "depth"):
        default = make_stage(test_id, tiny_models, micro_batch=None)
        for a, b in zip(run_inline(default, photos, batch_size=3), batched(test_id)):
            x, y = raw(a.members[MEMBER[test_id]]), raw(b.members[MEMBER[test_id]])
            assert np.abs(x.astype(int) - y).max() <= BATCH_TOLERANCE.get(test_id, 1)
    with pytest.raises(ConfigError, match="micro_batch must be >= 1"):
        make_stage("hed", tiny_models, micro_batch=0)


def test_mixed_sizes_in_one_batch_match_one_by_one(loaded):
    small, big = stage_samples(2, size=SIZE), stage_samples(2, size=2 * SIZE, shard=1)
    mixed = [small[0], big[0], small[1], big[1]]
    stage = loaded("hed")
    together, alone = run_inline(stage, mixed, batch_size=4), run_inline(stage, mixed, 1)
    for t, a, s in zip(together, alone, mixed):
        x, y = raw(t.members["hed.png"]), raw(a.members["hed.png"])
        assert x.shape == decode_image(s.members["target.jpg"]).shape[:2]
        assert np.abs(x.astype(int) - y).max() <= 1


# -- the same picture as controlnet_aux's detectors, same image, same weights --------------
# In float32, at most 1 grey level apart: ours fuses on the device in float32 where the
# detectors use numpy (float64 sigmoid for HED), and a value that lands exactly on a level
# boundary may truncate one level apart. A float16 stage (a GPU's `dtype: auto`) is held to
# the float32 detector within devices.MAP_TOLERANCE.


def _detector(test_id, stage, device="cpu"):
    """controlnet_aux's detector around a float32 copy of the stage's net on `device`."""
    net = float32_copy(stage.model).to(device)
    if test_id == "hed":
        det = quiet_import("controlnet_aux.hed").HEDdetector(net)
        return lambda img: det(img, detect_resolution=SIZE, image_resolution=SIZE,
                               output_type="np")[..., 0]
    if test_id == "mlsd":
        det = quiet_import("controlnet_aux.mlsd").MLSDdetector(net)
        return lambda img: det(img, thr_v=0.1, thr_d=0.1, detect_resolution=SIZE,
                               image_resolution=SIZE, output_type="np")[..., 0]
    if test_id == "openpose":
        body = quiet_import("controlnet_aux.open_pose.body")
        estimation = body.Body.__new__(body.Body)  # Body(path) would full-unpickle a file
        estimation.model = net
        det = quiet_import("controlnet_aux.open_pose").OpenposeDetector(estimation)
        return lambda img: det(img, detect_resolution=SIZE, image_resolution=SIZE,
                               output_type="np")
    if test_id == "midas_normal":
        det = quiet_import("controlnet_aux.midas").MidasDetector(net)
        return lambda img: det(img, depth_and_normal=True, detect_resolution=SIZE,
                               image_resolution=SIZE, output_type="np")[1]
    if test_id == "normalbae":
        det = quiet_import("controlnet_aux.normalbae").NormalBaeDetector(net)
        return lambda img: det(img, detect_resolution=SIZE, image_resolution=SIZE,
                               output_type="np")
    raise KeyError(test_id)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("test_id", ["hed", "mlsd", "openpose", "midas_normal", "normalbae"])
def test_matches_controlnet_aux_detector(test_id, device, loaded, batched, photos, tiny_models):
    if device == "cpu":
        stage, out = loaded(test_id), batched(test_id)
    else:  # what device: auto / dtype: auto give on a GPU box
        stage = make_stage(test_id, tiny_models, device)
        out = run_inline(stage, photos, batch_size=3)
    detect = _detector(test_id, stage, device)
    for o, s in zip(out, photos):
        assert o.ok, o.status
        ours = raw(o.members[MEMBER[test_id]])
        if ours.ndim == 3:
            ours = ours[..., ::-1]  # OpenCV gives BGR
        theirs = detect(s.image())
        assert ours.shape == theirs.shape
        assert maps_agree(ours, theirs, stage.options.dtype)
        assert theirs.any()


def test_openpose_keypoints_match_the_detectors_poses(loaded, batched, photos):
    body = quiet_import("controlnet_aux.open_pose.body")
    estimation = body.Body.__new__(body.Body)
    estimation.model = loaded("openpose").model
    det = quiet_import("controlnet_aux.open_pose").OpenposeDetector(estimation)
    out = batched("openpose")
    for o, s in zip(out, photos):
        img = cn_util().resize_image(s.image(), SIZE)
        poses = det.detect_poses(img)
        assert len(poses) == len(o.meta["people"])
        for pose, person in zip(poses, o.meta["people"]):
            for k, ours in zip(pose.body.keypoints, person["keypoints"]):
                assert (k is None) == (ours is None)
                if k is not None:
                    assert abs(k.x - ours[0]) < 1e-3 and abs(k.y - ours[1]) < 1e-3


def test_depth_matches_transformers_processing(loaded, batched, photos, tiny_models):
    import torch
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(tiny_models("depth")))
    stage = loaded("depth")
    for o, s in zip(batched("depth"), photos):
        inputs = processor(images=s.image(), size={"height": 126, "width": 126},
                           return_tensors="pt")
        with torch.no_grad():
            prediction = stage.model(**inputs)
        ref = processor.post_process_depth_estimation(prediction, target_sizes=[(SIZE, SIZE)])
        ref = ref[0]["predicted_depth"].numpy()
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        ours = raw(o.members["depth.png"]) / 255
        # the processor resizes with torchvision's bicubic, we with OpenCV's (uint8 in)
        assert np.abs(ours - ref).mean() < 0.02
        assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99


def test_uniformer_matches_transformers_post_processing(loaded, batched, photos, tiny_models):
    import torch
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(tiny_models("uniformer")))
    stage = loaded("uniformer")
    for o, s in zip(batched("uniformer"), photos):
        inputs = processor(images=s.image(), size={"height": SIZE, "width": SIZE},
                           return_tensors="pt")
        with torch.no_grad():
            logits = stage.model(**inputs)
        ref = processor.post_process_semantic_segmentation(logits, target_sizes=[(SIZE, SIZE)])
        assert (ref[0].numpy() == read_indexed_png(o.members["uniformer.png"])).mean() > 0.99


# -- bad outputs and inputs: that sample fails (or is skipped), its neighbours do not --------
def _nan(t):
    return t * float("nan")


def _inf(t):
    return t + float("inf")


@pytest.mark.parametrize("test_id, broken", [(t, _nan) for t in ALL] + [("hed", _inf),
                                                                         ("depth", _inf)])
def test_nan_or_inf_output_fails_that_sample_only(test_id, broken, misbehaving, batched,
                                                  photos):
    clean = batched(test_id)
    stage = misbehaving(test_id, broken)
    out = run_inline(stage, [photos[0], flat_sample("bad"), photos[1]], batch_size=3)
    assert out[1].status.startswith("failed: BadOutput: the model's"), out[1].status
    assert "NaN or inf" in out[1].status and out[1].members == {}
    assert [out[0].members, out[2].members] == [clean[0].members, clean[1].members]


# an output that leaves nothing to store: failed where the map must exist, skipped where an
# empty result is the answer (no person, no straight line)
EMPTY = {
    "hed": (lambda t: t * 0 - 1e4, "failed: ValueError: the model's HED edge map is empty"),
    "mlsd": (lambda t: t * 0 - 1e4, "skipped: no straight line segment"),
    "openpose": (lambda t: t * 0, "skipped: no person found"),
    "midas_normal": (lambda t: t * 0 + 1, "failed: BadOutput: the model's depth is constant"),
    "depth": (lambda t: t * 0 + 1, "failed: BadOutput: the model's depth is constant"),
}


@pytest.mark.parametrize("test_id", list(EMPTY))
def test_empty_output_fails_or_skips_that_sample_only(test_id, misbehaving, photos):
    change, status = EMPTY[test_id]
    stage = misbehaving(test_id, change)
    out = run_inline(stage, [photos[0], flat_sample("empty"), photos[1]], batch_size=3)
    assert out[1].status.startswith(status), out[1].status
    assert out[1].members == {} and out[0].ok and out[2].ok


@pytest.mark.parametrize("test_id", ALL)
def test_images_the_model_cannot_take_fail_with_the_reason(test_id, loaded, photos):
    broken = flat_sample("undecodable")
    broken.members["target.jpg"] = b"\xff\xd8 not a jpeg"
    out = run_inline(loaded(test_id), [photos[0], sliver_sample("sliver"), broken], 3)
    assert out[0].ok
    assert "cannot take a 1024x16 image" in out[1].status and out[1].status.startswith("failed")
    assert "target.jpg does not decode" in out[2].status


# -- options --------------------------------------------------------------------------------
@pytest.mark.parametrize("test_id", ["hed", "depth"])
def test_gpu_options_on_a_cpu_machine_are_config_errors(test_id, tiny_models, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="asks for a GPU but none is visible"):
        make_stage(test_id, tiny_models, device="cuda").load()
    with pytest.raises(ConfigError, match="dtype float16 is for GPUs"):
        make_stage(test_id, tiny_models, dtype="float16").load()
    with pytest.raises(ConfigError, match="is not one of auto, cpu, cuda"):
        make_stage(test_id, tiny_models, device="gpu")
    with pytest.raises(ConfigError, match="detect_resolution"):
        make_stage("hed", tiny_models, detect_resolutoin=256)


def test_a_checkpoint_of_another_net_is_refused(tiny_models, tmp_path):
    import shutil

    shutil.copy(tiny_models("hed") / "ControlNetHED.pth", tmp_path / "mlsd_large_512_fp32.pth")
    stage = make_stage("mlsd", tiny_models)
    stage.options.model = str(tmp_path)
    with pytest.raises(ValueError, match="not a M-LSD large checkpoint"):
        stage.load()
    stage.options.model = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="mlsd_large_512_fp32.pth"):
        stage.load()


def test_pickled_objects_in_a_checkpoint_are_never_unpickled(tiny_models, tmp_path):
    import pickle

    import torch

    torch.save({"weights": torch.zeros(1), "payload": _Payload()}, tmp_path / "ControlNetHED.pth")
    stage = make_stage("hed", tiny_models)
    stage.options.model = str(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        stage.load()


class _Payload:
    pass


def test_tiny_models_are_reproducible_and_narrow(tmp_path):
    from annotators.tiny_models import build

    a = build(tmp_path / "a", only=["hed", "openpose"], log=lambda *_: None)
    b = build(tmp_path / "b", only=["hed", "openpose"], log=lambda *_: None)
    for name, file in (("hed", "ControlNetHED.pth"), ("openpose", "body_pose_model.pth")):
        assert (a[name] / file).read_bytes() == (b[name] / file).read_bytes()
        assert (a[name] / file).stat().st_size < 8 * 2 ** 20  # the real ones: 29 / 200 MB


def test_preview_sheet_shows_the_dense_members(batched, photos, tmp_path):
    """A shard holding what the six stages wrote reads back through the training reader
    (8-bit depth as it is stored, the palette PNG as colours) and the preview's contact sheet."""
    from PIL import Image

    from annotate_helpers import make_samples
    from graph200k import preview
    from graph200k.manifest import Manifest
    from graph200k.reader import SampleReader
    from graph200k.shards import shard_path, write_shard

    source = next(make_samples(0, 1, size=SIZE))
    assert source["target.jpg"] == photos[0].members["target.jpg"]
    nodes = ["hed", "mlsd", "openpose", "normal", "depth", "uniformer"]
    sample = dict(source)
    for node in nodes:
        sample.update(batched(node)[0].members)
    folder = tmp_path / "shards"
    write_shard(shard_path(folder, 0), [sample])
    Manifest.from_shards(folder).save(folder / "manifest.parquet")
    reader = SampleReader(folder)
    for node in nodes:
        img = reader.fetch(source["__key__"], node)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8 and img.std() > 0
    np.testing.assert_array_equal(reader.fetch(source["__key__"], "depth")[..., 0],
                                  raw(sample["depth.png"]))  # 8-bit grey: read as stored
    out = tmp_path / "sheet.png"
    assert preview.main(["--key", source["__key__"], "--shards", str(folder),
                         "--no-degradations", "--out", str(out)]) == 0
    tiles = np.asarray(Image.open(out).convert("RGB"))
    broken = (tiles == (255, 225, 225)).all(axis=2)  # the sheet's tile for a node it cannot read
    assert not broken.any()
    assert tiles.shape[1] == 8 * (144 + preview.PAD) + preview.PAD  # target, reference + 6
