"""Frame-Condition Decoupling (RealGeneral §3.3): which tokens may attend to which.

The joint sequence is [text; condition frame; target frame]. The paper's choice (variant A)
cuts attention between the text and the condition frame in both directions: the condition
frame is an image to be transformed, not a rendering of the prompt, and letting the prompt
bleed into it is what FCD removes. B and C are the paper's ablations; `none` is the base
model's full attention.

  A     text <-/-> condition
  B     A + target -/-> condition   (target queries cannot read the condition keys)
  C     A + condition -/-> condition, except each token's own key (the diagonal)

Rows must never be empty: a softmax over only -inf is NaN. Every variant keeps at least one
key per query -- text keeps text, target keeps target, and in C a condition token keeps
itself (the diagonal) besides the target frame -- and `fcd_mask` checks it.

`fcd_mask` is boolean (True = may attend); the model hands its additive form (0 / -inf) to
`F.scaled_dot_product_attention` through `CogVideoXAttnProcessor2_0`'s `attention_mask`;
no softmax is written here.
"""

from __future__ import annotations

import torch

MASK_VARIANTS = ("A", "B", "C", "none")


def fcd_mask(
    variant: str, text_len: int, condition_len: int, target_len: int, device: torch.device | str | None = None
) -> torch.Tensor | None:
    """(S, S) boolean mask over [text; condition; target], True where a query may attend; None for `none`."""
    if variant not in MASK_VARIANTS:
        raise ValueError(f"unknown FCD mask variant {variant!r}; known variants: {', '.join(MASK_VARIANTS)}")
    if variant == "none":
        return None
    total = text_len + condition_len + target_len
    text = slice(0, text_len)
    cond = slice(text_len, text_len + condition_len)
    target = slice(text_len + condition_len, total)
    allowed = torch.ones(total, total, dtype=torch.bool, device=device)
    allowed[text, cond] = False
    allowed[cond, text] = False
    if variant == "B":
        allowed[target, cond] = False
    if variant == "C":
        allowed[cond, cond] = False
        idx = torch.arange(text_len, text_len + condition_len, device=device)
        allowed[idx, idx] = True
    empty = (~allowed.any(dim=1)).nonzero()
    if len(empty):
        raise AssertionError(f"FCD variant {variant} leaves query rows {empty[:5].flatten().tolist()} with no key")
    return allowed


def additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """0 where allowed, -inf where blocked: SDPA adds it to the scores as is. Built once per shape
    and dtype; SDPA would convert a boolean mask to this form on every attention call, in every
    block (first CPU measurement at 544 tokens: +14% step time for A with the bool mask)."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def attention_kwargs(mask: torch.Tensor | None, batch_size: int, num_heads: int) -> dict:
    """`attention_kwargs` for the diffusers transformer, sharing one (S, S) mask across batch and heads.

    `Attention.prepare_attention_mask` repeats a mask whose first dim is < batch x heads
    (a full copy per block call: 48 heads x 2272^2 bool = 248 MB per sample at 512^2 on
    CogVideoX1.5-5B). A stride-0 expand to exactly batch x heads skips that copy, and the
    processor's `.view(batch, heads, S, S)` stays a view.
    """
    if mask is None:
        return {}
    size = mask.shape[-1]
    return {"attention_mask": mask[None].expand(batch_size * num_heads, size, size)}
