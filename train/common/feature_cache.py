"""Disk cache of encoder outputs (VAE latents, text embeddings) as safetensors. Model-agnostic.

``FeatureCache(root, namespace)``: ``get(key) -> dict[str, Tensor] | None``, ``put(key, tensors)``;
``FeatureCache.key(*parts) -> str`` hashes bytes/str/arrays into a stable file name.
Files are written under a temporary name and renamed, so concurrent ranks and crashes
never leave a half-written entry. Counts ``hits`` / ``misses``.

Why: T5-XXL alone is ~12 GB; with every prompt and image cached, a trainer never has to
load the text encoders or the VAE (train.fill loads them lazily on the first miss). Callers
choose keys that repeat: train.fill keys prompts and clean grid rows, never degraded pixels,
and stores bf16 (train.visualcloze.recipe.Encoders).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


class FeatureCache:
    def __init__(self, root: str | Path, namespace: str):
        self.dir = Path(root) / namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    @staticmethod
    def key(*parts) -> str:
        h = hashlib.sha1()
        for p in parts:
            if isinstance(p, np.ndarray):
                h.update(str(p.shape).encode())
                h.update(np.ascontiguousarray(p).tobytes())
            elif isinstance(p, bytes):
                h.update(p)
            else:
                h.update(repr(p).encode())
            h.update(b"|")
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self._path(key)
        if path.exists():
            self.hits += 1
            return load_file(str(path))
        self.misses += 1
        return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
