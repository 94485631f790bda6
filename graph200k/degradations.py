"""The 32 degradation node types, computed online from `target` (numpy + OpenCV).

Each degradation is a pure function `(image, rng) -> image`: `image` is uint8 H x W x 3
RGB, every random parameter is drawn from `rng`, and the input is never modified. The
same seed gives the same bytes. Only the rotations change the shape.

The first eleven (blur ... saturate_weaken) are *severity families*: a sub-type and a
severity 1-5 are drawn, and the severity picks the parameter from a table. The tables
are the ones VisualCloze's Graph200K degradations use (they come from the DepictQA
distortion library, which took them from KADID-10K, PieAPP and ImageNet-C); compression
and quantization stop at severity 3 there. The others draw their parameters from the
ranges VisualCloze uses; sizes in pixels are for the 512² Subjects200K panels.

    >>> apply("JPEG", image, seed=0)           # or any np.random.Generator
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from graph200k.nodes import DEGRADATIONS

Degradation = Callable[[np.ndarray, np.random.Generator], np.ndarray]
# A severity sub-type: (image, the severity's table entry, rng) -> image.
SubType = Callable[[np.ndarray, object, np.random.Generator], np.ndarray]

# Degradations without a random parameter: every seed gives the same image.
DETERMINISTIC = frozenset(
    {"SRx2", "SRx4", "gray", "Barrel", "Pincushion", "rotate90", "rotate180", "rotate270"}
)


# --------------------------------------------------------------------------- helpers

def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Round and clip a float image in 0..255 to uint8."""
    x = np.clip(x, 0, 255)
    return np.rint(x, out=x).astype(np.uint8)


def _unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) * np.float32(1 / 255)


def _from_unit(x: np.ndarray) -> np.ndarray:
    return _to_uint8(x * np.float32(255))


