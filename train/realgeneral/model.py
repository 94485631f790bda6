"""The RealGeneral two-frame model: diffusers' CogVideoX transformer + UCE + SC-AdaLN + FCD + LoRA.

Layout of one example (RealGeneral §3.1): the condition latent and the target latent (each one
VAE-encoded image = one latent frame) are each repeated `patch_size_t` times along time, so
CogVideoX1.5's temporal patch (2 latent frames -> 1 token) never fuses the two images:
latent frames (condition, condition, target, target) -> token frames (condition, target).
The sequence the blocks see is [text; condition; target]. Only the target is noised; the
model's output for the target token frame (`patch_size_t` identical copies, averaged) is the
prediction.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from train.common.lora_inputs import autocast_lora_inputs
from train.realgeneral.fcd import MASK_VARIANTS, additive, attention_kwargs, fcd_mask
from train.realgeneral.sc_adaln import replace_adaln
from train.realgeneral.uce import UnifiedConditionalEmbedding

ADAPTER_WEIGHTS = "realgeneral_lora.safetensors"
ADAPTER_CONFIG = "realgeneral_config.json"

# LoRA goes on the modules RealGeneral changes and nothing else (§3.4): the SC-AdaLN linears
# and the attention projections FCD masks. peft full-matches this against module names.
LORA_TARGETS = (
    r"transformer_blocks\.\d+\.(?:norm1|norm2)\.linear_(?:text|condition|target)"
    r"|transformer_blocks\.\d+\.attn1\.(?:to_q|to_k|to_v|to_out\.0)"
)


def two_frame_rotary_emb(cfg, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """3D RoPE for two token frames of a (height, width) latent, built as CogVideoX's pipelines do."""
    if not cfg.use_rotary_positional_embeddings:
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    p = cfg.patch_size
    grid = (height // p, width // p)
    if cfg.patch_size_t is None:  # CogVideoX 1.0: crop-region grid
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

        crops = get_resize_crop_region_for_grid(grid, cfg.sample_width // p, cfg.sample_height // p)
        return get_3d_rotary_pos_embed(cfg.attention_head_dim, crops, grid, temporal_size=2, device=device)
    return get_3d_rotary_pos_embed(
        cfg.attention_head_dim, None, grid, temporal_size=2, grid_type="slice",
        max_size=(cfg.sample_height // p, cfg.sample_width // p), device=device,
    )


class RealGeneralModel(nn.Module):
    def __init__(self, transformer: nn.Module, tasks: list[str], mask_variant: str = "A"):
        super().__init__()
        if mask_variant not in MASK_VARIANTS:
            raise ValueError(f"unknown FCD mask variant {mask_variant!r}; known variants: {', '.join(MASK_VARIANTS)}")
        replace_adaln(transformer)
        self.transformer = transformer
        cfg = transformer.config
        self.uce = UnifiedConditionalEmbedding(cfg.text_embed_dim, cfg.in_channels, tasks)
        self.uce.to(device=transformer.device)
        self.mask_variant = mask_variant
        self.lora: dict | None = None
        self._mask_cache: dict = {}

    # -- layout ---------------------------------------------------------------------------
    @property
    def frames_per_image(self) -> int:
        """Latent frames each image is repeated to: one temporal patch (1 for CogVideoX 1.0)."""
        return self.transformer.config.patch_size_t or 1

    def tokens_per_image(self, height: int, width: int) -> int:
        p = self.transformer.config.patch_size
        return (height // p) * (width // p)

    def rotary_emb(self, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        return two_frame_rotary_emb(self.transformer.config, height, width, device)

    def attention_mask(self, text_len: int, height: int, width: int, device, dtype) -> torch.Tensor | None:
        """The FCD mask in additive form, built once per (variant, shape, device, dtype)."""
        key = (self.mask_variant, text_len, height, width, str(device), dtype)
        if key not in self._mask_cache:
            n = self.tokens_per_image(height, width)
            self._mask_cache[key] = additive(fcd_mask(self.mask_variant, text_len, n, n, device=device), dtype)
        return self._mask_cache[key]

    # -- forward --------------------------------------------------------------------------
    def condition(self, condition_latent, text_embeds, keyword_mask, task_ids) -> torch.Tensor:
        """Condition latent (B, 1, C, h, w) plus its UCE offset."""
        offset = self.uce(text_embeds, keyword_mask, task_ids)
        return condition_latent + offset[:, None, :, None, None].to(condition_latent.dtype)

    def predict(self, condition_latent, noisy_target, text_embeds, timestep) -> torch.Tensor:
        """v-prediction (B, 1, C, h, w) for the target frame given a clean condition frame."""
        r = self.frames_per_image
        batch, _, channels, height, width = noisy_target.shape
        video = torch.cat(
            [condition_latent.expand(batch, r, channels, height, width), noisy_target.expand(batch, r, channels, height, width)],
            dim=1,
        )
        # Under autocast SDPA runs in the autocast dtype and casts the mask along with q, k, v.
        mask = self.attention_mask(text_embeds.shape[1], height, width, video.device, video.dtype)
        out = self.transformer(
            hidden_states=video,
            encoder_hidden_states=text_embeds,
            timestep=timestep,
            image_rotary_emb=self.rotary_emb(height, width, video.device),
            attention_kwargs=attention_kwargs(mask, batch, self.transformer.config.num_attention_heads) or None,
            return_dict=False,
        )[0]
        return out[:, r:].mean(dim=1, keepdim=True)

    def forward(self, condition_latent, noisy_target, text_embeds, timestep, keyword_mask, task_ids,
                context_embeds=None):
        """`context_embeds`: what the transformer attends to, when it is not the prompt UCE reads
        (caption dropout: the empty prompt's embedding, as CFG's unconditional branch sees)."""
        condition = self.condition(condition_latent, text_embeds, keyword_mask, task_ids)
        return self.predict(condition, noisy_target, text_embeds if context_embeds is None else context_embeds,
                            timestep)

    # -- LoRA and what is trained ---------------------------------------------------------
    def add_lora(self, rank: int, alpha: int) -> None:
        """LoRA on the SC-AdaLN linears and attention projections; UCE trained fully; rest frozen."""
        from peft import LoraConfig

        self.transformer.requires_grad_(False)
        self.transformer.add_adapter(
            LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, init_lora_weights=True)
        )
        for name, param in self.transformer.named_parameters():
            param.requires_grad_("lora_" in name)
        autocast_lora_inputs(self.transformer)
        self.uce.requires_grad_(True)
        self.lora = {"rank": rank, "alpha": alpha}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA weights (peft's names, adapter name stripped) + UCE, the only weights a run changes."""
        from peft import get_peft_model_state_dict

        state = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(self.transformer).items()}
        state.update({f"uce.{k}": v for k, v in self.uce.state_dict().items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        lora = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
        result = set_peft_model_state_dict(self.transformer, lora)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise KeyError(f"LoRA weights not in the model: {unexpected[:5]}")
        self.uce.load_state_dict({k[len("uce."):]: v for k, v in state.items() if k.startswith("uce.")})

    def save_adapter(self, out_dir: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """`state`: the trainable weights as full tensors when this model is sharded (FSDP)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in (state or self.trainable_state_dict()).items()}
        save_file(state, out_dir / ADAPTER_WEIGHTS)
        config = {"tasks": list(self.uce.tasks), "mask_variant": self.mask_variant, **(self.lora or {})}
        (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return out_dir

    @classmethod
    def from_adapter(cls, transformer: nn.Module, adapter_dir: str | Path) -> "RealGeneralModel":
        """Base transformer + a saved adapter dir (`save_adapter`) -> the trained model."""
        from safetensors.torch import load_file

        adapter_dir = Path(adapter_dir)
        config_path = adapter_dir / ADAPTER_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} missing: --lora must be a dir written by train.cogvideox")
        config = json.loads(config_path.read_text())
        model = cls(transformer, config["tasks"], config["mask_variant"])
        model.add_lora(config["rank"], config["alpha"])
        model.load_trainable_state_dict(load_file(adapter_dir / ADAPTER_WEIGHTS, device=str(transformer.device)))
        return model
