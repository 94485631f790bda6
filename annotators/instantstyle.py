"""`instantstyle`: the sample restyled with its content kept (VisualCloze §3.2, InstantStyle).

SDXL with an IP-Adapter whose style reference is injected into one attention block only,
InstantStyle's style block (`{"up": {"block_0": [0.0, 1.0, 0.0]}}`), so the reference's
style arrives without its content; an SDXL ControlNet (depth, or canny edges of the
target) holds the sample's structure, and its description is the prompt. Each of the N
variants draws its reference from the style pool with its own seed and is stored as the
pair `instantstyle_ref.{i}.jpg` + `instantstyle.{i}.jpg`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import cv2

from annotators.base import Annotator, ConfigError, Prepared, Result, Sample
from annotators.diffusion import (REFERENCE_SIDE, GenerationOptions, Job, actor_device,
                                  check_generation_options, collect, cover, depth_control, fit,
                                  generators, jpeg, load_pipeline, outcome_images, pil, place,
                                  prompt_of, run_jobs, to_uint8, torch_dtype,
                                  vae_memory)
from annotators.side_inputs import decode_rgb

STYLE_POOL = "style_pool"
CONTROLS = ("depth", "canny")


@dataclass
class InstantStyleOptions(GenerationOptions):
    reference_side: int = REFERENCE_SIDE  # style references travel (and are encoded) at this side
    model: str = "stabilityai/stable-diffusion-xl-base-1.0"
    controlnet: str = "diffusers/controlnet-depth-sdxl-1.0"
    controlnet_revision: str | None = None
    control: str = "depth"  # depth (this sample's depth.png) | canny (edges of the target)
    controlnet_scale: float = 0.5
    canny_low: int = 100
    canny_high: int = 200
    ip_adapter: str = "h94/IP-Adapter"
    ip_adapter_revision: str | None = None
    ip_adapter_subfolder: str = "sdxl_models"
    ip_adapter_weights: str = "ip-adapter_sdxl.safetensors"
    style_scale: float = 1.0  # the IP-Adapter scale inside InstantStyle's style block
    negative_prompt: str = ""
    steps: int = 30
    guidance: float = 5.0


def style_pool(sample: Sample):
    pool = sample.side.get(STYLE_POOL)
    if pool is None or len(pool) == 0:
        raise ValueError(f"side input {STYLE_POOL!r} is not configured or empty: add it under "
                         "`side_inputs:` in the annotate config (a folder, hub dataset or shards)")
    return pool


def draw_references(sample: Sample, variants: int, side: int):
    """(ids, uint8 references side x side): variant v's reference from seed_for(v)."""
    pool = style_pool(sample)
    ids = [pool.choose(sample.seed_for(v)) for v in range(variants)]
    refs = []
    for i in ids:
        try:
            refs.append(cover(decode_rgb(pool.read(i)), side, side))
        except Exception as e:  # an unreadable pool image fails this sample only
            raise ValueError(f"style reference {i!r} of {STYLE_POOL!r} does not decode "
                             f"({type(e).__name__}: {e})") from None
    return ids, refs


def stored_references(sample: Sample, ids, h: int, w: int, quality: int) -> dict[str, bytes]:
    pool = style_pool(sample)
    return {i: jpeg(cover(decode_rgb(pool.read(i)), h, w), h, w, quality) for i in dict.fromkeys(ids)}