def _luma(image_f: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of a float RGB image (the Y of YCrCb and of PIL's "L")."""
    return image_f @ np.array([0.299, 0.587, 0.114], np.float32)


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    k = (x * x + y * y <= radius * radius).astype(np.float32)
    return k / k.sum()


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def _jitter_pixels(image: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Move every pixel to a random neighbour at most `shift` away (glass / jitter blur).

    ImageNet-C swaps pixels one by one in a Python loop (seconds at 512²); sampling each
    output pixel from a random neighbour with one remap gives the same look in ~2 ms.
    """
    h, w = image.shape[:2]
    xs, ys = _grid(h, w)
    dx, dy = rng.integers(-shift, shift + 1, size=(2, h, w), dtype=np.int16)
    return cv2.remap(image, xs + dx, ys + dy, cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_REFLECT_101)


def _encode_decode(image: np.ndarray, ext: str, params: list[int]) -> np.ndarray:
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image[..., ::-1]), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {ext} with {params}")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


# --------------------------------------------------------------------------- blur

def _blur_gaussian(image, sigma, rng):
    return cv2.GaussianBlur(image, (0, 0), sigma)


def _motion_kernel(radius: int, sigma: float, angle_deg: float) -> np.ndarray:
    """A one-sided streak of `radius` px, Gaussian-weighted along its length (ImageNet-C)."""
    size = 2 * radius + 1
    kernel = np.zeros((size, size), np.float32)
    t = np.arange(0, radius + 0.5, 0.5, dtype=np.float32)
    weights = np.exp(-0.5 * (t / sigma) ** 2)
    a = np.deg2rad(angle_deg)
    xs, ys = radius + t * np.cos(a), radius - t * np.sin(a)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, share in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                          (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = np.clip(x0 + dx, 0, size - 1), np.clip(y0 + dy, 0, size - 1)
        np.add.at(kernel, (yi, xi), weights * share)
    return kernel / kernel.sum()


def _blur_motion(image, radius_sigma, rng):
    radius, sigma = radius_sigma
    angle = rng.uniform(-90, 90)
    return cv2.filter2D(image, -1, _motion_kernel(radius, sigma, angle),
                        borderType=cv2.BORDER_REFLECT_101)


def _blur_glass(image, params, rng):
    sigma, shift, iterations = params
    out = cv2.GaussianBlur(image, (0, 0), sigma)
    for _ in range(iterations):
        out = _jitter_pixels(out, shift, rng)
    return cv2.GaussianBlur(out, (0, 0), sigma)


def _blur_lens(image, radius, rng):
    return cv2.filter2D(image, -1, _disk(radius), borderType=cv2.BORDER_REFLECT_101)


def _zoom(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 0, factor)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def _blur_zoom(image, max_factor, rng):
    # ImageNet-C averages the image with zooms 1, 1.02, ... below max_factor.
    factors = np.arange(1, max_factor, 0.02)
    acc = image.astype(np.float32)
    for f in factors:
        acc += _zoom(image, f)
    return _to_uint8(acc / (len(factors) + 1))


def _blur_jitter(image, shift, rng):
    return _jitter_pixels(image, shift, rng)


# --------------------------------------------------------------------------- compression

def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    return _encode_decode(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)])


def _compression_jpeg(image, quality, rng):
    return _jpeg(image, quality)


def _compression_jpeg2000(image, rate_x1000, rng):
    # OpenJPEG through OpenCV: 67-70 ms per 512² image (measured), the one sub-type over
    # the 30 ms budget. A home-made wavelet quantizer was tried: 50 ms in numpy and its
    # PSNR 5 dB off target, so the real codec stays.
    return _encode_decode(image, ".jp2", [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, rate_x1000])


# --------------------------------------------------------------------------- pixel / tone

def _pixelate(image, scale, rng):
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, int(w * scale)), max(1, int(h * scale))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _oversharpen(image, amount, rng):
    # Unsharp mask with a 5x5 Gaussian, pushed far beyond a pleasant amount.
    blurred = cv2.GaussianBlur(image, (5, 5), 0)
    return cv2.addWeighted(image, 1 + amount, blurred, -amount, 0)


def _contrast_scale(image, factor, rng):
    # Scale distances to the mean grey level (what PIL's ImageEnhance.Contrast does).
    x = image.astype(np.float32)
    mean = float(_luma(x).mean())
    return _to_uint8(mean + factor * (x - mean))


def _contrast_stretch(image, power, rng):
    # Sigmoid around each channel's mean, 1 / (1 + (mean / x)^p), written x^p / (x^p + m^p)
    # so that black pixels give 0 instead of an overflow.
    x = _unit(image)
    mean = x.mean(axis=(0, 1), keepdims=True)
    xp = x ** np.float32(power)
    return _from_unit(xp / (xp + mean ** np.float32(power) + np.float32(1e-12)))


# --------------------------------------------------------------------------- quantization

def _otsu_lut(hist: np.ndarray, classes: int) -> np.ndarray:
    """Multi-level Otsu: the split of 0..255 into `classes` runs with least within-class
    variance, each value mapped to its class mean.

    skimage's threshold_multiotsu tries every combination (C(255, 14) for 15 classes);
    this is the exact dynamic programme over run boundaries, O(classes x 256²).
    """
    v = np.arange(256, dtype=np.float64)
    p0 = np.concatenate([[0], np.cumsum(hist)])
    p1 = np.concatenate([[0], np.cumsum(hist * v)])
    p2 = np.concatenate([[0], np.cumsum(hist * v * v)])
    i, j = np.triu_indices(256)
    n, s = p0[j + 1] - p0[i], p1[j + 1] - p1[i]
    cost = np.full((256, 256), np.inf)
    cost[i, j] = (p2[j + 1] - p2[i]) - np.divide(s * s, n, out=np.zeros_like(s), where=n > 0)

    best = cost[0].copy()  # best[j]: least cost of values 0..j in k classes
    starts = []
    for _ in range(classes - 1):
        # run i..j closes the partition: previous classes cover 0..i-1
        total = best[:-1, None] + cost[1:, :]
        arg = np.argmin(total, axis=0)
        best = np.concatenate([[np.inf], total[arg, np.arange(256)][1:]])
        starts.append(arg + 1)

    lut = np.empty(256, np.float64)
    end = 255
    for start_of in reversed(starts):
        start = int(start_of[end])
        lut[start:end + 1] = _run_mean(p0, p1, start, end)
        end = start - 1
    lut[:end + 1] = _run_mean(p0, p1, 0, end)
    return _to_uint8(lut)


def _run_mean(p0, p1, lo, hi) -> float:
    n = p0[hi + 1] - p0[lo]
    return (p1[hi + 1] - p1[lo]) / n if n > 0 else (lo + hi) / 2


def _median_cut_lut(hist: np.ndarray, colors: int) -> np.ndarray:
    """1-D median cut: split the most populated run of values at its median until there
    are `colors` runs, each value mapped to its run's mean."""
    v = np.arange(256, dtype=np.float64)
    p0 = np.concatenate([[0], np.cumsum(hist)])
    p1 = np.concatenate([[0], np.cumsum(hist * v)])
    runs = [(0, 255)]
    while len(runs) < colors:
        splittable = [r for r in runs if np.count_nonzero(hist[r[0]:r[1] + 1]) > 1]
        if not splittable:
            break
        lo, hi = max(splittable, key=lambda r: (p0[r[1] + 1] - p0[r[0]], -r[0]))
        half = p0[lo] + (p0[hi + 1] - p0[lo]) / 2
        occupied = np.flatnonzero(hist[lo:hi + 1]) + lo
        mid = int(np.searchsorted(p0[1:], half))  # first value whose cumulative count >= half
        mid = int(np.clip(mid, occupied[0], occupied[-2]))
        runs.remove((lo, hi))
        runs += [(lo, mid), (mid + 1, hi)]
    lut = np.empty(256, np.float64)
    for lo, hi in runs:
        lut[lo:hi + 1] = _run_mean(p0, p1, lo, hi)
    return _to_uint8(lut)


def _per_channel_lut(image, make_lut, levels):
    out = np.empty_like(image)
    for c in range(3):
        hist = np.bincount(image[..., c].ravel(), minlength=256).astype(np.float64)
        out[..., c] = cv2.LUT(image[..., c], make_lut(hist, levels))
    return out


def _quantize_otsu(image, classes, rng):
    return _per_channel_lut(image, _otsu_lut, classes)


def _quantize_median(image, colors, rng):
    return _per_channel_lut(image, _median_cut_lut, colors)


def _quantize_histogram(image, levels, rng):
    # Histogram-equalised quantization: `levels` bins of equal population (over all
    # channels), spread evenly over 0..255.
    hist = np.bincount(image.ravel(), minlength=256).astype(np.float64)
    cdf = np.cumsum(hist) / hist.sum()
    centre = cdf - hist / hist.sum() / 2
    level = np.minimum(np.floor(centre * levels), levels - 1)
    lut = _to_uint8(level * (255 / (levels - 1)))
    return cv2.LUT(image, lut)


# --------------------------------------------------------------------------- brightness

def _map_value(image: np.ndarray, curve) -> np.ndarray:
    """Apply `curve` to HSV's V = max(R, G, B) with hue and saturation kept.

    At fixed H and S the three channels are proportional to V, so scaling RGB by V'/V is
    the HSV round trip without OpenCV's 8-bit hue quantization.
    """
    x = _unit(image)
    v = x.max(axis=2)
    v_new = curve(v)
    ratio = np.divide(v_new, v, out=np.zeros_like(v), where=v > 0)
    out = x * ratio[..., None]
    black = v == 0
    out[black] = v_new[black][:, None]  # black has no hue: it turns grey
    return _from_unit(out)


def _shift_hsv(image, shift, rng):
    return _map_value(image, lambda v: v + np.float32(shift))


def _gamma_hsv(image, gamma, rng):
    return _map_value(image, lambda v: v ** np.float32(gamma))


def _shift_rgb(image, shift, rng):
    return _from_unit(_unit(image) + np.float32(shift))


def _gamma_rgb(image, gamma, rng):
    return cv2.LUT(image, _from_unit(np.linspace(0, 1, 256, dtype=np.float32) ** gamma))


def _negate(sub: SubType) -> SubType:
    return lambda image, value, rng: sub(image, -value, rng)


# --------------------------------------------------------------------------- saturation

def _saturate_hsv(image, scale, rng):
    # At fixed H and V each channel sits at V - S * (something hue-dependent), so scaling
    # S scales every channel's distance to V. S is capped at 1, as HSV does.
    x = _unit(image)
    v = x.max(axis=2, keepdims=True)
    spread = v - x.min(axis=2, keepdims=True)  # = S * V
    cap = np.divide(v, spread, out=np.full_like(v, np.inf), where=spread > 0)
    k = np.minimum(np.float32(scale), cap)
    return _from_unit(v - (v - x) * k)


def _saturate_ycrcb(image, scale, rng):
    # Scaling Cr and Cb around 128 with Y kept is scaling RGB's distance to its luma.
    x = image.astype(np.float32)
    y = _luma(x)[..., None]
    return _to_uint8(y + np.float32(scale) * (x - y))


# --------------------------------------------------------------------------- families

@dataclass(frozen=True)
class SeverityFamily:
    """A degradation drawn as a uniform sub-type, then a uniform severity 1..max_severity;
    the severity indexes the sub-type's parameter table."""

    subtypes: dict[str, tuple[SubType, tuple]]
    max_severity: int = 5

    def draw(self, rng: np.random.Generator) -> tuple[str, int]:
        subtype = _choice(rng, list(self.subtypes))
        return subtype, int(rng.integers(1, self.max_severity + 1))

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        subtype, severity = self.draw(rng)
        func, table = self.subtypes[subtype]
        return func(image, table[severity - 1], rng)


SEVERITY_FAMILIES: dict[str, SeverityFamily] = {
    "blur": SeverityFamily({
        "gaussian": (_blur_gaussian, (1, 2, 3, 4, 5)),
        "motion": (_blur_motion, ((5, 3), (10, 5), (15, 7), (15, 9), (20, 12))),
        "glass": (_blur_glass, ((0.7, 1, 1), (0.9, 2, 1), (1.2, 2, 2), (1.4, 3, 2), (1.6, 4, 2))),
        "lens": (_blur_lens, (2, 3, 4, 6, 8)),
        "zoom": (_blur_zoom, (1.03, 1.06, 1.10, 1.15, 1.21)),
        "jitter": (_blur_jitter, (1, 2, 3, 4, 5)),
    }),
    "compression": SeverityFamily({
        "jpeg": (_compression_jpeg, (25, 18, 12, 8, 5)),
        # The reference asks OpenJPEG for 29 / 27.5 / 26 dB PSNR; OpenCV only takes a rate
        # (x1000), so these give about those PSNRs on a 512² photo (measured).
        "jpeg2000": (_compression_jpeg2000, (24, 17, 12, 9, 7)),
    }, max_severity=3),
    "pixelate": SeverityFamily({"box": (_pixelate, (0.5, 0.4, 0.3, 0.25, 0.2))}),
    "oversharpen": SeverityFamily({"unsharp": (_oversharpen, (2, 2.8, 4, 6, 8))}),
    "contrast_strengthen": SeverityFamily({
        "scale": (_contrast_scale, (1.4, 1.7, 2.1, 2.6, 4.0)),
        "stretch": (_contrast_stretch, (2.0, 4.0, 6.0, 8.0, 10.0)),
    }),
    "contrast_weaken": SeverityFamily({
        "scale": (_contrast_scale, (0.75, 0.6, 0.45, 0.3, 0.2)),
        "stretch": (_contrast_stretch, (1.0, 0.9, 0.8, 0.6, 0.4)),
    }),
    "quantization": SeverityFamily({
        "otsu": (_quantize_otsu, (15, 11, 8, 5, 3)),
        "median": (_quantize_median, (20, 15, 10, 6, 3)),
        "histogram": (_quantize_histogram, (24, 16, 8, 6, 4)),
    }, max_severity=3),
    "brighten": SeverityFamily({
        "shift_hsv": (_shift_hsv, (0.1, 0.2, 0.3, 0.4, 0.5)),
        "shift_rgb": (_shift_rgb, (0.1, 0.15, 0.2, 0.27, 0.35)),
        "gamma_hsv": (_gamma_hsv, (0.7, 0.58, 0.47, 0.36, 0.25)),
        "gamma_rgb": (_gamma_rgb, (0.8, 0.7, 0.6, 0.45, 0.3)),
    }),
    "darken": SeverityFamily({
        "shift_hsv": (_negate(_shift_hsv), (0.1, 0.2, 0.3, 0.4, 0.5)),
        "shift_rgb": (_negate(_shift_rgb), (0.1, 0.15, 0.2, 0.27, 0.35)),
        "gamma_hsv": (_gamma_hsv, (1.5, 1.8, 2.2, 2.7, 3.5)),
        "gamma_rgb": (_gamma_rgb, (1.4, 1.7, 2.1, 2.6, 3.2)),
    }),
    "saturate_strengthen": SeverityFamily({
        "hsv": (_saturate_hsv, (3.0, 6.0, 12.0, 20.0, 64.0)),
        "ycrcb": (_saturate_ycrcb, (2.0, 3.0, 5.0, 8.0, 16.0)),
    }),
    "saturate_weaken": SeverityFamily({
        "hsv": (_saturate_hsv, (0.7, 0.55, 0.4, 0.2, 0.0)),
        "ycrcb": (_saturate_ycrcb, (0.6, 0.4, 0.2, 0.1, 0.0)),
    }),
}


# --------------------------------------------------------------------------- restoration set

def _resample(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w / factor)), max(1, round(h / factor))),
                       interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def sr_x2(image, rng):
    return _resample(image, 2)


def sr_x4(image, rng):
    return _resample(image, 4)


def gaussian_blur(image, rng):
    return cv2.GaussianBlur(image, (15, 15), rng.uniform(2, 4))


def gaussian_noise(image, rng):
    level = rng.uniform(10, 50)  # std in 0..255 units
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(level)
    return _to_uint8(image + noise)


def poisson_noise(image, rng):
    # Shot noise with a white pixel collecting `peak` photons. Sampled with the Gaussian
    # of the same variance (Foi et al. 2008's heteroscedastic model): exact Poisson
    # sampling measured 29 ms at 512², this 9 ms.
    peak = np.float32(np.exp(rng.uniform(np.log(20), np.log(200))))
    x = _unit(image)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    return _from_unit(x + np.sqrt(x / peak) * noise)


def salt_and_pepper(image, rng):
    amount = rng.uniform(0.02, 0.1)
    u = rng.random(image.shape[:2], dtype=np.float32)
    out = image.copy()
    out[u < amount / 2] = 0
    out[(u >= amount / 2) & (u < amount)] = 255
    return out


# Colour filter layout (top-left 2x2, row-major) -> the OpenCV code that demosaics it.
# OpenCV names Bayer patterns from the second row; measured on a photo.
_BAYER = {
    "RGGB": cv2.COLOR_BayerBG2RGB, "BGGR": cv2.COLOR_BayerRG2RGB,
    "GRBG": cv2.COLOR_BayerGB2RGB, "GBRG": cv2.COLOR_BayerGR2RGB,
}
_BAYER_EDGE_AWARE = {
    "RGGB": cv2.COLOR_BayerBG2RGB_EA, "BGGR": cv2.COLOR_BayerRG2RGB_EA,
    "GRBG": cv2.COLOR_BayerGB2RGB_EA, "GBRG": cv2.COLOR_BayerGR2RGB_EA,
}


def mosaic(image, rng):
    layout = _choice(rng, list(_BAYER))
    codes = _choice(rng, (_BAYER, _BAYER_EDGE_AWARE))
    channel = {"R": 0, "G": 1, "B": 2}
    cfa = np.empty(image.shape[:2], np.uint8)
    for (dy, dx), colour in zip(((0, 0), (0, 1), (1, 0), (1, 1)), layout):
        cfa[dy::2, dx::2] = image[dy::2, dx::2, channel[colour]]
    return cv2.cvtColor(cfa, codes[layout])


def jpeg(image, rng):
    return _jpeg(image, int(rng.integers(10, 41)))


def low_light(image, rng):
    return _to_uint8(image * np.float32(rng.uniform(0.3, 0.4)))


def gray(image, rng):
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


_SHUFFLES = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def color_distortion(image, rng):
    if rng.random() < 0.5:
        return np.ascontiguousarray(image[..., list(_choice(rng, _SHUFFLES))])
    out = image.copy()
    out[..., int(rng.integers(3))] = _choice(rng, (0, 255))
    return out


def inpainting(image, rng):
    # White strokes over the photo, the holes the model must fill.
    h, w = image.shape[:2]
    out = image.copy()
    for _ in range(int(rng.integers(20, 51))):
        x0, x1 = rng.integers(0, w, size=2)
        y0, y1 = rng.integers(0, h, size=2)
        thickness = int(rng.integers(10, 21))
        cv2.line(out, (int(x0), int(y0)), (int(x1), int(y1)), (255, 255, 255), thickness)
    return out


def rain(image, rng):
    # Sparse drops smeared into slanted streaks, screen-blended so they only brighten.
    h, w = image.shape[:2]
    drops = (rng.random((h, w), dtype=np.float32) < rng.uniform(0.002, 0.01)).astype(np.float32)
    length = int(rng.integers(15, 36))
    angle = 90 + rng.uniform(-20, 20)  # degrees from the x axis: near vertical
    streaks = cv2.filter2D(drops, -1, _line_kernel(length, angle))
    if rng.random() < 0.5:
        streaks = cv2.dilate(streaks, np.ones((1, 2), np.uint8))
    streaks = np.clip(streaks * np.float32(length * rng.uniform(0.5, 0.9)), 0, 1)[..., None]
    x = _unit(image)
    return _from_unit(1 - (1 - x) * (1 - streaks))


def _line_kernel(length: int, angle_deg: float) -> np.ndarray:
    size = length | 1
    kernel = np.zeros((size, size), np.float32)
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    half = (size - 1) / 2
    p0 = (round(half - c * half), round(half + s * half))
    p1 = (round(half + c * half), round(half - s * half))
    cv2.line(kernel, p0, p1, 1.0, 1, cv2.LINE_AA)
    return kernel / kernel.sum()


def defocus(image, rng):
    # ImageNet-C defocus: a disk of radius 3-10 px, then a slight Gaussian against aliasing.
    radius = _choice(rng, (3, 4, 6, 8, 10))
    out = cv2.filter2D(image, -1, _disk(radius), borderType=cv2.BORDER_REFLECT_101)
    return cv2.GaussianBlur(out, (0, 0), rng.uniform(0.1, 0.5))


def _radial(image: np.ndarray, k1: float, k2: float) -> np.ndarray:
    """Brown-Conrady radial distortion: each pixel samples the source at r(1 + k1 r² + k2 r⁴),
    r normalised to 1 at the middle of the edges. k > 0 is barrel, k < 0 pincushion."""
    h, w = image.shape[:2]
    xs, ys = _grid(h, w)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    scale = np.float32(max(cx, cy, 1))
    x, y = (xs - cx) / scale, (ys - cy) / scale
    r2 = x * x + y * y
    f = 1 + np.float32(k1) * r2 + np.float32(k2) * r2 * r2
    return cv2.remap(image, x * f * scale + cx, y * f * scale + cy, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def barrel(image, rng):
    return _radial(image, 0.1, 0.05)


def pincushion(image, rng):
    return _radial(image, -0.1, -0.05)


def _smooth_field(shape, sigma: float, rng) -> np.ndarray:
    """Random noise smoothed at scale `sigma` px, normalised to unit standard deviation."""
    field = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), sigma)
    return field / np.float32(max(float(field.std()), 1e-6))


