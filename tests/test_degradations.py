"""The 32 online degradations: shapes, determinism, that each one changes a real photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from graph200k import degradations
from graph200k.degradations import DEGRADATION_FUNCS, apply
from graph200k.nodes import DEGRADATIONS

ROTATIONS = {"rotate90": -1, "rotate180": 2, "rotate270": 1}  # np.rot90 k: clockwise is negative
# Degradations with no random parameter: the same output whatever the seed.
FIXED = {"SRx2", "SRx4", "gray", "Barrel", "Pincushion", *ROTATIONS}
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    # A real photo, non-square so that the rotations' shape rule is visible; small to keep
    # the 32 x several calls well under a few seconds.
    return cv2.resize(skimage.data.astronaut(), (128, 96), interpolation=cv2.INTER_AREA)


def _luma(img: np.ndarray) -> float:
    return float(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean())


def test_registry_matches_node_types():
    assert tuple(DEGRADATION_FUNCS) == DEGRADATIONS
    assert len(DEGRADATION_FUNCS) == 32
    assert set(degradations.DETERMINISTIC) == FIXED


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_output_is_uint8_rgb_with_the_right_shape(photo, name):
    for seed in SEEDS:
        out = apply(name, photo, seed)
        assert out.dtype == np.uint8
        assert out.ndim == 3 and out.shape[2] == 3
        h, w = photo.shape[:2]
        expected = (w, h, 3) if name in ("rotate90", "rotate270") else photo.shape
        assert out.shape == expected, f"{name}: {out.shape} != {expected}"
        assert out.flags.c_contiguous


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_same_seed_same_bytes(photo, name):
    for seed in SEEDS:
        a = apply(name, photo, seed)
        b = apply(name, photo, np.random.default_rng(seed))
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", sorted(set(DEGRADATIONS) - FIXED))
def test_different_seeds_differ(photo, name):
    outputs = {apply(name, photo, seed).tobytes() for seed in range(6)}
    assert len(outputs) > 1, f"{name} ignores its rng"


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_changes_the_photo(photo, name):
    for seed in SEEDS:
        out = apply(name, photo, seed)
        if out.shape == photo.shape:
            diff = np.abs(out.astype(np.int16) - photo).mean()
            assert diff > 0.5, f"{name} (seed {seed}) barely changed the photo: {diff:.2f}"
        else:
            assert name in ("rotate90", "rotate270")


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_input_is_not_modified(photo, name):
    before = photo.copy()
    apply(name, photo, 0)
    np.testing.assert_array_equal(photo, before)


def test_rotations_are_clockwise():
    # An asymmetric 2x3 image: a quarter turn clockwise puts the bottom-left pixel top-left.
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = [[1, 2, 3], [4, 5, 6]]
    r90 = apply("rotate90", img, 0)[..., 0]
    np.testing.assert_array_equal(r90, [[4, 1], [5, 2], [6, 3]])
    r180 = apply("rotate180", img, 0)[..., 0]
    np.testing.assert_array_equal(r180, [[6, 5, 4], [3, 2, 1]])
    r270 = apply("rotate270", img, 0)[..., 0]
    np.testing.assert_array_equal(r270, [[3, 6], [2, 5], [1, 4]])
    for name, k in ROTATIONS.items():
        np.testing.assert_array_equal(apply(name, img, 0), np.rot90(img, k=k))


def test_lowlight_dims_luminance(photo):
    for seed in range(5):
        ratio = _luma(apply("LowLight", photo, seed)) / _luma(photo)
        assert 0.25 <= ratio <= 0.45, ratio


def test_brighten_and_darken_move_luminance(photo):
    for seed in range(5):
        assert _luma(apply("brighten", photo, seed)) > _luma(photo)
        assert _luma(apply("darken", photo, seed)) < _luma(photo)


def test_gray_has_equal_channels(photo):
    out = apply("gray", photo, 0)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_saturation_moves_chroma(photo):
    def chroma(img):
        return float(img.astype(np.int16).std(axis=2).mean())

    for seed in range(5):
        assert chroma(apply("saturate_strengthen", photo, seed)) > chroma(photo)
        assert chroma(apply("saturate_weaken", photo, seed)) < chroma(photo)


def test_super_resolution_keeps_size_and_softens(photo):
    def detail(img):
        return float(np.abs(np.diff(img.astype(np.int16), axis=1)).mean())

    x2, x4 = apply("SRx2", photo, 0), apply("SRx4", photo, 0)
    assert x2.shape == x4.shape == photo.shape
    assert detail(x4) < detail(x2) < detail(photo)


def test_sp_noise_sets_pixels_to_extremes(photo):
    out = apply("SPNoise", photo, 0)
    changed = (out != photo).any(axis=2)
    assert changed.any()
    values = out[changed]
    assert np.isin(values, (0, 255)).all()


def test_color_distortion_permutes_or_clamps_a_channel(photo):
    for seed in range(8):
        out = apply("ColorDistortion", photo, seed)
        shuffled = any(
            np.array_equal(out, photo[..., list(p)])
            for p in ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
        )
        clamped = any(
            np.isin(out[..., c], (0, 255)).all() and out[..., c].min() == out[..., c].max()
            for c in range(3)
        )
        assert shuffled or clamped, f"seed {seed}"


def test_geometric_distortions_keep_the_centre(photo):
    h, w = photo.shape[:2]
    for name in ("Barrel", "Pincushion"):
        out = apply(name, photo, 0)
        centre = np.abs(out[h // 2, w // 2].astype(int) - photo[h // 2, w // 2]).max()
        assert centre <= 2, name


def test_severity_families_cover_their_subtypes(photo):
    # Each severity family draws a sub-type; many seeds should reach every one of them.
    for name, family in degradations.SEVERITY_FAMILIES.items():
        seen = {family.draw(np.random.default_rng(s))[0] for s in range(60)}
        assert seen == set(family.subtypes), name
        severities = {family.draw(np.random.default_rng(s))[1] for s in range(60)}
        assert severities == set(range(1, family.max_severity + 1)), name


def test_unknown_name_lists_known_ones(photo):
    with pytest.raises(KeyError, match="unknown degradation 'snow'.*GaussianBlur"):
        apply("snow", photo, 0)


@pytest.mark.parametrize(
    "bad, what",
    [
        (np.zeros((8, 8), np.uint8), "H x W x 3"),
        (np.zeros((8, 8, 4), np.uint8), "H x W x 3"),
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        ([[[0, 0, 0]]], "numpy"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
    ],
)
def test_bad_image_names_the_degradation(bad, what):
    with pytest.raises(ValueError, match=f"JPEG.*{what}"):
        apply("JPEG", bad, 0)


def test_seed_must_be_int_or_generator(photo):
    with pytest.raises(TypeError, match="seed"):
        apply("JPEG", photo, "0")
