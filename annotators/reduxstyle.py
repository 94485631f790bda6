"""`reduxstyle`: a new image in the reference's style whose semantics may change
(VisualCloze §3.2): FLUX.1-Redux-dev's prior turns the style reference into prompt
tokens, FLUX.1-Depth-dev (`FluxControlPipeline`) keeps this sample's depth layout.

Redux's own pipeline sums the embeddings of all the images it is given into one prompt
(it blends references); one reference per image is needed here, so its two parts are
called directly: the SigLIP encoder + Redux embedder on the batch of references, appended
to the T5 tokens of the prompt (the description, or nothing) as the pipeline does.
N variants, each stored as `reduxstyle_ref.{i}.jpg` + `reduxstyle.{i}.jpg`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from annotators.base import Annotator, ConfigError, Prepared, Result, Sample
from annotators.diffusion import (REFERENCE_SIDE, GenerationOptions, Job, actor_device,
                                  check_generation_options, collect, depth_control, flux_text,
                                  generators, jpeg, load_pipeline, outcome_images, pil, place,
                                  prompt_of, run_jobs, to_uint8, torch_dtype,
                                  vae_memory)
from annotators.instantstyle import STYLE_POOL, draw_references, stored_references

PROMPTS = ("description", "none")


@dataclass
class ReduxStyleOptions(GenerationOptions):
    reference_side: int = REFERENCE_SIDE  # style references travel (and are encoded) at this side
    model: str = "black-forest-labs/FLUX.1-Depth-dev"
    redux_model: str = "black-forest-labs/FLUX.1-Redux-dev"
    redux_revision: str | None = None
    prompt: str = "description"  # description | none (Redux tokens alone, as BFL's demo)
    prompt_embeds_scale: float = 1.0
    pooled_prompt_embeds_scale: float = 1.0
    max_sequence_length: int = 512
    steps: int = 28
    guidance: float = 10.0  # FLUX.1-Depth-dev's recommended guidance


class ReduxStyle(Annotator):
    name: ClassVar[str] = "reduxstyle"
    produces: ClassVar[tuple[str, ...]] = ("reduxstyle",)
    needs: ClassVar[tuple[str, ...]] = ("target", "depth")
    reads: ClassVar[tuple[str, ...]] = ("description", "item")
    side_inputs: ClassVar[tuple[str, ...]] = (STYLE_POOL,)
    requires: ClassVar[tuple[str, ...]] = ("torch", "diffusers", "transformers", "cv2")
    extra: ClassVar[str] = "train"
    Options = ReduxStyleOptions

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        o = self.options
        check_generation_options(self.name, o)
        if o.prompt not in PROMPTS:
            raise ConfigError(f"stage {self.name!r}: prompt {o.prompt!r} is not one of {PROMPTS}")
        self.output_members = tuple(m for v in range(o.variants)
                                    for m in (f"reduxstyle_ref.{v}.jpg", f"reduxstyle.{v}.jpg"))
        self.pipe = self.redux = None

    def load(self) -> None:
        from diffusers import FluxControlPipeline, FluxPriorReduxPipeline

        o = self.options
        device = actor_device(self.name, o)
        dtype = torch_dtype(self.name, o.dtype, device, "bfloat16")
        self.redux = place(load_pipeline(FluxPriorReduxPipeline, self.name, o.redux_model,
                                         o.redux_revision, dtype), self.name, device, o.offload)
        self.pipe = place(vae_memory(load_pipeline(FluxControlPipeline, self.name, o.model,
                                                   o.revision, dtype), o),
                          self.name, device, o.offload)

    def prepare(self, sample: Sample) -> Prepared:
        o = self.options
        h, w = sample.image("target").shape[:2]
        control = depth_control(sample, o.resolution)
        ids, refs = draw_references(sample, o.variants, o.reference_side)
        seeds = [sample.seed_for(v) for v in range(o.variants)]
        prompt = prompt_of(sample) if o.prompt == "description" else ""
        return Prepared({"prompt": prompt, "control": control, "refs": refs, "seeds": seeds},
                        {"size": (h, w), "styles": ids, "seeds": seeds, "prompt": prompt})

    def predict(self, inputs: list) -> list:
        jobs = [Job(i, v, x["seeds"][v]) for i, x in enumerate(inputs) for v in range(len(x["seeds"]))]
        done = run_jobs(jobs, self.options.images_per_call,
                        lambda chunk: self._generate(inputs, chunk))
        return collect(inputs, done, [len(x["seeds"]) for x in inputs])

    def prompt_embeds(self, texts: list[str], refs: list):
        o = self.options
        return redux_prompt_embeds(self.pipe, self.redux, texts, refs, o.max_sequence_length,
                                   o.prompt != "none", o.prompt_embeds_scale,
                                   o.pooled_prompt_embeds_scale)

    def _generate(self, inputs: list, chunk: list[Job]) -> list:
        o = self.options
        embeds, pooled = self.prompt_embeds([inputs[j.index]["prompt"] for j in chunk],
                                            [inputs[j.index]["refs"][j.variant] for j in chunk])
        images = self.pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                           control_image=pil([inputs[j.index]["control"] for j in chunk]),
                           height=o.resolution, width=o.resolution, num_inference_steps=o.steps,
                           guidance_scale=o.guidance, generator=generators(j.seed for j in chunk),
                           output_type="np").images
        return to_uint8(images)

    def encode(self, sample: Sample, context, output) -> Result:
        images = outcome_images(output)
        (h, w), ids, q = context["size"], context["styles"], self.options.jpeg_quality
        refs = stored_references(sample, ids, h, w, q)
        members = {}
        for v, img in enumerate(images):
            members[f"reduxstyle_ref.{v}.jpg"] = refs[ids[v]]
            members[f"reduxstyle.{v}.jpg"] = jpeg(img, h, w, q)
        return Result(members, {"prompt": context["prompt"],
                                "variants": [{"style": i, "seed": s}
                                             for i, s in zip(ids, context["seeds"])]})


def redux_prompt_embeds(pipe, redux, texts: list[str], refs: list, max_sequence_length: int,
                        with_text: bool = True, prompt_scale: float = 1.0,
                        pooled_scale: float = 1.0):
    """T5 tokens of each text + the Redux tokens of its image, scaled as
    `FluxPriorReduxPipeline` does; `with_text=False`: zero text tokens (Redux without text
    encoders). One image per text, where the pipeline would sum them all into one prompt."""
    import torch

    with torch.no_grad():
        encoded = redux.encode_image(pil(refs), redux._execution_device, 1)
        image_tokens = redux.image_embedder(encoded).image_embeds
        if not with_text:
            width = pipe.transformer.config.joint_attention_dim
            text = torch.zeros(len(texts), max_sequence_length, width, dtype=image_tokens.dtype)
            pooled = torch.zeros(len(texts), pipe.transformer.config.pooled_projection_dim,
                                 dtype=image_tokens.dtype)
        else:
            text, pooled = flux_text(pipe, texts, max_sequence_length)
    device = pipe._execution_device
    embeds = torch.cat([text.to(device), image_tokens.to(device, text.dtype)], dim=1)
    return embeds * prompt_scale, pooled.to(device) * pooled_scale
