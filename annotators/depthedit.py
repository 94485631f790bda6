"""`depthedit`: the layout kept, the surroundings changed (VisualCloze §3.2).

FLUX.1-Depth-dev (`FluxControlPipeline`) regenerates the image from this sample's depth
map with a new caption: Qwen2-VL's rewrite placing the subject in other surroundings
(the paper), or, without a VLM, the subject in a scene drawn from `scenes`. We read the
paper's depth edit as depth + text only: a Redux embedding of the sample itself would pull
its old background back into the image, which this edit exists to change. One image by
default (`depthedit.0.jpg`); the caption is in the meta entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from annotators.base import Annotator, ConfigError, NotApplicable, Prepared, Result, Sample
from annotators.diffusion import (GenerationOptions, Job, actor_device,
                                  check_generation_options, depth_control, generators, jpeg,
                                  load_pipeline, outcome_images, pil, place, to_uint8,
                                  torch_dtype)
from annotators.rewrite import (DEFAULT_SCENES, SCENE, VLMOptions, VLMRewriter, predict_edits,
                                rewrite_prompt, scene_captions)

REWRITES = ("vlm", "scenes")


@dataclass
class DepthEditOptions(VLMOptions, GenerationOptions):
    model: str = "black-forest-labs/FLUX.1-Depth-dev"
    rewrite: str = "vlm"  # vlm | scenes (the subject placed in a scene drawn from `scenes`)
    scenes: list = field(default_factory=lambda: list(DEFAULT_SCENES))
    variants: int = 1
    max_sequence_length: int = 512
    steps: int = 28
    guidance: float = 10.0  # FLUX.1-Depth-dev's recommended guidance


class DepthEdit(Annotator):
    name: ClassVar[str] = "depthedit"
    produces: ClassVar[tuple[str, ...]] = ("depthedit",)
    needs: ClassVar[tuple[str, ...]] = ("target", "depth")
    reads: ClassVar[tuple[str, ...]] = ("description", "item")
    requires: ClassVar[tuple[str, ...]] = ("torch", "diffusers", "transformers", "cv2")
    extra: ClassVar[str] = "train"
    Options = DepthEditOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        o = self.options
        check_generation_options(self.name, o)
        if o.rewrite not in REWRITES:
            raise ConfigError(f"stage {self.name!r}: rewrite {o.rewrite!r} is not one of {REWRITES}")
        if o.rewrite == "scenes" and not (o.scenes and all(isinstance(s, str) and s.strip()
                                                            for s in o.scenes)):
            raise ConfigError(f"stage {self.name!r}: `scenes` must be a list of phrases")
        self.output_members = tuple(f"depthedit.{v}.jpg" for v in range(o.variants))
        self.pipe = self.rewriter = None

    def load(self) -> None:
        from diffusers import FluxControlPipeline

        o = self.options
        device = actor_device(self.name, o)
        dtype = torch_dtype(self.name, o.dtype, device, "bfloat16")
        self.pipe = place(load_pipeline(FluxControlPipeline, self.name, o.model, o.revision, dtype),
                          self.name, device, o.offload)
        if o.rewrite == "vlm":
            self.rewriter = VLMRewriter(self.name, o.rewrite_model, o.rewrite_revision, device,
                                        dtype, o.rewrite_max_new_tokens,
                                        offload=o.offload != "none",
                                        batching=o.rewrite_batching)

    def prepare(self, sample: Sample) -> Prepared:
        o = self.options
        h, w = sample.image("target").shape[:2]
        item = sample.text("item").strip()
        x = {"control": depth_control(sample, o.resolution), "item": item,
             "seeds": [sample.seed_for(v) for v in range(o.variants)]}
        if o.rewrite == "scenes":
            if not item:
                raise NotApplicable("no item in meta.json to place in a new scene")
            x["edits"] = scene_captions(item, o.scenes, sample.rng(0), o.variants)
        else:
            description = sample.text("description").strip()
            if not description:
                raise NotApplicable("no description for the VLM to rewrite")
            x["rewrite_prompt"] = rewrite_prompt(SCENE, item or "the main subject", description,
                                                 o.variants)
        return Prepared(x, {"size": (h, w)})

    def predict(self, inputs: list) -> list:
        return predict_edits(self, inputs, keep_subject=True)

    def _generate(self, inputs: list, chunk: list[Job]) -> list:
        o = self.options
        images = self.pipe(prompt=[j.payload["caption"] for j in chunk],
                           control_image=pil([inputs[j.index]["control"] for j in chunk]),
                           height=o.resolution, width=o.resolution, num_inference_steps=o.steps,
                           guidance_scale=o.guidance, max_sequence_length=o.max_sequence_length,
                           generator=generators(j.seed for j in chunk), output_type="np").images
        return to_uint8(images)

    def encode(self, sample: Sample, context, output) -> Result:
        images = outcome_images(output)
        h, w = context["size"]
        members = {f"depthedit.{v}.jpg": jpeg(img, h, w, self.options.jpeg_quality)
                   for v, img in enumerate(images)}
        seeds = [sample.seed_for(v) for v in range(len(images))]
        return Result(members, {"rewrite": self.options.rewrite,
                                "variants": [{**e, "seed": s}
                                             for e, s in zip(output["edits"], seeds)]})
