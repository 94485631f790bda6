"""What the four generative stages share: options, loading a diffusers pipeline onto its
device, one seeded generator per image, batched calls, and the CPU-side image helpers.

Batching. A stage's `predict` gets several samples, each wanting several variants; the
(sample, variant) images are flattened and generated `images_per_call` at a time, each
with its own `torch.Generator` seeded from `sample.seed_for(variant)`. Generators live on
the CPU (diffusers draws the noise there and moves it), so a seed gives the same starting
noise on any device.

Precision and device. `dtype: auto` is bfloat16 for FLUX (float16 overflows there) and
float16 for SDXL on a GPU, float32 on the CPU; never float64 (FLUX's 12B parameters alone
would take 96 GB of RAM). The CPU runs a generative stage only when its block says
`device: cpu` (tests, the tiny demo): `device: auto` without a visible GPU is refused, as
an actor that landed on a GPU-less node would otherwise load FLUX on the CPU and crawl.

Determinism. A seed gives the same bytes for the same batch composition. In float32,
oneDNN picks convolution and matmul kernels by batch size and memory layout, which moves
values by ~1e-6 between a batch of 8 and a batch of 1: enough to flip a uint8 value now
and then (docs/annotators-generative.md has the measured rate), as half precision does on
a GPU.

Memory. `vae_slicing` (default on) decodes (and encodes) the images of a call one at a
time: the decode at 1024² is the peak of a call (SDXL's VAE runs in float32), and one
image at a time leaves it one image's worth, the same pixels. `vae_tiling` (off) decodes
in overlapping tiles, for 24 GB cards; the seams are blended, pixels move slightly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from annotators.base import ConfigError
from annotators.models import AUTO, ModelOptions, model_dir, resolve_device, resolve_dtype
from graph200k.shards import encode_image

REFERENCE_SIDE = 448  # style references travel at this side: >= SigLIP's 384, CLIP's 224


@dataclass
class GenerationOptions(ModelOptions):
    steps: int = 28
    guidance: float = 3.5
    resolution: int = 1024  # the generated square's side; outputs go back to the sample's size
    variants: int = 5
    images_per_call: int = 8  # (sample, variant) images per pipeline call
    offload: str = "none"  # none | model (one component on the GPU at a time) | sequential
    vae_slicing: bool = True  # decode the images of a call one at a time (same pixels)
    vae_tiling: bool = False  # decode in tiles (24 GB cards; pixels move slightly)
    jpeg_quality: int = 95


OFFLOADS = ("none", "model", "sequential")
DTYPES = (AUTO, "float32", "float16", "bfloat16")


def check_generation_options(stage: str, o: GenerationOptions, multiple_of: int = 16) -> None:
    """Config errors found from the options alone (in `__init__`, which CPU tasks run too:
    whether a GPU is there is checked in `load`, on the actor that needs it)."""
    if o.variants < 1 or o.steps < 1 or o.images_per_call < 1:
        raise ConfigError(f"stage {stage!r}: variants, steps and images_per_call must be >= 1")
    if o.resolution < multiple_of or o.resolution % multiple_of:
        raise ConfigError(f"stage {stage!r}: resolution {o.resolution} must be a multiple of "
                          f"{multiple_of} (the latent packing needs it)")
    if o.offload not in OFFLOADS:
        raise ConfigError(f"stage {stage!r}: offload {o.offload!r} is not one of {OFFLOADS}")
    if o.dtype not in DTYPES:
        raise ConfigError(f"stage {stage!r}: dtype {o.dtype!r} is not one of {', '.join(DTYPES)}"
                          " (float64 never: FLUX alone would take 96 GB)")


def actor_device(stage: str, o: GenerationOptions):
    """The device `load` puts the pipelines on; a GPU-only option without a GPU, or
    `device: auto` without a GPU, is a ConfigError saying so."""
    device = resolve_device(stage, o.device)
    if o.device == AUTO and device.type != "cuda":
        raise ConfigError(f"stage {stage!r}: device: auto and no CUDA GPU is visible; a "
                          "generative pipeline on the CPU crawls (FLUX: ~1 h per image, "
                          "estimated): give the actor a GPU, or set device: cpu in the stage's "
                          "block to run it on the CPU on purpose (tiny models, tests)")
    if o.offload != "none" and device.type != "cuda":
        raise ConfigError(f"stage {stage!r}: offload: {o.offload} moves components between "
                          "the CPU and a GPU, and no GPU is visible; set offload: none")
    return device


def torch_dtype(stage: str, dtype: str, device, gpu_default: str):
    import torch

    if dtype == AUTO and device.type == "cuda":
        return getattr(torch, gpu_default)
    return resolve_dtype(stage, dtype, device)  # auto on the CPU: float32


def load_pipeline(cls, stage: str, model: str, revision, dtype, **components):
    """`cls.from_pretrained(model)` (a pipeline or a model): a hub id, via the HF cache,
    or a local folder."""
    path = model_dir(stage, model, revision)  # a missing local folder says so itself
    try:
        pipe = cls.from_pretrained(path, revision=revision, dtype=dtype, **components)
    except OSError as e:  # missing files, offline, gated: say how to get them
        raise FileNotFoundError(
            f"stage {stage!r}: cannot load {cls.__name__} from {model} ({type(e).__name__}: "
            f"{str(e)[:200]}). Fetch it once with `huggingface-cli download {model}` (gated "
            "FLUX repos need their licence accepted on the hub first) or point the option at "
            "a local folder") from None
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def place(pipe, stage: str, device, offload: str):
    """Onto the device, or diffusers' CPU offload: `model` keeps one component at a time
    on the GPU (the text encoders, then the denoiser, then the VAE), `sequential` streams
    every layer's weights in (fits a 12B FLUX transformer in 24 GB, several times slower)."""
    if offload != "none" and device.type != "cuda":
        raise ConfigError(f"stage {stage!r}: offload: {offload} needs a GPU")
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def vae_memory(pipe, o: GenerationOptions):
    """The pipeline's VAE set to decode per image (`vae_slicing`) and in tiles
    (`vae_tiling`), as the options say; a pipeline without a VAE is returned as it is."""
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        (vae.enable_slicing if o.vae_slicing else vae.disable_slicing)()
        (vae.enable_tiling if o.vae_tiling else vae.disable_tiling)()
    return pipe