def elastic(image, rng):
    # Smooth random displacements (Simard et al. 2003): 6-12 px correlation, 3-8 px amplitude.
    h, w = image.shape[:2]
    sigma, amplitude = rng.uniform(6, 12), np.float32(rng.uniform(3, 8))
    xs, ys = _grid(h, w)
    dx = _smooth_field((h, w), sigma, rng) * amplitude
    dy = _smooth_field((h, w), sigma, rng) * amplitude
    return cv2.remap(image, xs + dx, ys + dy, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101)


def _value_noise(h: int, w: int, cell: int, rng) -> np.ndarray:
    coarse = rng.random((max(2, h // cell), max(2, w // cell)), dtype=np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def frost_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An ice layer in 0..1, H x W x 3: ridged fractal noise for the veins of ice plus
    short bright needles for the crystals, tinted slightly blue. Made in code, no files."""
    noise = sum(0.5 ** o * _value_noise(h, w, 64 >> o, rng) for o in range(5)) / 1.9375
    veins = (1 - np.abs(2 * noise - 1)) ** 6
    needles = np.zeros((h, w), np.float32)
    count = max(1, h * w // 1500)
    starts = rng.random((count, 2)) * (w, h)
    angles = rng.uniform(0, np.pi, count)
    lengths = rng.uniform(3, 15, count)
    for (x, y), a, n in zip(starts, angles, lengths):
        end = (int(x + n * np.cos(a)), int(y + n * np.sin(a)))
        cv2.line(needles, (int(x), int(y)), end, 1.0, 1, cv2.LINE_AA)
    needles = cv2.GaussianBlur(needles, (0, 0), 0.7)
    ice = np.clip(0.8 * veins + 0.6 * needles + 0.25 * _value_noise(h, w, 4, rng), 0, 1)
    return ice[..., None] * np.array([0.86, 0.93, 1.0], np.float32)


def frost(image, rng):
    # ImageNet-C's blend, a * image + b * frost, with (a, b) spanning its severities.
    h, w = image.shape[:2]
    a, b = np.float32(rng.uniform(0.6, 0.9)), np.float32(rng.uniform(0.4, 0.75))
    behind = cv2.GaussianBlur(_unit(image), (0, 0), 1.0)  # ice scatters the light
    return _from_unit(a * behind + b * frost_texture(h, w, rng))


def rotate90(image, rng):
    return np.ascontiguousarray(np.rot90(image, k=-1))  # clockwise


def rotate180(image, rng):
    return np.ascontiguousarray(np.rot90(image, k=2))


def rotate270(image, rng):
    return np.ascontiguousarray(np.rot90(image, k=1))  # 270 clockwise = 90 counter-clockwise


_FUNCS: dict[str, Degradation] = {
    **SEVERITY_FAMILIES,
    "SRx2": sr_x2, "SRx4": sr_x4, "GaussianBlur": gaussian_blur,
    "GaussianNoise": gaussian_noise, "PoissonNoise": poisson_noise, "SPNoise": salt_and_pepper,
    "mosaic": mosaic, "JPEG": jpeg, "LowLight": low_light, "gray": gray,
    "ColorDistortion": color_distortion, "Inpainting": inpainting, "Rain": rain,
    "Defocus": defocus, "Barrel": barrel, "Pincushion": pincushion, "Elastic": elastic,
    "Frost": frost, "rotate90": rotate90, "rotate180": rotate180, "rotate270": rotate270,
}
# In the order of graph200k.nodes.DEGRADATIONS; a missing one fails at import.
DEGRADATION_FUNCS: dict[str, Degradation] = {name: _FUNCS[name] for name in DEGRADATIONS}
assert len(DEGRADATION_FUNCS) == len(_FUNCS), sorted(set(_FUNCS) - set(DEGRADATIONS))


# --------------------------------------------------------------------------- entry point

def _check_image(name: str, image) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"degradation {name!r} takes a numpy uint8 H x W x 3 RGB array, "
                         f"got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"degradation {name!r} takes an H x W x 3 RGB image, got shape "
                         f"{image.shape}; convert grey or RGBA images to RGB first")
    if image.dtype != np.uint8:
        raise ValueError(f"degradation {name!r} takes a uint8 image (0..255), got {image.dtype}; "
                         "convert with np.clip(x, 0, 255).astype(np.uint8)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"degradation {name!r} got an empty image of shape {image.shape}")


def _as_rng(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, (int, np.integer)) and not isinstance(seed_or_rng, bool):
        return np.random.default_rng(int(seed_or_rng))
    raise TypeError(f"seed_or_rng must be an int seed or a np.random.Generator, "
                    f"got {type(seed_or_rng).__name__}")


def apply(name: str, image: np.ndarray, seed_or_rng) -> np.ndarray:
    """Degrade `image` (uint8 H x W x 3 RGB) with the degradation node type `name`."""
    try:
        func = DEGRADATION_FUNCS[name]
    except KeyError:
        raise KeyError(f"unknown degradation {name!r}; known degradations: "
                       f"{', '.join(DEGRADATIONS)}") from None
    _check_image(name, image)
    return func(image, _as_rng(seed_or_rng))
