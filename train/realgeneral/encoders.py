"""The frozen parts around the transformer: loading, T5 prompt embeddings, VAE image <-> latent.

Every component goes through one `from_pretrained(id_or_path, subfolder=...)`, for the hub
id THUDM/CogVideoX1.5-5B and for the tiny test model (`train.realgeneral.tiny`) alike.
"""

from __future__ import annotations

import numpy as np
import torch


def load_components(
    model: str, dtype: torch.dtype = torch.float32, device="cpu", scheduler: str = "dpm", revision: str | None = None
) -> dict:
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXDPMScheduler,
        CogVideoXTransformer3DModel,
    )
    from transformers import AutoTokenizer, T5EncoderModel

    schedulers = {"dpm": CogVideoXDPMScheduler, "ddim": CogVideoXDDIMScheduler}
    if scheduler not in schedulers:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(schedulers)}")
    at = dict(revision=revision)
    parts = dict(
        tokenizer=AutoTokenizer.from_pretrained(model, subfolder="tokenizer", **at),
        text_encoder=T5EncoderModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype, **at),
        vae=AutoencoderKLCogVideoX.from_pretrained(model, subfolder="vae", torch_dtype=dtype, **at),
        transformer=CogVideoXTransformer3DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype, **at),
        scheduler=schedulers[scheduler].from_pretrained(model, subfolder="scheduler", **at),
    )
    for name in ("text_encoder", "vae", "transformer"):
        parts[name].to(device).requires_grad_(False).eval()
    return parts


def tokenize(tokenizer, prompts: list[str], max_length: int) -> torch.Tensor:
    """T5 ids padded/truncated to the transformer's text length, as CogVideoX's pipelines do."""
    return tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True,
        add_special_tokens=True, return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_text(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(input_ids.to(text_encoder.device))[0]


def images_to_tensor(images, device, dtype) -> torch.Tensor:
    """uint8 images -> (B, 3, 1, H, W) in [-1, 1]: one-frame videos for the VAE. `images`: H x W x 3
    arrays, or 3 x H x W uint8 tensors (made by DataLoader workers, maybe pinned: copied as
    uint8, normalised on the device)."""
    if images and isinstance(images[0], torch.Tensor):
        pixels = torch.stack(images).to(device, non_blocking=True).float().div(127.5).sub(1.0)
        return pixels[:, :, None].to(dtype=dtype)
    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2)[:, :, None].to(device=device, dtype=dtype)


@torch.no_grad()
def encode_images(vae, images: list, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images -> scaled latents (B, 1, C, h, w); each image is its own one-frame video."""
    pixels = images_to_tensor(images, vae.device, vae.dtype)
    latents = vae.encode(pixels).latent_dist.sample(generator=generator)
    return (latents * vae.config.scaling_factor).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> list[np.ndarray]:
    """Scaled latents (B, 1, C, h, w) -> uint8 images."""
    latents = latents.permute(0, 2, 1, 3, 4).to(vae.dtype) / vae.config.scaling_factor
    frames = vae.decode(latents).sample[:, :, 0]  # (B, 3, H, W)
    frames = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [f.permute(1, 2, 0).cpu().numpy() for f in frames]