def generators(seeds) -> list:
    import torch

    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def to_uint8(images) -> list:
    """Pipeline output (B x H x W x 3 floats in [0, 1]) -> uint8 images; an image holding
    NaN or inf becomes None (its sample fails, nothing of it is written)."""
    out = []
    for img in np.asarray(images):
        out.append(None if not np.isfinite(img).all()
                   else np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8))
    return out


@dataclass
class Job:
    """One image to generate: sample `index` (in the predict batch), its variant, seed."""

    index: int
    variant: int
    seed: int
    payload: Any = None


def run_jobs(jobs: list[Job], per_call: int, generate: Callable[[list[Job]], list]) -> dict:
    """Generate `per_call` images per call; {(index, variant): uint8 image or None}."""
    done = {}
    for start in range(0, len(jobs), per_call):
        chunk = jobs[start:start + per_call]
        for job, img in zip(chunk, generate(chunk)):
            done[(job.index, job.variant)] = img
    return done


def collect(inputs: list, done: dict, counts: list[int], extra=None) -> list[dict]:
    """One predict output per input: its variants' images, or the reason it failed."""
    out = []
    for i, n in enumerate(counts):
        if isinstance(inputs[i], dict) and inputs[i].get("skip"):
            out.append({"skip": inputs[i]["skip"]})
            continue
        images = [done.get((i, v)) for v in range(n)]
        bad = [v for v, img in enumerate(images) if img is None]
        if bad:
            out.append({"error": f"the generated image of variant {bad[0]} holds NaN or inf "
                                 "(latents diverged); nothing of this sample is written"})
        else:
            out.append({"images": images, **(extra[i] if extra else {})})
    return out


def outcome_images(output: dict) -> list[np.ndarray]:
    """In `encode`: the images of a predict output, or raise its failure / skip reason."""
    from annotators.base import NotApplicable

    if output.get("skip"):
        raise NotApplicable(output["skip"])
    if output.get("error"):
        raise ValueError(output["error"])
    return output["images"]


# -- CPU-side image helpers -------------------------------------------------------------
def fit(img: np.ndarray, h: int, w: int | None = None, nearest: bool = False) -> np.ndarray:
    """Resize to h x w (a square if w is None): area when shrinking, cubic when growing."""
    w = h if w is None else w
    if img.shape[:2] == (h, w):
        return img
    shrink = img.shape[0] * img.shape[1] > h * w
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return cv2.resize(img, (w, h), interpolation=interp)


def cover(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre-crop to the aspect of h x w, then resize: a style reference fills the cell."""
    ih, iw = img.shape[:2]
    scale = max(h / ih, w / iw)
    ch, cw = min(ih, round(h / scale)), min(iw, round(w / scale))
    y, x = (ih - ch) // 2, (iw - cw) // 2
    return fit(np.ascontiguousarray(img[y:y + ch, x:x + cw]), h, w)


def jpeg(img: np.ndarray, h: int, w: int, quality: int) -> bytes:
    return encode_image(fit(img, h, w), "jpg", quality)


def depth_control(sample, side: int) -> np.ndarray:
    """This sample's `depth.png` (8-bit grey relative inverse depth, near bright; an older
    16-bit map reads the same) as the RGB depth image depth ControlNets and FLUX.1-Depth
    take, min-max stretched."""
    from annotators.base import NotApplicable

    data = sample.members.get("depth.png")
    if data is None:
        raise ValueError(f"depth.png is absent from sample {sample.key!r}; run the depth stage")
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError("depth.png does not decode; re-run the depth stage (--force)")
    if raw.ndim == 3:
        raw = raw[..., 0]
    depth = raw.astype(np.float32)
    lo, hi = float(depth.min()), float(depth.max())
    if hi - lo < 1e-6 * max(1.0, hi):
        raise NotApplicable("depth.png is constant: no structure to keep")
    grey = np.round((depth - lo) / (hi - lo) * 255.0).astype(np.uint8)
    return np.repeat(fit(grey, side)[..., None], 3, axis=2)


def prompt_of(sample) -> str:
    from annotators.base import NotApplicable

    text = sample.text("description").strip() or sample.text("item").strip()
    if not text:
        raise NotApplicable("no description (nor item) to prompt with")
    return text


def pil(images) -> list:
    from PIL import Image

    return [Image.fromarray(np.ascontiguousarray(i)) for i in images]


def flux_text(pipe, prompts: list[str], max_sequence_length: int):
    """FLUX's T5 + CLIP embeddings of a batch of prompts (padded to a fixed length, so an
    image's embedding does not depend on the others in its batch)."""
    embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None,
                                           device=pipe._execution_device,
                                           num_images_per_prompt=1,
                                           max_sequence_length=max_sequence_length)
    return embeds, pooled