class InstantStyle(Annotator):
    name: ClassVar[str] = "instantstyle"
    produces: ClassVar[tuple[str, ...]] = ("instantstyle",)
    needs: ClassVar[tuple[str, ...]] = ("target", "depth")
    reads: ClassVar[tuple[str, ...]] = ("description", "item")
    side_inputs: ClassVar[tuple[str, ...]] = (STYLE_POOL,)
    requires: ClassVar[tuple[str, ...]] = ("torch", "diffusers", "transformers", "cv2")
    extra: ClassVar[str] = "train"
    Options = InstantStyleOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        o = self.options
        check_generation_options(self.name, o, multiple_of=8)
        if o.control not in CONTROLS:
            raise ConfigError(f"stage {self.name!r}: control {o.control!r} is not one of {CONTROLS}")
        if o.control == "canny":  # edges come from the target: no depth needed
            self.input_members = ("target.jpg",)
        self.output_members = tuple(m for v in range(o.variants)
                                    for m in (f"instantstyle_ref.{v}.jpg", f"instantstyle.{v}.jpg"))
        self.pipe = None

    def load(self) -> None:
        from diffusers import ControlNetModel

        o = self.options
        device = actor_device(self.name, o)
        dtype = torch_dtype(self.name, o.dtype, device, "float16")
        controlnet = load_pipeline(ControlNetModel, self.name, o.controlnet,
                                   o.controlnet_revision, dtype)
        pipe = load_pipeline(per_image_style_sdxl(), self.name, o.model, o.revision, dtype,
                             controlnet=controlnet)
        pipe.load_ip_adapter(o.ip_adapter, subfolder=o.ip_adapter_subfolder,
                             weight_name=o.ip_adapter_weights, revision=o.ip_adapter_revision)
        # InstantStyle: only the style block of the deepest up block sees the reference.
        pipe.set_ip_adapter_scale({"up": {"block_0": [0.0, o.style_scale, 0.0]}})
        self.pipe = place(vae_memory(pipe, o), self.name, device, o.offload)

    def prepare(self, sample: Sample) -> Prepared:
        o = self.options
        target = sample.image("target")
        h, w = target.shape[:2]
        if o.control == "depth":
            control = depth_control(sample, o.resolution)
        else:
            edges = cv2.Canny(target, o.canny_low, o.canny_high)
            control = cv2.cvtColor(fit(edges, o.resolution, nearest=True), cv2.COLOR_GRAY2RGB)
        ids, refs = draw_references(sample, o.variants, o.reference_side)
        seeds = [sample.seed_for(v) for v in range(o.variants)]
        prompt = prompt_of(sample)
        return Prepared({"prompt": prompt, "control": control, "refs": refs, "seeds": seeds},
                        {"size": (h, w), "styles": ids, "seeds": seeds, "prompt": prompt})

    def predict(self, inputs: list) -> list:
        jobs = [Job(i, v, x["seeds"][v]) for i, x in enumerate(inputs) for v in range(len(x["seeds"]))]
        done = run_jobs(jobs, self.options.images_per_call,
                        lambda chunk: self._generate(inputs, chunk))
        return collect(inputs, done, [len(x["seeds"]) for x in inputs])

    def _generate(self, inputs: list, chunk: list[Job]) -> list:
        import torch

        o, pipe = self.options, self.pipe
        refs = pil([inputs[j.index]["refs"][j.variant] for j in chunk])
        with torch.no_grad():
            embeds, negative = pipe.encode_image(refs, pipe._execution_device, 1)
        cfg = o.guidance > 1.0
        stacked = (torch.cat([negative, embeds]) if cfg else embeds)[:, None]
        images = pipe(prompt=[inputs[j.index]["prompt"] for j in chunk],
                      negative_prompt=[o.negative_prompt] * len(chunk) if o.negative_prompt else None,
                      image=pil([inputs[j.index]["control"] for j in chunk]),
                      ip_adapter_image_embeds=[stacked], height=o.resolution, width=o.resolution,
                      num_inference_steps=o.steps, guidance_scale=o.guidance,
                      controlnet_conditioning_scale=o.controlnet_scale,
                      generator=generators(j.seed for j in chunk), output_type="np").images
        return to_uint8(images)

    def encode(self, sample: Sample, context, output) -> Result:
        images = outcome_images(output)
        (h, w), ids, q = context["size"], context["styles"], self.options.jpeg_quality
        refs = stored_references(sample, ids, h, w, q)
        members = {}
        for v, img in enumerate(images):
            members[f"instantstyle_ref.{v}.jpg"] = refs[ids[v]]
            members[f"instantstyle.{v}.jpg"] = jpeg(img, h, w, q)
        return Result(members, {"control": self.options.control, "prompt": context["prompt"],
                                "variants": [{"style": i, "seed": s}
                                             for i, s in zip(ids, context["seeds"])]})


@functools.cache
def per_image_style_sdxl():
    """`StableDiffusionXLControlNetPipeline` whose IP-Adapter embeddings hold one
    reference per image (built on first use: importing this module stays cheap)."""
    from diffusers import StableDiffusionXLControlNetPipeline

    class PerImageStyleSDXL(StableDiffusionXLControlNetPipeline):
        # diffusers repeats the given `ip_adapter_image_embeds` over the whole batch (one
        # reference shared by every prompt); with one row per image, each image would then
        # attend to every reference of its batch (measured: its pixels changed with the
        # batch). Our rows already are (negative rows; positive rows) of the batch.
        def prepare_ip_adapter_image_embeds(self, ip_adapter_image, ip_adapter_image_embeds,
                                            device, num_images_per_prompt,
                                            do_classifier_free_guidance):
            if ip_adapter_image_embeds is None:
                raise ValueError("pass ip_adapter_image_embeds: one row per image")
            return [e.to(device) for e in ip_adapter_image_embeds]

    return PerImageStyleSDXL
