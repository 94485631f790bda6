"""FLUX.1-Fill model pieces for train.fill: loading, LoRA, per-sample RoPE, the objective.

- ``load_transformer / load_vae / load_text_encoders(pretrained, dtype)``: one
  ``from_pretrained(id_or_path, subfolder=...)`` path for the hub id and a local folder
  (the tiny model of ``train.visualcloze.tiny`` goes through the same calls).
- ``add_lora(transformer, rank, alpha, target_modules)``: LoRA on every ``nn.Linear`` of
  the transformer by default (VisualCloze: rank 256), trainable params kept in fp32, their
  inputs left in the autocast dtype (``train.common.lora_inputs``).
- ``PerSampleRopeAttnProcessor``: diffusers' Flux forward takes one (N, 3) position-id
  table for the whole batch; a batch that mixes grid layouts needs per-sample ids and a
  key-padding mask. This processor takes both through ``joint_attention_kwargs`` and
  falls back to the stock processor when they are absent.
- ``sample_timesteps`` (lognorm + optional kohya ``flux_shift``) and ``predict_velocity``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from train.common.lora_inputs import autocast_lora_inputs
from train.visualcloze.inputs import FillBatch, text_position_ids

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


# --------------------------------------------------------------------------- loading
def load_transformer(pretrained: str, dtype: torch.dtype, revision: str | None = None):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(pretrained, subfolder="transformer", dtype=dtype,
                                                  revision=revision)


def load_vae(pretrained: str, dtype: torch.dtype, revision: str | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(pretrained, subfolder="vae", dtype=dtype, revision=revision)


def load_text_encoders(pretrained: str, dtype: torch.dtype, revision: str | None = None):
    """(clip tokenizer, CLIPTextModel, t5 tokenizer, T5EncoderModel) — FluxPipeline's layout."""
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(pretrained, subfolder="tokenizer", revision=revision)
    clip = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", dtype=dtype, revision=revision)
    tok2 = AutoTokenizer.from_pretrained(pretrained, subfolder="tokenizer_2", revision=revision)
    t5 = T5EncoderModel.from_pretrained(pretrained, subfolder="text_encoder_2", dtype=dtype, revision=revision)
    return tok, clip.eval().requires_grad_(False), tok2, t5.eval().requires_grad_(False)


# --------------------------------------------------------------------------- LoRA
def linear_module_names(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def add_lora(transformer, rank: int, alpha: float, target_modules: list[str] | str = "all-linear",
             dropout: float = 0.0) -> list[torch.nn.Parameter]:
    from peft import LoraConfig

    targets = linear_module_names(transformer) if target_modules == "all-linear" else list(target_modules)
    transformer.requires_grad_(False)
    # init_lora_weights=True: B = 0, so step 0 is exactly the base model.
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                                       init_lora_weights=True))
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:  # bf16 base, fp32 LoRA: AdamW updates of 1e-4 vanish in bf16
        p.data = p.data.float()
    autocast_lora_inputs(transformer)
    return params


def init_lora_from(transformer, lora: str, weight_name: str | None = None) -> list[torch.nn.Parameter]:
    """Start from a released or earlier LoRA (a train.fill folder, diffusers' visualcloze-lora-*.safetensors,
    the reference trainer's .pth): its adapter, trainable, in fp32 as `add_lora`'s."""
    from train.visualcloze.weights import load_lora_adapter

    transformer.requires_grad_(False)
    load_lora_adapter(transformer, lora, weight_name)
    params = []
    for name, p in transformer.named_parameters():
        if ".lora_" in name:
            p.requires_grad_(True)
            p.data = p.data.float()
            params.append(p)
    if not params:
        raise ValueError(f"lora.init_from {lora}: no LoRA weights of this transformer in it")
    autocast_lora_inputs(transformer)
    return params


