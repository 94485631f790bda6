"""DSINE (`annotators.dsine_net`, stage `annotators.normal.DSINE`): the released checkpoint's
key names, strict loading from both weight layouts, the geometry pieces, and the stage on
its tiny model. The shared dense-stage checks (batch == one by one, same bytes, NaN, bad
inputs) run on it as test id `normal` in tests/test_stages_dense.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from annotators.base import ConfigError, Sample
from graph200k.shards import decode_image, encode_image
from pipelines.stage_ops import run_inline

# Module paths of the released `dsine.pt` outside the encoder, as read in the public
# repository (baegwangbin/DSINE: models/dsine/v02.py `DSINE_v02`, its `Decoder`, `ConvGRU`;
# models/conv_encoder_decoder/submodules.py `UpSampleGN` (`_net`: conv, GN, LeakyReLU, conv,
# GN, LeakyReLU) and `get_prediction_head` (conv, ReLU, conv, ReLU, conv)).
RELEASED_MODULES = {
    "decoder.conv2",
    *(f"decoder.{up}._net.{i}" for up in ("up1", "up2") for i in (0, 1, 3, 4)),
    *(f"{head}.{i}" for head in ("decoder.normal_head", "decoder.feature_head",
                                 "decoder.hidden_head", "prob_head", "xy_head", "angle_head",
                                 "up_prob_head") for i in (0, 2, 4)),
    "gru.convz", "gru.convr", "gru.convq",
}
# the encoder: geffnet's tf_efficientnet_b5_ap with pooling and classifier set to Identity
RELEASED_ENCODER_PREFIXES = {f"encoder.original_model.{m}"
                             for m in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")}
# shapes that follow from the released config (B5 encoder, NF 2048, 64-d features and
# hidden state, 5x5 neighbourhood, x8 convex upsampling)
RELEASED_SHAPES = {
    "encoder.original_model.conv_stem.weight": (48, 3, 3, 3),
    "encoder.original_model.conv_head.weight": (2048, 512, 1, 1),
    "decoder.conv2.weight": (2048, 2048 + 2, 1, 1),
    "decoder.up1._net.0.weight": (1024, 2048 + 176 + 2, 3, 3),
    "decoder.up2._net.0.weight": (512, 1024 + 64 + 2, 3, 3),
    "decoder.normal_head.0.weight": (128, 512 + 2, 3, 3),
    "decoder.normal_head.4.weight": (3, 128, 1, 1),
    "gru.convz.weight": (64, 64 + 64 + 2, 5, 5),
    "prob_head.0.weight": (64, 64 + 2, 3, 3),
    "prob_head.4.weight": (25, 64, 1, 1),
    "xy_head.4.weight": (50, 64, 1, 1),
    "angle_head.4.weight": (25, 64, 1, 1),
    "up_prob_head.4.weight": (9 * 8 * 8, 64, 1, 1),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def released_shapes():
    import torch

    from annotators.dsine_net import DSINENet

    with torch.device("meta"):
        net = DSINENet()
    return net, {k: tuple(v.shape) for k, v in net.state_dict().items()}


def tiny_config():
    from annotators.dsine_net import DSINEConfig
    from annotators.tiny_models.dense import TINY_DSINE

    return DSINEConfig(**TINY_DSINE)


# -- the released architecture -----------------------------------------------------------------
def test_the_released_key_names_and_shapes(released_shapes):
    net, shapes = released_shapes
    outside = {k.rsplit(".", 1)[0] for k in shapes if not k.startswith("encoder.")}
    assert outside == RELEASED_MODULES
    encoder = {k for k in shapes if k.startswith("encoder.")}
    assert {".".join(k.split(".")[:3]) for k in encoder} == RELEASED_ENCODER_PREFIXES
    assert len(shapes) == 918
    for key, shape in RELEASED_SHAPES.items():
        assert shapes[key] == shape, key
    blocks = net.encoder.original_model.blocks
    assert [len(stage) for stage in blocks] == [3, 5, 5, 7, 7, 9, 3]  # B5's depth 2.2
    assert net.encoder.channels == (64, 176, 2048)


def test_the_encoder_is_timms_tf_efficientnet_b5(released_shapes):
    import timm
    import torch
    from timm.layers import Conv2dSame

    net, _ = released_shapes
    with torch.device("meta"):
        timms = timm.create_model("tf_efficientnet_b5", pretrained=False, num_classes=0,
                                  global_pool="")
    ours = {k: tuple(v.shape) for k, v in net.encoder.original_model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in timms.state_dict().items()}
    encoder = net.encoder.original_model
    assert isinstance(encoder.conv_stem, Conv2dSame)  # TF "same" padding, as geffnet's tf_
    assert encoder.bn1.eps == 1e-3


def test_random_values_under_the_released_names_load_strictly(released_shapes):
    """A state dict keyed as the released file (with random values) loads with strict=True."""
    import torch

    from annotators.dsine_net import DSINENet

    _, shapes = released_shapes
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randint(0, 9, s, generator=generator) if k.endswith("num_batches_tracked")
                 else torch.randn(s, generator=generator)) for k, s in shapes.items()}
    with torch.device("meta"):
        net = DSINENet()
    net.load_state_dict(state, strict=True, assign=True)
    key = "decoder.up1._net.0.weight"
    assert torch.equal(net.state_dict()[key], state[key])
    del state["gru.convz.bias"]
    with torch.device("meta"):
        fresh = DSINENet()
    with pytest.raises(RuntimeError, match="gru.convz.bias"):
        fresh.load_state_dict(state, strict=True, assign=True)


# -- loading through from_pretrained -----------------------------------------------------------
def _random_tiny(seed: int):
    import torch

    from annotators.dsine_net import DSINENet

    torch.manual_seed(seed)
    return DSINENet(tiny_config())


@pytest.mark.parametrize("layout", ["pt", "safetensors"])
def test_from_pretrained_loads_both_layouts_strictly(layout, tmp_path):
    import torch

    from annotators.dsine_net import from_pretrained, save_pretrained

    net = _random_tiny(1)
    loaded = from_pretrained(str(save_pretrained(net, tmp_path / "m", layout=layout)))
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert not loaded.training and loaded.config == net.config


def test_the_released_file_layout_with_module_prefixes_loads(tmp_path):
    """`{"model": state, "iter": n}`, keys maybe prefixed `module.` (DataParallel), as DSINE's
    own `load_checkpoint` accepts; safetensors wins where a folder has both."""
    import torch

    from annotators.dsine_net import from_pretrained, save_pretrained

    a, b = _random_tiny(1), _random_tiny(2)
    folder = save_pretrained(a, tmp_path / "m", layout="safetensors")
    torch.save({"model": {f"module.{k}": v for k, v in b.state_dict().items()}, "iter": 7},
               folder / "dsine.pt")
    key = "prob_head.4.weight"
    assert torch.equal(from_pretrained(str(folder)).state_dict()[key], a.state_dict()[key])
    (folder / "dsine.safetensors").unlink()
    assert torch.equal(from_pretrained(str(folder)).state_dict()[key], b.state_dict()[key])


def test_wrong_missing_or_unsafe_checkpoints_are_refused(tmp_path):
    import json
    import pickle

    import torch

    from annotators.dsine_net import from_pretrained, save_pretrained

    folder = save_pretrained(_random_tiny(1), tmp_path / "m", layout="pt")
    state = torch.load(folder / "dsine.pt", weights_only=True)["model"]
    state.pop("xy_head.4.bias")
    torch.save({"model": state}, folder / "dsine.pt")
    with pytest.raises(ValueError, match="not a DSINE checkpoint.*xy_head.4.bias"):
        from_pretrained(str(folder))
    torch.save({"model": state, "payload": _Payload()}, folder / "dsine.pt")
    with pytest.raises(pickle.UnpicklingError):
        from_pretrained(str(folder))
    (folder / "dsine.pt").unlink()
    with pytest.raises(FileNotFoundError, match="none of dsine.safetensors, dsine.pt"):
        from_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({"decoder_featurs": 64}))
    torch.save({"model": state}, folder / "dsine.pt")
    with pytest.raises(ValueError, match="unknown DSINE config keys \\['decoder_featurs'\\]"):
        from_pretrained(str(folder))


class _Payload:
    pass


# -- geometry -----------------------------------------------------------------------------------
def test_rotation_is_rodrigues_and_a_zero_axis_keeps_the_vector():
    import torch
    from scipy.spatial.transform import Rotation

    from annotators.dsine_net import rotate

    rng = np.random.default_rng(0)
    axes = rng.normal(size=(50, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0, math.pi, size=(50, 1))
    vectors = rng.normal(size=(50, 3))
    expected = Rotation.from_rotvec(axes * angles).apply(vectors)
    got = rotate(*(torch.tensor(a, dtype=torch.float64) for a in (vectors, axes, angles)))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    zero = rotate(torch.tensor(vectors), torch.zeros(50, 3, dtype=torch.float64),
                  torch.tensor(angles))
    np.testing.assert_allclose(zero.numpy(), vectors)


def test_convex_upsampling_with_one_hot_weights_copies_the_coarse_pixel():
    import torch

    from annotators.dsine_net import convex_upsample

    coarse = torch.randn(2, 3, 4, 5)
    mask = torch.full((2, 9, 8, 8, 4, 5), -1e4)
    mask[:, 4] = 1e4  # all weight on the centre of the 3x3 window
    up = convex_upsample(coarse, mask.view(2, 9 * 64, 4, 5), 8)
    torch.testing.assert_close(up, coarse.repeat_interleave(8, 2).repeat_interleave(8, 3))


def test_rays_from_the_assumed_field_of_view_are_centred_and_survive_padding():
    import torch

    from annotators.dsine_net import Intrinsics, camera_from_fov

    h, w, fov = 96, 160, 60.0
    like = torch.empty(())
    uv = Intrinsics(camera_from_fov(fov, h, w), h, w).uv(h, w, like)[0]
    half = math.tan(math.radians(fov / 2))  # across the longer side
    assert uv[0, 0, 0].item() == pytest.approx(-half * (w - 1) / w, rel=1e-5)
    assert uv[0, 0, -1].item() == pytest.approx(half * (w - 1) / w, rel=1e-5)
    assert uv[1, 0, 0].item() == pytest.approx(-half * (h - 1) / w, rel=1e-5)
    padded = Intrinsics(camera_from_fov(fov, h, w, left=16, top=8), h + 24, w + 32)
    torch.testing.assert_close(padded.uv(h + 24, w + 32, like)[0, :, 8:8 + h, 16:16 + w], uv)
    # at 1/8 scale each coarse pixel centre sees the ray through its block's centre
    coarse = Intrinsics(camera_from_fov(fov, h, w), h, w).uv(h // 8, w // 8, like)[0]
    torch.testing.assert_close(coarse, uv.view(2, h // 8, 8, w // 8, 8).mean(dim=(2, 4)))


# -- colour conventions on analytic planes ----------------------------------------------------
# A plane's outward normal in camera axes (x right, y down, z forward): facing the camera is
# (0, 0, -1); turned 30 degrees to face left, (-sin, 0, -cos); and so on.
S, C = math.sin(math.radians(30)), math.cos(math.radians(30))
PLANES = {"camera": (0, 0, -1), "left": (-S, 0, -C), "right": (S, 0, -C), "up": (0, -S, -C),
          "down": (0, S, -C)}


def _dsine_rgb(outward) -> np.ndarray:
    """The map of a plane as DSINE (and NormalBae) store it: the network's normal points
    along the viewing ray, the negative of the outward normal (DSINE's README)."""
    import torch

    from annotators.normal import normal_rgb

    n = -torch.tensor(outward, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    (rgb,) = normal_rgb(n)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    return rgb[0, 0].astype(int)


def test_dsine_and_normalbae_colours_of_tilted_planes():
    """As Graph200K's example files: facing the camera lavender-blue, R up when the surface
    faces left, G up when it faces up (measured on the reference's 12 `_dsine_normal_map`
    files: surfaces facing right R 96, left R 186, up G 166, down G 78, mean over files)."""
    rgb = {k: _dsine_rgb(v) for k, v in PLANES.items()}
    assert tuple(rgb["camera"]) == (127, 127, 255)  # (n + 1) / 2 x 255, truncated
    assert rgb["left"][0] > 127 + 50 > rgb["camera"][0] > rgb["right"][0] + 50
    assert rgb["up"][1] > 127 + 50 > rgb["camera"][1] > rgb["down"][1] + 50
    for turned in ("left", "right"):
        assert rgb[turned][1] == 127 and rgb[turned][2] < 255
    for turned in ("up", "down"):
        assert rgb[turned][0] == 127 and rgb[turned][2] < 255


def _midas_rgb(outward, plate: bool = False) -> np.ndarray:
    """The MiDaS stage's map of a plane's inverse depth (MiDaS predicts inverse depth),
    optionally with a fronto-parallel plate nearer than it in the middle."""
    from annotators.normal import MidasNormal

    size, f, distance = 64, 64 / (2 * math.tan(math.radians(30))), 2.0
    v, u = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    ray = np.stack([(u - size / 2) / f, (v - size / 2) / f, np.ones_like(u)])
    # plane o . X = -distance: 1 / z = -(o . ray) / distance
    inverse = -np.tensordot(np.asarray(outward, float), ray, axes=1) / distance
    if plate:
        inverse[16:48, 16:48] = inverse.max() * 1.5
    depth = (inverse * 2000).astype(np.float32)  # MiDaS-sized values
    stage = MidasNormal({"bg_threshold": 0.0})
    return stage.normal_map(depth)


def test_midas_colours_of_tilted_planes():
    """ControlNet 1.0's map: R = z (a surface facing the camera is (255, 127, 127)), G up
    when it faces up, B up when it faces left."""
    centre = lambda rgb: rgb[24:40, 24:40].reshape(-1, 3).mean(axis=0)
    rgb = {k: centre(_midas_rgb(v)) for k, v in PLANES.items() if k != "camera"}
    assert rgb["left"][2] > 127 + 20 and rgb["right"][2] < 127 - 20
    assert rgb["up"][1] > 127 + 20 and rgb["down"][1] < 127 - 20
    for turned in ("left", "right"):
        assert abs(rgb[turned][1] - 127.5) <= 1
    for turned in ("up", "down"):
        assert abs(rgb[turned][2] - 127.5) <= 1
    plate = _midas_rgb(PLANES["left"], plate=True)[20:44, 20:44].reshape(-1, 3)
    assert (plate == (255, 127, 127)).all()


# -- the stage on its tiny model --------------------------------------------------------------
def _photo(name: str, h: int, w: int) -> Sample:
    import cv2
    from skimage import data

    img = cv2.resize(getattr(data, name)()[..., :3], (w, h), interpolation=cv2.INTER_AREA)
    return Sample(name, {"target.jpg": encode_image(img, "jpg", 95)})


@pytest.fixture(scope="module")
def stage(tiny_models):
    from annotators.normal import DSINE

    s = DSINE({"model": str(tiny_models("normal")), "micro_batch": 8})
    s.ensure_loaded()
    return s


def test_any_size_gives_unit_normals_facing_the_camera_at_that_size(stage):
    """Sides that are not multiples of 32 (padded and cropped), and `resolution` (resized
    back). Every stored vector is a unit normal within a visible half-sphere: at most
    90 - 0.6 degrees from its pixel's ray (DSINE's ray ReLU; 1.5 levels of slack for 8 bits)."""
    import torch

    from annotators.dsine_net import Intrinsics, camera_from_fov
    from annotators.normal import DSINE

    samples = [_photo("chelsea", 203, 301), _photo("coffee", 96, 160)]
    resized = DSINE({"model": stage.options.model, "resolution": 64})
    for s, o, r in zip(samples, run_inline(stage, samples, 2), run_inline(resized, samples, 2)):
        h, w = s.image().shape[:2]
        for out in (o, r):
            assert out.ok, out.status
            png = out.members["normal.png"]
            assert png.startswith(b"\x89PNG")
            rgb = decode_image(png, "RGB")
            assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
            n = (rgb.astype(np.float64) + 0.5) / 255 * 2 - 1  # undo the truncation
            assert np.abs(np.linalg.norm(n, axis=2) - 1).max() < 0.02
        ray = Intrinsics(camera_from_fov(60.0, h, w), h, w).uv(h, w, torch.empty(()))[0]
        ray = torch.cat([ray, torch.ones(1, h, w)]).numpy()
        ray /= np.linalg.norm(ray, axis=0)
        n = (decode_image(o.members["normal.png"], "RGB") + 0.5) / 255 * 2 - 1
        assert (np.einsum("hwc,chw->hw", n, ray) >= 0.01 - 1.5 * 2 / 255 * math.sqrt(3)).all()


def test_a_half_precision_backbone_with_a_float32_refinement_agrees(stage):
    """On a GPU the stage runs the encoder and decoder in float16 and the refinement in
    float32; bfloat16 here (the CPU's half type) runs the same mixed path."""
    import copy

    import torch

    from annotators.dsine_net import camera_from_fov

    x, camera = torch.randn(2, 3, 64, 96), camera_from_fov(60.0, 64, 96, batch=2)
    mixed = copy.deepcopy(stage.model).to(torch.bfloat16).keep_refinement_float32()
    assert mixed.decoder.conv2.weight.dtype == torch.bfloat16
    assert mixed.prob_head[0].weight.dtype == torch.float32
    with torch.inference_mode():
        full, half = stage.model(x, camera), mixed(x.to(torch.bfloat16), camera)
    assert half.dtype == torch.float32
    assert (full * half).sum(dim=1).mean() > 0.99


def test_iterations_change_the_map_and_options_are_checked(stage, tiny_models):
    from annotators.normal import DSINE

    sample = [_photo("astronaut", 64, 64)]
    base = run_inline(stage, sample, 1)[0].members["normal.png"]
    coarse = DSINE({"model": stage.options.model, "iterations": 0})
    assert run_inline(coarse, sample, 1)[0].members["normal.png"] != base
    for bad, match in (({"fov": 0}, "fov 0"), ({"fov": 180}, "fov 180"),
                       ({"iterations": -1}, "iterations must be >= 0"),
                       ({"resolution": 16}, "resolution 16 is below 32"),
                       ({"fvo": 60}, "fvo")):
        with pytest.raises(ConfigError, match=match):
            DSINE({"model": stage.options.model, **bad})


def test_the_configs_make_dsine_the_default_normal():
    import yaml

    from annotate_helpers import REPO
    from pipelines.annotate_config import build_stage

    for path, model in (("configs/annotate.yaml", "camenduru/DSINE"),
                        ("configs/annotate-tiny.yaml", "build/tiny-models/normal")):
        block = yaml.safe_load((REPO / path).read_text())["stages"]["normal"]
        built = build_stage("normal", block)
        assert built.cls.__name__ == "DSINE" and built.config["model"] == model
