"""CLIP and DINOv2 embeddings: the one implementation the `quality` stage and
`train.evaluate` share (DreamBooth's CLIP-I / CLIP-T / DINO, InstantStyle's CLIP style).

It lives under `annotators/` because both sides may import it: the annotators may not
import `train/`, `graph200k/` holds no torch models, and `train.evaluate` already reads the
annotators' own code for its conditions (canny, the depth model, device resolution).

Every function takes a loaded (model, processor) pair and a list of uint8 images (H x W x 3,
or H x W grey) and returns unit-norm float64 rows: a cosine is a dot product. The processors
resize, so one batch may mix image sizes.
"""

from __future__ import annotations

import numpy as np


def rgb(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8; grey is repeated. A writable copy: torch.from_numpy (inside the
    image processors) warns on read-only arrays (decoded PNGs)."""
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return image if image.flags.writeable else image.copy()


def unit_rows(x) -> np.ndarray:
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy().astype(np.float64)


def _parts(n: int, size: int):
    for i in range(0, n, max(1, size)):
        yield range(i, min(n, i + size))


def _stack(parts: list, width: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, width))


def _image_rows(pair, images: list, batch_size: int, device, dtype, embed, width: str):
    """Unit rows of `embed(model, pixel_values)` over the images, `batch_size` at a time."""
    import torch

    model, processor = pair
    dtype = dtype or model.dtype
    out = []
    with torch.inference_mode():
        for part in _parts(len(images), batch_size):
            pixels = processor(images=[rgb(images[i]) for i in part],
                               return_tensors="pt")["pixel_values"]
            out.append(unit_rows(embed(model, pixels.to(device, dtype))))
    return _stack(out, getattr(model.config, width))


def clip_images(clip, images: list, batch_size: int = 16, device="cpu", dtype=None) -> np.ndarray:
    """CLIP image embeddings (the projection; what CLIP-I, CLIP-T and CLIP style compare)."""
    def embed(model, pixels):
        feats = model.get_image_features(pixel_values=pixels)
        return getattr(feats, "pooler_output", feats)

    return _image_rows(clip, images, batch_size, device, dtype, embed, "projection_dim")


def clip_texts(clip, texts: list[str], batch_size: int = 16, device="cpu") -> np.ndarray:
    """CLIP text embeddings, truncated at the text model's length (77 tokens)."""
    import torch

    model, processor = clip
    out = []
    with torch.inference_mode():
        for part in _parts(len(texts), batch_size):
            tokens = processor.tokenizer([texts[i] for i in part], padding=True, truncation=True,
                                         max_length=model.config.text_config.max_position_embeddings,
                                         return_tensors="pt").to(device)
            feats = model.get_text_features(**tokens)
            out.append(unit_rows(getattr(feats, "pooler_output", feats)))
    return _stack(out, model.config.projection_dim)


def dino_images(dino, images: list, batch_size: int = 16, device="cpu", dtype=None) -> np.ndarray:
    """DINOv2 CLS embeddings (the pooled, layer-normed CLS token: DreamBooth's DINO score)."""
    return _image_rows(dino, images, batch_size, device, dtype,
                       lambda model, pixels: model(pixel_values=pixels).pooler_output,
                       "hidden_size")


def load_clip(folder: str, revision: str | None = None):
    """(CLIPModel, CLIPProcessor) from a local folder (never the network)."""
    from transformers import CLIPModel, CLIPProcessor

    return (CLIPModel.from_pretrained(folder, revision=revision, local_files_only=True).eval(),
            CLIPProcessor.from_pretrained(folder, revision=revision, local_files_only=True))


def load_dino(folder: str, revision: str | None = None):
    """(DINOv2 model, its image processor) from a local folder (never the network)."""
    from transformers import AutoImageProcessor, AutoModel

    return (AutoModel.from_pretrained(folder, revision=revision, local_files_only=True).eval(),
            AutoImageProcessor.from_pretrained(folder, revision=revision, local_files_only=True))
