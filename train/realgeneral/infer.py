"""Generate a target image from a condition image with a trained RealGeneral adapter.

    python -m train.infer_cogvideox --model THUDM/CogVideoX1.5-5B --lora runs/cogvideox/lora \
        --condition edges.png --prompt "a photo of a red teddy bear" --subject "teddy bear" \
        --task canny --out target.png
    python -m train.infer_cogvideox --model ... --lora ... --shards shards/graph200k --key 0000004 \
        [--node canny] --out target.png        # condition, prompt, subject, task from the sample

The condition is frame 1 (clean), the target frame 2 is denoised from noise with the model's
scheduler; classifier-free guidance acts on the text only -- the condition frame and its UCE
offset are the same in both branches. Guidance defaults to 6 for subject-driven tasks and 2
otherwise (RealGeneral's settings), 50 steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from train.realgeneral.encoders import decode_latents, encode_images, encode_text, load_components, tokenize
from train.realgeneral.model import RealGeneralModel

SUBJECT_DRIVEN_TASKS = ("reference", "subject_driven")


def default_guidance(task: str) -> float:
    return 6.0 if task in SUBJECT_DRIVEN_TASKS else 2.0


def load_condition(path: str | Path | np.ndarray, resolution: int | None) -> np.ndarray:
    """RGB uint8 (from a file or an array), resized so both sides are multiples of 16 (VAE x8,
    then 2x2 patches)."""
    from PIL import Image

    image = Image.fromarray(path) if isinstance(path, np.ndarray) else Image.open(path)
    image = image.convert("RGB")
    if resolution:
        size = (resolution, resolution)
    else:
        size = (max(16, image.width // 16 * 16), max(16, image.height // 16 * 16))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(image)


@torch.no_grad()
def generate(
    parts: dict, model: RealGeneralModel, condition: np.ndarray, prompt: str, subject: str, task: str,
    steps: int = 50, guidance: float | None = None, seed: int = 0, negative_prompt: str = "",
) -> np.ndarray:
    from diffusers import CogVideoXDPMScheduler

    tokenizer, scheduler, vae = parts["tokenizer"], parts["scheduler"], parts["vae"]
    guidance = default_guidance(task) if guidance is None else guidance
    device = vae.device
    text_len = model.transformer.config.max_text_seq_length
    ids = tokenize(tokenizer, [prompt], text_len)
    text = encode_text(parts["text_encoder"], ids).to(model.transformer.dtype)
    keyword = model.uce.keyword_mask(tokenizer, ids, [subject])
    if not keyword.any():
        print(f"warning: subject {subject!r} not found in the prompt's tokens; UCE is off for this image")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    condition_latent = encode_images(vae, [condition], generator).to(model.transformer.dtype)
    condition_latent = model.condition(condition_latent, text, keyword.to(device), model.uce.task_ids([task], device))

    use_cfg = guidance > 1.0
    if use_cfg:
        negative = encode_text(parts["text_encoder"], tokenize(tokenizer, [negative_prompt], text_len))
        text = torch.cat([negative.to(text.dtype), text])
        condition_latent = condition_latent.expand(2, *condition_latent.shape[1:])

    scheduler.set_timesteps(steps, device=device)
    latents = torch.randn(condition_latent[:1].shape, generator=generator).to(device, condition_latent.dtype)
    latents = latents * scheduler.init_noise_sigma
    previous_x0 = None
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if use_cfg else latents, t)
        v = model.predict(condition_latent, model_input, text, t.expand(model_input.shape[0])).float()
        if use_cfg:
            v_uncond, v_text = v.chunk(2)
            v = v_uncond + guidance * (v_text - v_uncond)
        if isinstance(scheduler, CogVideoXDPMScheduler):  # its 2nd-order step carries the previous x0
            previous_t = scheduler.timesteps[i - 1] if i > 0 else None
            latents, previous_x0 = scheduler.step(
                v, previous_x0, t, previous_t, latents.float(), generator=generator, return_dict=False
            )
        else:
            latents = scheduler.step(v, t, latents.float(), return_dict=False)[0]
        latents = latents.to(condition_latent.dtype)
    return decode_latents(vae, latents)[0]


def sample_condition(shards, manifest, key: str, node: str, resolution: int | None) -> dict:
    """Frame 1 = node `node` of sample `key`, with the prompt, subject and task name the
    training stream gives that (node -> target) pair."""
    from graph200k.grid import centre_square
    from graph200k.reader import SampleReader, pair_prompt

    reader = SampleReader(shards, manifest)
    i = reader.manifest.index_of(key)
    subject = reader.manifest.item(i)
    return {"condition": load_condition(centre_square(reader.fetch(key, node)), resolution),
            "prompt": pair_prompt((node, "target"), reader.manifest.description(i), subject, seed=0),
            "subject": subject, "task": node}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id or local dir (diffusers layout) of the base model")
    parser.add_argument("--lora", required=True, help="adapter dir written by train.cogvideox (<out_dir>/lora)")
    parser.add_argument("--condition", help="condition image (frame 1)")
    parser.add_argument("--shards", help="annotated shard folder: take frame 1 from sample --key instead")
    parser.add_argument("--manifest", help="manifest parquet of --shards (default: scan the shards)")
    parser.add_argument("--key", help="sample key in --shards")
    parser.add_argument("--node", default="canny", help="node type of --key used as frame 1 (default canny)")
    parser.add_argument("--prompt", help="default with --key: the training prompt of that pair")
    parser.add_argument("--subject", help="subject keyword, as it appears in the prompt (UCE); default with --key: "
                        "the sample's item")
    parser.add_argument("--task", help="task name the adapter was trained with, e.g. canny; default with --key: "
                        "--node")
    parser.add_argument("--out", required=True, help="output image path")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=None, help="default: 6 subject-driven, 2 otherwise")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--resolution", type=int, default=None, help="square side; default: condition size rounded to 16")
    parser.add_argument("--scheduler", default="dpm", choices=["dpm", "ddim"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if bool(args.condition) == bool(args.key):
        parser.error("give either --condition IMAGE or --key KEY --shards DIR")
    if args.key:
        if not args.shards:
            parser.error("--key reads the condition from the shards: give --shards (and --manifest)")
        given = {k: getattr(args, k) for k in ("prompt", "subject", "task") if getattr(args, k)}
        inputs = {**sample_condition(args.shards, args.manifest, args.key, args.node, args.resolution), **given}
    else:
        missing = [f"--{k}" for k in ("prompt", "subject", "task") if not getattr(args, k)]
        if missing:
            parser.error(f"with --condition also give {' '.join(missing)}")
        inputs = {"condition": load_condition(args.condition, args.resolution), "prompt": args.prompt,
                  "subject": args.subject, "task": args.task}

    parts = load_components(args.model, dtype=getattr(torch, args.dtype), device=args.device, scheduler=args.scheduler)
    model = RealGeneralModel.from_adapter(parts.pop("transformer"), args.lora).eval()
    image = generate(
        parts, model, inputs["condition"], inputs["prompt"], inputs["subject"], inputs["task"], steps=args.steps,
        guidance=args.guidance, seed=args.seed, negative_prompt=args.negative_prompt,
    )
    from PIL import Image

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
