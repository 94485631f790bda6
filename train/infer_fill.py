"""Solve one visual-cloze grid with FLUX.1-Fill + a train.fill LoRA.

    python -m train.infer_fill --model black-forest-labs/FLUX.1-Fill-dev --lora runs/fill/lora \
        --task task.json [--in-context 1] [--out out/infer] [--steps 28] [--seed 0]

A task is a JSON object (a JSON line, or a file holding one):

    {"prompt": "...", "rows": [["ex_canny.png", "ex_target.png"], ["canny.png", null]], "res": 384}

Rows are in-context examples followed by the query row (last); the one ``null`` cell is
the cell to generate. Image paths are relative to the task file. ``--in-context N`` keeps
the last N example rows. Writes ``target.png`` (the generated cell) and ``grid.png``.

The grid goes through the same inputs as training (train.fill_inputs): each row encoded
separately, rows concatenated as tokens, row-wise 3D-RoPE ids. ``GridFillPipeline`` is
FluxFillPipeline with those two hooks; loading and ``load_lora_weights`` are diffusers'.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxFillPipeline
from PIL import Image

from train.fill_data import compose_grid, resize_cell
from train.fill_inputs import encode_grid, unpack_latents, vae_scale_factor
from train.fill_model import torch_dtype


class GridFillPipeline(FluxFillPipeline):
    """FluxFillPipeline taking a grid's pre-packed masked latents and row-wise position ids."""

    grid_img_ids: torch.Tensor | None = None

    def check_inputs(self, *args, masked_image_latents=None, **kwargs):
        # The stock check forbids `image` together with `masked_image_latents`, yet __call__
        # still preprocesses `image`; we pass a placeholder image of the right token count.
        return super().check_inputs(*args, masked_image_latents=None, **kwargs)

    def _prepare_latent_image_ids(self, batch_size, height, width, device, dtype):
        return self.grid_img_ids.to(device=device, dtype=dtype)


def cell_size(image: Image.Image, res: int, multiple: int) -> tuple[int, int]:
    """(h, w) with area ≈ res² and the image's aspect, sides multiples of `multiple` (VisualCloze §3)."""
    aspect = image.height / image.width
    w = max(multiple, round(res / math.sqrt(aspect) / multiple) * multiple)
    h = max(multiple, round(res * math.sqrt(aspect) / multiple) * multiple)
    return h, w


def load_task(task: str) -> tuple[dict, Path]:
    path = Path(task)
    if path.suffix in (".json", ".jsonl") and path.exists():
        return json.loads(path.read_text().strip().splitlines()[0]), path.parent
    return json.loads(task), Path(".")


def build_grid(task: dict, base: Path, in_context: int | None, res: int, multiple: int):
    rows = task["rows"]
    nulls = [(r, c) for r, row in enumerate(rows) for c, cell in enumerate(row) if cell is None]
    if len(nulls) != 1 or nulls[0][0] != len(rows) - 1:
        raise ValueError(f"task needs exactly one null cell, in the last (query) row; got nulls at {nulls}")
    if in_context is not None:
        if in_context > len(rows) - 1:
            raise ValueError(f"--in-context {in_context}: the task has only {len(rows) - 1} example rows")
        rows = rows[len(rows) - 1 - in_context:]
    cells = []
    for r, row in enumerate(rows):
        images = [Image.open(base / p).convert("RGB") if p is not None else None for p in row]
        first = next(im for im in images if im is not None)
        h, w = cell_size(first, res, multiple)
        cells.append([resize_cell(im, h, w) if im is not None else np.zeros((h, w, 3), np.uint8) for im in images])
    return compose_grid(cells, task["prompt"], len(rows) - 1, nulls[0][1], task_id=task.get("task_id", ""))


@torch.no_grad()
def solve(pipe: FluxFillPipeline, grid, steps: int = 28, guidance: float = 30.0, seed: int = 0,
          max_sequence_length: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Returns (generated grid image with rows stacked, target cell) as uint8 arrays."""
    grid_pipe = GridFillPipeline(**pipe.components)
    s = vae_scale_factor(pipe.vae)
    inputs = encode_grid(grid, pipe.vae)
    n, c4 = inputs.latents.shape
    grid_pipe.grid_img_ids = inputs.img_ids
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(1, n, c4, generator=generator).to(device, dtype)
    # Placeholder of 1 x n packed tokens: sets the token count the scheduler shift uses (mu).
    placeholder = Image.new("RGB", (2 * s * n, 2 * s))
    packed = grid_pipe(
        prompt=grid.prompt, image=placeholder, mask_image=placeholder,
        masked_image_latents=torch.cat([inputs.masked_latents, inputs.mask], -1)[None].to(device, dtype),
        latents=noise, height=2 * s, width=2 * s * n, num_inference_steps=steps, guidance_scale=guidance,
        max_sequence_length=max_sequence_length, output_type="latent", generator=generator,
    ).images
    rows, offset = [], 0
    for h, w in inputs.row_latent_sizes.tolist():
        k = (h // 2) * (w // 2)
        lat = unpack_latents(packed[:, offset:offset + k], h, w)
        offset += k
        lat = lat / pipe.vae.config.scaling_factor + (pipe.vae.config.shift_factor or 0.0)
        img = pipe.vae.decode(lat.to(pipe.vae.dtype), return_dict=False)[0]
        rows.append(((img[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy())
    query = rows[grid.mask_row]
    x0 = sum(w for _, w in grid.cell_sizes[grid.mask_row][: grid.mask_col])
    h, w = grid.cell_sizes[grid.mask_row][grid.mask_col]
    target = query[:h, x0:x0 + w]
    width = max(r.shape[1] for r in rows)
    stacked = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    return stacked, target


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="hub id or local diffusers folder of FLUX.1-Fill")
    p.add_argument("--lora", help="folder (or .safetensors) written by train.fill (…/lora)")
    p.add_argument("--task", required=True, help="task JSON line, or a .json/.jsonl file")
    p.add_argument("--in-context", type=int, default=None, help="keep the last N example rows")
    p.add_argument("--out", default="out/infer_fill")
    p.add_argument("--res", type=int, default=None, help="cell area res² (default: task's res or 384)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--guidance", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-sequence-length", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    pipe = FluxFillPipeline.from_pretrained(args.model, dtype=torch_dtype(args.dtype)).to(args.device)
    if args.lora:
        pipe.load_lora_weights(args.lora)
    task, base = load_task(args.task)
    res = args.res or task.get("res", 384)
    grid = build_grid(task, base, args.in_context, res, 2 * vae_scale_factor(pipe.vae))
    stacked, target = solve(pipe, grid, args.steps, args.guidance, args.seed, args.max_sequence_length)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(target).save(out / "target.png")
    Image.fromarray(stacked).save(out / "grid.png")
    print(f"wrote {out / 'target.png'} {target.shape[1]}x{target.shape[0]} and {out / 'grid.png'}")


if __name__ == "__main__":
    main()
