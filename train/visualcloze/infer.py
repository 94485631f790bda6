"""Solve one visual-cloze grid with FLUX.1-Fill + a train.fill LoRA.

    python -m train.infer_fill --model black-forest-labs/FLUX.1-Fill-dev --lora runs/fill/lora \
        --task task.json [--in-context 1] [--out out/infer] [--steps 28] [--seed 0]
    python -m train.infer_fill --model ... --lora ... --task tasks.jsonl --line 3 \
        --shards shards/graph200k [--manifest shards/graph200k/manifest.parquet]

A task is a JSON object (a JSON string, or a .json/.jsonl file: line ``--line``, default 0)
of one of two kinds:

- images on disk: ``{"prompt": "...", "rows": [["ex_canny.png", "ex_target.png"],
  ["canny.png", null]], "res": 384}``. Rows are in-context examples followed by the query
  row (last); the one ``null`` cell is the cell to generate. Image paths are relative to the
  task file. ``--in-context N`` keeps the last N example rows.
- a task sampled by ``python -m graph200k.sample_tasks``: its images are read by key from
  ``--shards`` (graph200k.reader); the task's masked cell is the one generated (its image is
  not read).

Both are composed by graph200k.grid in inference sizing: every image keeps its aspect at
area ~res², sides multiples of 16 (2 x the VAE's downscale), one height per row. Writes
``target.png`` (the generated cell) and ``grid.png``.

The grid goes through the same inputs as training (train.visualcloze.inputs): each row encoded
separately, rows concatenated as tokens, row-wise 3D-RoPE ids. ``GridFillPipeline`` is
FluxFillPipeline with those two hooks; loading and ``load_lora_weights`` are diffusers'.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxFillPipeline
from PIL import Image

from graph200k.grid import INFER, compose, compose_images
from train.visualcloze.inputs import encode_grid, unpack_latents, vae_scale_factor
from train.visualcloze.model import torch_dtype


class GridFillPipeline(FluxFillPipeline):
    """FluxFillPipeline taking a grid's pre-packed masked latents and row-wise position ids."""

    grid_img_ids: torch.Tensor | None = None

    def check_inputs(self, *args, masked_image_latents=None, **kwargs):
        # The stock check forbids `image` together with `masked_image_latents`, yet __call__
        # still preprocesses `image`; we pass a placeholder image of the right token count.
        return super().check_inputs(*args, masked_image_latents=None, **kwargs)

    def _prepare_latent_image_ids(self, batch_size, height, width, device, dtype):
        return self.grid_img_ids.to(device=device, dtype=dtype)


def load_task(task: str, line: int = 0) -> tuple[dict, Path]:
    """The task object and the folder its image paths are relative to."""
    path = Path(task)
    if path.suffix in (".json", ".jsonl") and path.exists():
        lines = [x for x in path.read_text().splitlines() if x.strip()]
        if not 0 <= line < len(lines):
            raise ValueError(f"{path}: --line {line} is outside its {len(lines)} task line(s)")
        return json.loads(lines[line]), path.parent
    try:
        return json.loads(task), Path(".")
    except json.JSONDecodeError as e:
        raise ValueError(f"--task {task[:80]!r} is neither an existing .json/.jsonl file nor a JSON "
                         f"object ({e})") from None


def is_sampled(task: dict) -> bool:
    """A graph200k.sample_tasks line (cells are {key, node, slot}) rather than image paths."""
    return "mask" in task and "columns" in task


def build_grid(task: dict, base: Path, in_context: int | None, res: int, multiple: int):
    """An image-path task as an inference Grid; the query row's null cell is masked."""
    rows = task["rows"]
    nulls = [(r, c) for r, row in enumerate(rows) for c, cell in enumerate(row) if cell is None]
    if len(nulls) != 1 or nulls[0][0] != len(rows) - 1:
        raise ValueError(f"task needs exactly one null cell, in the last (query) row; got nulls at {nulls}")
    if in_context is not None:
        if in_context > len(rows) - 1:
            raise ValueError(f"--in-context {in_context}: the task has only {len(rows) - 1} example rows")
        rows = rows[len(rows) - 1 - in_context:]
    images = [[None if p is None else np.asarray(Image.open(base / p).convert("RGB")) for p in row] for row in rows]
    return compose_images(images, len(rows) - 1, nulls[0][1], task["prompt"], res, INFER, multiple,
                          task_id=task.get("task_id", ""))


def build_sampled_grid(task: dict, shards, manifest, res: int, multiple: int):
    """A graph200k.sample_tasks line as an inference Grid: images by key from the shards."""
    from graph200k.reader import SampleReader, row_seed
    from graph200k.tasks import Task

    t = Task.from_json(task)
    reader = SampleReader(shards, manifest)
    cache: dict = {}
    # The masked cell is what the model generates: its image is neither read nor shown.
    images = [[None if (r, c) == (t.mask_row, t.mask_col)
               else reader.fetch(cell["key"], cell["slot"], row_seed(t.seed, r), cache=cache, rgb=False)
               for c, cell in enumerate(row)] for r, row in enumerate(t.rows)]
    return compose(t, images, res, INFER, multiple)


@torch.no_grad()
def solve(pipe: FluxFillPipeline, grid, steps: int = 28, guidance: float = 30.0, seed: int = 0,
          max_sequence_length: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Returns (generated grid image with rows stacked, target cell) as uint8 arrays."""
    # A GridFillPipeline (train.fill's validation) is used as is: its progress-bar setting stays.
    grid_pipe = pipe if isinstance(pipe, GridFillPipeline) else GridFillPipeline(**pipe.components)
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
    p.add_argument("--task", required=True, help="task JSON object, or a .json/.jsonl file")
    p.add_argument("--line", type=int, default=0, help="line of a .jsonl --task (default 0)")
    p.add_argument("--shards", help="annotated shard folder: images of a graph200k.sample_tasks task")
    p.add_argument("--manifest", help="its manifest parquet (default: scan --shards)")
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

    task, base = load_task(args.task, args.line)
    if is_sampled(task) and not args.shards:
        p.error("a graph200k.sample_tasks task reads its images by key: give --shards (and --manifest)")
    if is_sampled(task) and args.in_context is not None:
        p.error("--in-context applies to image-path tasks; a sampled task's prompt describes its rows")
    pipe = FluxFillPipeline.from_pretrained(args.model, dtype=torch_dtype(args.dtype)).to(args.device)
    if args.lora:
        pipe.load_lora_weights(args.lora)
    res = args.res or task.get("res", 384)
    multiple = 2 * vae_scale_factor(pipe.vae)
    if is_sampled(task):
        grid = build_sampled_grid(task, args.shards, args.manifest, res, multiple)
    else:
        grid = build_grid(task, base, args.in_context, res, multiple)
    stacked, target = solve(pipe, grid, args.steps, args.guidance, args.seed, args.max_sequence_length)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(target).save(out / "target.png")
    Image.fromarray(stacked).save(out / "grid.png")
    print(f"wrote {out / 'target.png'} {target.shape[1]}x{target.shape[0]} and {out / 'grid.png'}")


if __name__ == "__main__":
    main()
