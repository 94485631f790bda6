"""The two training steps as the recipes run them, on tiny models, for the fake-CUDA forward
(tests/test_fake_cuda.py) and the dtype audit (tests/test_dtype_audit.py)."""

from __future__ import annotations

import contextlib

import torch

from fake_cuda import FakeCuda

SHARED = [[(4, 4)], [(4, 4)]]  # one layout: diffusers' shared position table
MIXED = [[(4, 4)], [(4, 4), (2, 4)]]  # two layouts: per-sample RoPE and a key-padding mask


# -- Fill (train.fill) ---------------------------------------------------------------------------
def fill_transformer(tiny_fill_dir):
    """The tiny FLUX-Fill transformer as train.fill builds it: bf16 base, LoRA, per-sample RoPE."""
    from train.visualcloze.model import PerSampleRopeAttnProcessor, add_lora, load_transformer

    transformer = load_transformer(str(tiny_fill_dir), torch.bfloat16)
    add_lora(transformer, rank=4, alpha=4.0)
    transformer.set_attn_processor(PerSampleRopeAttnProcessor())
    return transformer


def fill_batch(transformer, layouts):
    from train.visualcloze.inputs import GridLatents, collate, grid_position_ids

    c4 = transformer.config.out_channels
    m4 = transformer.config.in_channels - 2 * c4
    g = torch.Generator().manual_seed(0)
    grids = []
    for rows in layouts:
        ids = grid_position_ids(rows)
        n = ids.shape[0]
        grids.append(GridLatents(torch.randn(n, c4, generator=g), torch.randn(n, c4, generator=g),
                                 torch.zeros(n, m4), ids, torch.tensor(rows)))
    return collate(grids, torch.randn(len(layouts), 5, transformer.config.joint_attention_dim, generator=g),
                   torch.randn(len(layouts), transformer.config.pooled_projection_dim, generator=g),
                   ["t"] * len(layouts))


def fill_step(transformer, batch, gpu: FakeCuda):
    """train.fill's micro-step forward: latents and timesteps on the device, the rest moved by
    predict_velocity. -> (velocity, loss)."""
    from train.visualcloze.model import predict_velocity, sample_timesteps, velocity_loss

    x0 = gpu.tensor(batch.latents)
    t = sample_timesteps(x0.shape[0], batch.num_tokens, True).to("cuda")
    noise = torch.randn_like(x0)
    noisy = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
    pred = predict_velocity(transformer, batch, noisy, t, 1.0)
    return pred, velocity_loss(pred, noise, x0, batch.valid.to("cuda"))


# -- RealGeneral (train.cogvideox) -------------------------------------------------------------
def realgeneral(tiny_cogvideox_dir):
    """(parts, model) as train.cogvideox builds them, frozen weights in bf16."""
    from train.common.config import load_config
    from train.realgeneral.recipe import CogVideoXConfig, build

    cfg = load_config(CogVideoXConfig, "configs/train/cogvideox-tiny.yaml",
                      [f"model.pretrained={tiny_cogvideox_dir}", "model.build_tiny=false", "model.dtype=bfloat16"])
    return build(cfg, tasks=["canny"])


def pairs(n: int = 2, size: int = 32):
    import cv2
    from skimage import data

    from graph200k.pair import TwoFramePair

    photo = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    return [TwoFramePair(condition=photo[:, ::-1].copy(), target=photo, prompt="an astronaut in a white suit",
                         subject="astronaut", task="canny") for _ in range(n)]


@contextlib.contextmanager
def realgeneral_on_fake_cuda(parts, model, monkeypatch, dtype=torch.bfloat16):
    """The RealGeneral parts on fake CUDA under autocast; host-side work that reads values (token
    ids searched for the subject, the FCD mask's own check of its rows, once per shape) runs
    real, on the CPU, and is moved by the recipe's own `.to(device)` calls."""
    from fake_cuda import cuda_autocast
    from train.realgeneral import fcd, recipe
    from train.realgeneral import model as realgeneral_model

    monkeypatch.setattr(recipe, "tokenize", FakeCuda.on_host(recipe.tokenize))
    monkeypatch.setattr(model.uce, "keyword_mask", FakeCuda.on_host(model.uce.keyword_mask))
    monkeypatch.setattr(realgeneral_model, "fcd_mask", lambda *a, device=None: FakeCuda.on_host(fcd.fcd_mask)(
        *a, device="cpu").to(device))
    scheduler = parts["scheduler"]
    table = scheduler.alphas_cumprod
    try:
        with FakeCuda(parts["text_encoder"], parts["vae"], model) as gpu, cuda_autocast(dtype):
            scheduler.alphas_cumprod = gpu.tensor(table)  # where build() puts it: the device
            yield gpu
    finally:
        scheduler.alphas_cumprod = table
        model._mask_cache.clear()  # it would hold the fake CUDA mask
