"""`depthedit`: the subject replaced and the background changed (VisualCloze §3.2).

The paper's background-variant edit is its background-invariant one (`filledit`) with one
step changed. The same first steps: a new subject and the caption rewritten for it
(Qwen2-VL, or without a VLM another Subjects200K item of the same category with its own
description). The last step, instead of FLUX.1-Fill inpainting the subject's mask: FLUX.1
Redux conditioned on depth plus the modified caption, i.e. FLUX.1-Depth-dev
(`FluxControlPipeline`) on this sample's depth map, prompted with the T5 tokens of the
modified caption followed by FLUX.1-Redux-dev's tokens of the sample's image (the only
image the pipeline has at that step; the paper names none). Nothing is pasted back: the
layout (depth) stays, the subject follows the caption, the rest of the image is
regenerated. `redux_model: null` drops the Redux tokens (depth + caption alone).
One image by default (Graph200K stores one `DepthEdit`): `depthedit.0.jpg`; the new
subject and caption are in the meta entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from annotators.base import Annotator, ConfigError, NotApplicable, Prepared, Result, Sample
from annotators.diffusion import (REFERENCE_SIDE, GenerationOptions, Job, actor_device,
                                  check_generation_options, depth_control, fit, flux_text,
                                  generators, jpeg, load_pipeline, outcome_images, pil, place,
                                  to_uint8, torch_dtype, vae_memory)
from annotators.filledit import SUBJECT_POOL, same_category_edits
from annotators.reduxstyle import redux_prompt_embeds
from annotators.rewrite import FILL, VLMOptions, VLMRewriter, predict_edits, rewrite_prompt

REWRITES = ("vlm", "same_category")


@dataclass
class DepthEditOptions(VLMOptions, GenerationOptions):
    model: str = "black-forest-labs/FLUX.1-Depth-dev"
    redux_model: str | None = "black-forest-labs/FLUX.1-Redux-dev"  # null: no Redux tokens
    redux_revision: str | None = None
    reference_side: int = REFERENCE_SIDE  # the sample's image travels to Redux at this side
    prompt_embeds_scale: float = 1.0  # FluxPriorReduxPipeline's scales
    pooled_prompt_embeds_scale: float = 1.0
    rewrite: str = "vlm"  # vlm (Qwen2-VL: new subject + caption) | same_category (subject_pool)
    variants: int = 1
    max_sequence_length: int = 512
    steps: int = 28
    guidance: float = 10.0  # FLUX.1-Depth-dev's recommended guidance


class DepthEdit(Annotator):
    name: ClassVar[str] = "depthedit"
    produces: ClassVar[tuple[str, ...]] = ("depthedit",)
    needs: ClassVar[tuple[str, ...]] = ("target", "depth")
    reads: ClassVar[tuple[str, ...]] = ("description", "item", "category")
    side_inputs: ClassVar[tuple[str, ...]] = (SUBJECT_POOL,)
    requires: ClassVar[tuple[str, ...]] = ("torch", "diffusers", "transformers", "cv2")
    extra: ClassVar[str] = "train"
    Options = DepthEditOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        o = self.options
        check_generation_options(self.name, o)
        if o.rewrite not in REWRITES:
            raise ConfigError(f"stage {self.name!r}: rewrite {o.rewrite!r} is not one of {REWRITES}")
        self.output_members = tuple(f"depthedit.{v}.jpg" for v in range(o.variants))
        if o.rewrite != "same_category":  # only that rewrite draws from the subject pool
            self.side_inputs = ()
        self.pipe = self.redux = self.rewriter = None

    def load(self) -> None:
        from diffusers import FluxControlPipeline, FluxPriorReduxPipeline

        o = self.options
        device = actor_device(self.name, o)
        dtype = torch_dtype(self.name, o.dtype, device, "bfloat16")
        self.pipe = place(vae_memory(load_pipeline(FluxControlPipeline, self.name, o.model,
                                                   o.revision, dtype), o),
                          self.name, device, o.offload)
        if o.redux_model:
            self.redux = place(load_pipeline(FluxPriorReduxPipeline, self.name, o.redux_model,
                                             o.redux_revision, dtype), self.name, device, o.offload)
        if o.rewrite == "vlm":
            self.rewriter = VLMRewriter(self.name, o.rewrite_model, o.rewrite_revision, device,
                                        dtype, o.rewrite_max_new_tokens,
                                        offload=o.offload != "none",
                                        batching=o.rewrite_batching)

    def prepare(self, sample: Sample) -> Prepared:
        o = self.options
        target = sample.image("target")
        h, w = target.shape[:2]
        item = sample.text("item").strip() or "the main subject"
        x = {"control": depth_control(sample, o.resolution), "item": item,
             "image": fit(target, o.reference_side),
             "seeds": [sample.seed_for(v) for v in range(o.variants)]}
        if o.rewrite == "same_category":
            x["edits"] = same_category_edits(sample, o.variants)
        else:
            description = sample.text("description").strip()
            if not description:
                raise NotApplicable("no description for the VLM to rewrite")
            x["rewrite_prompt"] = rewrite_prompt(FILL, item, description, o.variants)
        return Prepared(x, {"size": (h, w)})

    def predict(self, inputs: list) -> list:
        return predict_edits(self, inputs)

    def prompt_embeds(self, captions: list[str], images: list):
        """The modified captions' T5 tokens, followed by the Redux tokens of the images."""
        o = self.options
        if self.redux is None:
            return flux_text(self.pipe, captions, o.max_sequence_length)
        return redux_prompt_embeds(self.pipe, self.redux, captions, images,
                                   o.max_sequence_length, True, o.prompt_embeds_scale,
                                   o.pooled_prompt_embeds_scale)

    def _generate(self, inputs: list, chunk: list[Job]) -> list:
        o = self.options
        embeds, pooled = self.prompt_embeds([j.payload["caption"] for j in chunk],
                                            [inputs[j.index]["image"] for j in chunk])
        images = self.pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                           control_image=pil([inputs[j.index]["control"] for j in chunk]),
                           height=o.resolution, width=o.resolution, num_inference_steps=o.steps,
                           guidance_scale=o.guidance, generator=generators(j.seed for j in chunk),
                           output_type="np").images
        return to_uint8(images)

    def encode(self, sample: Sample, context, output) -> Result:
        images = outcome_images(output)
        h, w = context["size"]
        members = {f"depthedit.{v}.jpg": jpeg(img, h, w, self.options.jpeg_quality)
                   for v, img in enumerate(images)}
        seeds = [sample.seed_for(v) for v in range(len(images))]
        return Result(members, {"rewrite": self.options.rewrite,
                                "redux": "target" if self.options.redux_model else None,
                                "variants": [{**e, "seed": s}
                                             for e, s in zip(output["edits"], seeds)]})
