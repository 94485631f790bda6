"""Unified Conditional Embedding (RealGeneral §3.2): subject keyword + task -> condition latent.

The subject keyword (Subjects200K `item`) is found in the prompt by matching the
tokenizer's own tokens, its T5 embeddings are mean-pooled, mapped to the latent channels by
one linear layer, and added, with a learnable per-task bias, to every position of the
condition latent. Both parts start at zero, so a new model computes exactly what it did
without UCE.

A prompt that does not contain its keyword gets no UCE at all (neither keyword nor task
term: the embedding is defined by the pair) and is counted in `counts["keyword_missing"]`,
so a data bug that drops subjects from prompts shows up in the training log.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

# Token spellings differ by tokenizer: sentencepiece marks a word start with "▁", byte-level
# BPE with "Ġ", WordPiece continuations with "##". Matching ignores those marks and case.
_WORD_MARKS = ("▁", "Ġ", "##")


def _norm_token(token: str) -> str:
    for mark in _WORD_MARKS:
        token = token.replace(mark, "")
    return token.lower()


def find_keyword(tokenizer, input_ids: list[int], subject: str) -> list[int]:
    """Positions in `input_ids` of every occurrence of the subject's token sequence."""
    subject_ids = tokenizer(subject, add_special_tokens=False).input_ids
    wanted = [t for t in (_norm_token(s) for s in tokenizer.convert_ids_to_tokens(subject_ids)) if t]
    if not wanted:
        return []
    # Drop tokens that are only a word mark ("▁" alone) so "▁", "Dog" matches "▁dog".
    tokens = [(i, _norm_token(t)) for i, t in enumerate(tokenizer.convert_ids_to_tokens(list(input_ids)))]
    tokens = [(i, t) for i, t in tokens if t]
    positions: list[int] = []
    n = len(wanted)
    for start in range(len(tokens) - n + 1):
        if [t for _, t in tokens[start : start + n]] == wanted:
            positions.extend(i for i, _ in tokens[start : start + n])
    return sorted(set(positions))


class UnifiedConditionalEmbedding(nn.Module):
    def __init__(self, text_embed_dim: int, latent_channels: int, tasks: list[str] | tuple[str, ...]):
        super().__init__()
        if len(set(tasks)) != len(tasks) or not tasks:
            raise ValueError(f"UCE tasks must be a non-empty list of unique names, got {list(tasks)}")
        self.tasks = tuple(tasks)
        self.keyword_proj = nn.Linear(text_embed_dim, latent_channels)
        self.task_bias = nn.Parameter(torch.zeros(len(self.tasks), latent_channels))
        nn.init.zeros_(self.keyword_proj.weight)
        nn.init.zeros_(self.keyword_proj.bias)
        self.counts: Counter = Counter()

    def task_ids(self, names: list[str], device=None) -> torch.Tensor:
        index = {name: i for i, name in enumerate(self.tasks)}
        unknown = sorted({n for n in names if n not in index})
        if unknown:
            raise KeyError(
                f"unknown task {', '.join(map(repr, unknown))} for UCE; known tasks: {', '.join(self.tasks)}. "
                "Add it to `tasks` in the train config (a new task gets its own zero-initialised bias)."
            )
        return torch.tensor([index[n] for n in names], dtype=torch.long, device=device)

    def keyword_mask(self, tokenizer, input_ids: torch.Tensor, subjects: list[str]) -> torch.Tensor:
        """(B, L) bool: the subject's tokens in each tokenized prompt; counts samples and misses."""
        mask = torch.zeros(input_ids.shape, dtype=torch.bool)
        for row, subject in enumerate(subjects):
            positions = find_keyword(tokenizer, input_ids[row].tolist(), subject)
            mask[row, positions] = True
            self.counts["samples"] += 1
            if not positions:
                self.counts["keyword_missing"] += 1
        return mask.to(input_ids.device)

    def forward(self, text_embeds: torch.Tensor, keyword_mask: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """(B, C) offset for the condition latent; zero for a sample whose keyword is missing."""
        weights = keyword_mask.to(text_embeds.dtype)
        found = weights.sum(dim=1, keepdim=True)
        pooled = (text_embeds * weights[..., None]).sum(dim=1) / found.clamp(min=1)
        pooled = pooled.to(self.keyword_proj.weight.dtype)
        offset = self.keyword_proj(pooled) + self.task_bias[task_ids]
        return offset * (found > 0).to(offset.dtype)
