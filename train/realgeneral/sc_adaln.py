"""Separated Condition AdaLN (RealGeneral §3.3): one adaLN branch per token group.

CogVideoX's `CogVideoXLayerNormZero` maps the timestep embedding through ONE linear to
6 x dim: (shift, scale, gate) for the video tokens and the same for the text tokens. With a
clean condition frame and a noisy target frame sharing one timestep, a single video branch
has to modulate both; RealGeneral gives each frame its own branch. Three linears
(text, condition, target) of 3 x dim each; the condition and target branches start as copies
of the pretrained video rows, the text branch as the pretrained text rows, so a freshly built
model computes bit-for-bit what the base model computes (measured: splitting a linear's
output rows gives identical float32 results on CPU, see tests/test_cogvideox_model.py).

The video tokens are [condition frame; target frame] of equal size (both images share one
size, `graph200k.pair.TwoFramePair`), so the split point is half the video sequence.
"""

from __future__ import annotations

import torch
from torch import nn


class SeparatedConditionAdaLN(nn.Module):
    """Drop-in for `CogVideoXLayerNormZero`: same call, same 4-tuple, per-token gates."""

    def __init__(
        self, conditioning_dim: int, embedding_dim: int, norm: nn.LayerNorm, bias: bool = True, device=None, dtype=None
    ):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.silu = nn.SiLU()
        make = dict(bias=bias, device=device, dtype=dtype)
        self.linear_text = nn.Linear(conditioning_dim, 3 * embedding_dim, **make)
        self.linear_condition = nn.Linear(conditioning_dim, 3 * embedding_dim, **make)
        self.linear_target = nn.Linear(conditioning_dim, 3 * embedding_dim, **make)
        self.norm = norm

    @classmethod
    def from_layer_norm_zero(cls, base: nn.Module) -> "SeparatedConditionAdaLN":
        """Split a pretrained `CogVideoXLayerNormZero` into three branches (video rows copied twice)."""
        linear = base.linear
        dim = linear.out_features // 6
        module = cls(
            linear.in_features, dim, base.norm, bias=linear.bias is not None,
            device=linear.weight.device, dtype=linear.weight.dtype,
        )
        # Row order of the base linear: shift, scale, gate (video) | shift, scale, gate (text).
        video, text = slice(0, 3 * dim), slice(3 * dim, 6 * dim)
        with torch.no_grad():
            for target, rows in ((module.linear_condition, video), (module.linear_target, video), (module.linear_text, text)):
                target.weight.copy_(linear.weight[rows])
                if linear.bias is not None:
                    target.bias.copy_(linear.bias[rows])
        return module

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        num_video = hidden_states.shape[1]
        if num_video % 2:
            raise ValueError(
                f"SC-AdaLN expects [condition; target] video tokens of equal count, got {num_video} tokens"
            )
        half = num_video // 2
        emb = self.silu(temb)
        # (B, 2, 3*dim): row 0 modulates the condition frame, row 1 the target frame; viewing the
        # video tokens as (B, 2, N/2, dim) applies both in one broadcast op instead of split + cat.
        frames = torch.stack([self.linear_condition(emb), self.linear_target(emb)], dim=1)
        shift, scale, gate = frames[:, :, None, :].chunk(3, dim=-1)
        e_shift, e_scale, e_gate = self.linear_text(emb).chunk(3, dim=1)

        batch, _, dim = hidden_states.shape
        normed = self.norm(hidden_states).view(batch, 2, half, dim)
        hidden_states = (normed * (1 + scale) + shift).view(batch, num_video, dim)
        encoder_hidden_states = self.norm(encoder_hidden_states) * (1 + e_scale)[:, None, :] + e_shift[:, None, :]
        # The block multiplies the gate into a (B, N, dim) tensor: give it one per token.
        gate = gate.expand(batch, 2, half, dim).reshape(batch, num_video, dim)
        return hidden_states, encoder_hidden_states, gate, e_gate[:, None, :]


def replace_adaln(transformer: nn.Module) -> int:
    """Swap every block's norm1/norm2 for SC-AdaLN in place; returns how many were swapped."""
    swapped = 0
    for block in transformer.transformer_blocks:
        for name in ("norm1", "norm2"):
            base = getattr(block, name)
            if isinstance(base, SeparatedConditionAdaLN):
                continue
            setattr(block, name, SeparatedConditionAdaLN.from_layer_norm_zero(base))
            swapped += 1
    return swapped