def lora_state_dict(transformer, full_state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """LoRA weights by peft name; `full_state_dict` = a gathered state dict (FSDP) to pick them from."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer, state_dict=full_state_dict)


def load_lora_state_dict(transformer, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(transformer, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"checkpoint has LoRA keys the model lacks (different rank/targets?): {unexpected[:3]}")


# --------------------------------------------------------------------------- attention
class PerSampleRopeAttnProcessor(FluxAttnProcessor):
    """FluxAttnProcessor + per-sample rotary embeddings and key-padding mask.

    joint_attention_kwargs: ``sample_rotary_emb`` = (cos, sin) of shape (B, L+N, D) and
    ``key_padding`` = (B, L+N) bool, True = real token. Without them: the stock processor.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, sample_rotary_emb=None, key_padding=None):
        if sample_rotary_emb is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, attn.head_dim)))
        k = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (-1, attn.head_dim)))
        v = attn.to_v(hidden_states).unflatten(-1, (-1, attn.head_dim))
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            eq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
            ek = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        cos, sin = sample_rotary_emb
        # (B, S, D) -> (B, S, 1, D) broadcasts over heads; apply_rotary_emb's own reshape
        # assumes one table for the batch, so rotate here with the same real-pair convention.
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        mask = key_padding[:, None, None, :] if key_padding is not None else None
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        out = out.transpose(1, 2).flatten(2, 3).to(q.dtype)
        if encoder_hidden_states is not None:
            n_txt = encoder_hidden_states.shape[1]
            enc, out = out[:, :n_txt], out[:, n_txt:]
            out = attn.to_out[1](attn.to_out[0](out.contiguous()))
            enc = attn.to_add_out(enc.contiguous())
            return out, enc
        return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos[:, :, None, :].to(x.device), sin[:, :, None, :].to(x.device)
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


# --------------------------------------------------------------------------- objective
def flux_shift(t: torch.Tensor, num_tokens: torch.Tensor, base_shift: float = 0.5, max_shift: float = 1.15,
               base_tokens: int = 256, max_tokens: int = 4096) -> torch.Tensor:
    """kohya's flux_shift: mu linear in the packed-token count, t' = e^mu / (e^mu + 1/t - 1)."""
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    mu = base_shift + slope * (num_tokens.float() - base_tokens)
    return torch.exp(mu) / (torch.exp(mu) + (1.0 / t - 1.0))


def sample_timesteps(batch_size: int, num_tokens: torch.Tensor, shift: bool, generator=None, **shift_kw) -> torch.Tensor:
    """t = sigmoid(N(0, 1)) (SD3's logit-normal), optionally resolution-shifted towards noise."""
    t = torch.sigmoid(torch.randn(batch_size, generator=generator))
    return flux_shift(t, num_tokens, **shift_kw) if shift else t


def predict_velocity(transformer, batch: FillBatch, noisy: torch.Tensor, t: torch.Tensor, guidance: float):
    """Run the Fill transformer on [noisy | masked image | mask] tokens -> (B, N, 4C) velocity.

    `transformer` may be wrapped (DDP): attributes are read from the model inside, the call
    goes through the wrapper (its gradient hooks)."""
    core = getattr(transformer, "module", transformer)
    device, dtype = noisy.device, core.dtype
    b, n_txt = noisy.shape[0], batch.text.shape[1]
    txt_ids = text_position_ids(n_txt).to(device, non_blocking=True)  # host tables: copies that don't wait
    kwargs = None
    if batch.shared_positions:
        img_ids = batch.img_ids.to(device, non_blocking=True)
    else:
        # Per-sample ids: rotary tables built with the model's own pos_embed, sample by sample.
        tables = [core.pos_embed(torch.cat([txt_ids, ids.to(device, non_blocking=True)]))
                  for ids in batch.img_ids]
        cos = torch.stack([c for c, _ in tables]); sin = torch.stack([s for _, s in tables])
        keys = torch.cat([torch.ones(b, n_txt, dtype=torch.bool), batch.valid], dim=1).to(device, non_blocking=True)
        kwargs = {"sample_rotary_emb": (cos, sin), "key_padding": keys}
        img_ids = batch.img_ids[0].to(device, non_blocking=True)  # placeholder for the stock table, unused
    hidden = torch.cat([noisy, batch.hidden_masked.to(device)], dim=-1).to(dtype)
    out = transformer(
        hidden_states=hidden,
        timestep=t.to(device, dtype),
        guidance=torch.full((b,), guidance, device=device, dtype=dtype) if core.config.guidance_embeds else None,
        pooled_projections=batch.pooled.to(device, dtype),
        encoder_hidden_states=batch.text.to(device, dtype),
        txt_ids=txt_ids,
        img_ids=img_ids,
        joint_attention_kwargs=kwargs,
        return_dict=False,
    )[0]
    return out.float()


def velocity_loss(pred: torch.Tensor, noise: torch.Tensor, latents: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Rectified-flow velocity MSE (target = noise - x0) averaged over `region` tokens of each sample."""
    err = (pred - (noise - latents)).pow(2).mean(dim=-1)  # (B, N)
    region = region.to(err.dtype)
    per_sample = (err * region).sum(dim=1) / region.sum(dim=1).clamp(min=1.0)
    return per_sample.mean()
