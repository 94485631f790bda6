"""Solve one visual-cloze grid with FLUX.1-Fill + a VisualCloze LoRA.

    python -m train.infer_fill --model black-forest-labs/FLUX.1-Fill-dev --lora runs/fill/lora \
        --task task.json [--in-context 1] [--out out/infer] [--steps 28] [--seed 0]
    python -m train.infer_fill --model ... --lora ... --task tasks.jsonl --line 3 \
        --shards shards/graph200k [--manifest shards/graph200k/manifest.parquet]

Weights: ``--model`` is a FLUX.1-Fill folder or hub id, or a full ``VisualClozePipeline``
folder (``VisualCloze/VisualClozePipeline-384``: its ``resolution`` becomes the default
``--res``). ``--lora`` is a ``train.fill`` folder, diffusers' ``visualcloze-lora-*.safetensors``
(a file, or a hub repo with ``--lora-weight-name``) or the reference trainer's
``visualcloze-*-lora.pth`` (keys converted on load: train.visualcloze.weights).

A task is a JSON object (a JSON string, or a .json/.jsonl file: line ``--line``, default 0)
of one of two kinds:

- images on disk: ``{"prompt": "...", "rows": [["ex_canny.png", "ex_target.png"],
  ["canny.png", null]], "res": 384}``. Rows are in-context examples followed by the query
  row (last); the one ``null`` cell is the cell to generate. Image paths are relative to the
  task file. ``--in-context N`` keeps the last N example rows.
- a task sampled by ``python -m graph200k.sample_tasks``: its images are read by key from
  ``--shards`` (graph200k.reader); the task's masked cell is the one generated (its image is
  not read).

Prompt: the task's own (our templates), or diffusers' three parts given verbatim with
``--task-prompt`` / ``--content-prompt`` / ``--layout-prompt`` (or the task's keys
``task_prompt`` / ``content_prompt`` / ``layout_prompt``) and joined as
VisualClozeGenerationPipeline joins them (`diffusers_prompt`; the layout defaults to the
one that pipeline writes for the grid's shape).

The grid is composed by graph200k.grid in inference sizing, which is diffusers'
VisualClozeProcessor's: per row, area res² at the aspect of the row's first image, sides
rounded down to 16 (2 x the VAE's downscale), every cell resized and cropped to it, the cell
to generate black. It is then encoded and denoised exactly as diffusers'
VisualClozeGenerationPipeline does (each row encoded once, posterior sampled from the seeded
generator, rows concatenated as tokens, RoPE row ids from 1): the same seed gives the same
image as that pipeline with the same LoRA (tests/test_fill_diffusers.py). With
``--upsampling-strength`` > 0 the target goes through VisualClozePipeline's second pass
(FluxFillPipeline SDEdit at ``--upsampling-height/width``, the content prompt, the same
generator). Writes ``target.png`` (the generated cell) and ``grid.png``.

``GridFillPipeline`` is FluxFillPipeline with two hooks (packed masked latents, row-wise
position ids); loading and ``load_lora_weights`` are diffusers'.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import FluxFillPipeline
from diffusers.pipelines.flux.pipeline_flux_fill import retrieve_latents
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from graph200k.grid import INFER, Grid, compose, compose_images
from train.visualcloze.inputs import GridLatents, grid_position_ids, pack_latents, unpack_latents, vae_scale_factor
from train.visualcloze.model import torch_dtype
from train.visualcloze.weights import load_lora

# diffusers' VisualClozeGenerationPipeline.encode_prompt puts this before the content prompt.
CONTENT_PREFIX = "The last image of the last row depicts: "


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
    # RGB as diffusers' load_image; PIL images go to the composer as they are (resized once).
    images = [[None if p is None else Image.open(base / p).convert("RGB") for p in row] for row in rows]
    return compose_images(images, len(rows) - 1, nulls[0][1], task.get("prompt", ""), res, INFER, multiple,
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


def diffusers_layout_prompt(rows: int, cols: int) -> str:
    """The layout instruction VisualClozeGenerationPipeline writes for a rows x cols grid, as the
    text encoders get it. diffusers 0.42's VisualClozeProcessor.get_layout_prompt returns a
    1-tuple, which its encode_prompt formats with an f-string: the text is that tuple's repr
    ("('A grid layout ...',)"). Taken from diffusers itself, so ours changes when theirs does."""
    from diffusers.pipelines.visualcloze.visualcloze_utils import VisualClozeProcessor

    return f"{VisualClozeProcessor.get_layout_prompt(None, (rows, cols))}"


def diffusers_prompt(layout: str | None, task: str | None, content: str | None) -> str:
    """The one caption VisualClozeGenerationPipeline.encode_prompt makes of its three parts: each
    verbatim, a missing one empty, the content after CONTENT_PREFIX, joined by spaces, stripped."""
    content = "" if content is None else CONTENT_PREFIX + content
    return f"{layout or ''} {task or ''} {content}".strip()


def with_prompt(grid: Grid, layout: str | None, task: str | None, content: str | None) -> Grid:
    """The grid with diffusers' three prompt parts as its caption (layout: diffusers' default)."""
    layout = diffusers_layout_prompt(grid.num_rows, grid.num_cols) if layout is None else layout
    grid.prompt = diffusers_prompt(layout, task, content)
    grid.prompt_parts = {"layout": layout, "task": task, "content": content}
    return grid


@torch.no_grad()
def encode_query_grid(grid: Grid, vae, generator: torch.Generator, dtype: torch.dtype) -> GridLatents:
    """An inference grid as VisualClozeGenerationPipeline prepares it: every row (its unknown cell
    black) VAE-encoded once with a posterior *sample* drawn from `generator`, row by row; those
    latents are also the masked-image latents (the cell is blank already). Training encodes
    the posterior mean instead (train.visualcloze.inputs.encode_grid)."""
    s = vae_scale_factor(vae)
    latents, sizes = [], []
    for r, row in enumerate(grid.rows):
        h, w = row.shape[:2]
        if h % (2 * s) or w % (2 * s):
            raise ValueError(f"grid {grid.task_id!r} row {r}: {h}x{w} px is not a multiple of {2 * s} "
                             "(2 x VAE downscale); compose grids with graph200k.grid in inference mode")
        # VaeImageProcessor's arithmetic (x / 255 in numpy, then 2x - 1) and its memory layout: a
        # channels-last view, which the VAE's convolutions sum in another order than a
        # contiguous tensor (~1e-6 apart). Same values, same layout: the same latents, bit for bit.
        pixels = torch.from_numpy(row[None].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        pixels = (2.0 * pixels - 1.0).to(vae.device, dtype)
        lat = retrieve_latents(vae.encode(pixels), generator=generator)
        lat = (lat - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor
        latents.append(pack_latents(lat)[0])
        sizes.append((lat.shape[2], lat.shape[3]))
    packed = torch.cat(latents)
    mask = torch.from_numpy(np.concatenate(grid.latent_mask(vae_scale=s, patch=2)))
    return GridLatents(latents=packed, masked_latents=packed, mask=mask.to(packed.device, packed.dtype),
                       img_ids=grid_position_ids(sizes), row_latent_sizes=torch.tensor(sizes))


@dataclass
class Upsampling:
    """VisualClozePipeline's second pass on the generated cell (SDEdit with FluxFillPipeline, the
    whole image masked, prompt = the content prompt). strength 0 = off, as there; height /
    width None = FluxFillPipeline's defaults, as there."""

    strength: float = 0.0
    height: int | None = None
    width: int | None = None


def _decode(pipe, latents: torch.Tensor) -> np.ndarray:
    """Latents of one row -> uint8 H x W x 3 through diffusers' postprocess (its rounding)."""
    latents = latents / pipe.vae.config.scaling_factor + (pipe.vae.config.shift_factor or 0.0)
    image = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
    return np.asarray(pipe.image_processor.postprocess(image.float(), output_type="pil")[0])


@torch.no_grad()
def denoise(pipe: FluxFillPipeline, grid, steps: int, guidance: float, generator: torch.Generator,
            max_sequence_length: int = 512) -> tuple[torch.Tensor, GridLatents]:
    """The grid's packed latents after `steps` (1 x N x 4C), as VisualClozeGenerationPipeline's
    output_type="latent", and the encoded inputs."""
    # A GridFillPipeline (train.fill's validation) is used as is: its progress-bar setting stays.
    grid_pipe = pipe if isinstance(pipe, GridFillPipeline) else GridFillPipeline(**pipe.components)
    s = vae_scale_factor(pipe.vae)
    # The prompt embeds' dtype, as diffusers. The transformer's device: _execution_device walks every
    # module (~8 ms a call on the tiny model) and __call__ asks for it again anyway.
    device, dtype = pipe.transformer.device, pipe.text_encoder_2.dtype
    inputs = encode_query_grid(grid, pipe.vae, generator, dtype)
    n, c4 = inputs.latents.shape
    grid_pipe.grid_img_ids = inputs.img_ids
    noise = randn_tensor((1, n, c4), generator=generator, device=device, dtype=dtype)
    # Placeholder of 1 x n packed tokens: sets the token count the scheduler shift uses (mu).
    placeholder = Image.new("RGB", (2 * s * n, 2 * s))
    packed = grid_pipe(
        prompt=grid.prompt, image=placeholder, mask_image=placeholder,
        masked_image_latents=torch.cat([inputs.masked_latents, inputs.mask], -1)[None].to(device, dtype),
        latents=noise, height=2 * s, width=2 * s * n, num_inference_steps=steps, guidance_scale=guidance,
        max_sequence_length=max_sequence_length, output_type="latent", generator=generator,
    ).images
    return packed, inputs


@torch.no_grad()
def solve(pipe: FluxFillPipeline, grid, steps: int = 28, guidance: float = 30.0, seed: int = 0,
          max_sequence_length: int = 512, upsampling: Upsampling | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (the grid with the generated query row, rows stacked; the target cell) as uint8
    arrays; the target is upsampled when `upsampling.strength` > 0. Only the query row is
    decoded, as diffusers does: the example rows are shown as they went in."""
    # One generator for the VAE samples, the noise and the upsampling pass, in diffusers' order.
    generator = torch.Generator("cpu").manual_seed(seed)
    packed, inputs = denoise(pipe, grid, steps, guidance, generator, max_sequence_length)
    sizes = inputs.row_latent_sizes.tolist()
    offset = sum((h // 2) * (w // 2) for h, w in sizes[:grid.mask_row])
    h, w = sizes[grid.mask_row]
    query = _decode(pipe, unpack_latents(packed[:, offset:offset + (h // 2) * (w // 2)], h, w))
    x0, y0, x1, y1 = grid.cell_box(grid.mask_row, grid.mask_col)
    target = query[y0:y1, x0:x1]
    if upsampling is not None and upsampling.strength > 0:
        target = upsample(pipe, target, (grid.prompt_parts or {}).get("content"), upsampling, steps, guidance,
                          generator, max_sequence_length)
    rows = [query if r == grid.mask_row else row for r, row in enumerate(grid.rows)]
    width = max(r.shape[1] for r in rows)
    stacked = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    return stacked, target


def upsample(pipe, target: np.ndarray, content: str | None, up: Upsampling, steps: int, guidance: float,
             generator: torch.Generator, max_sequence_length: int) -> np.ndarray:
    """VisualClozePipeline's upsampling call, argument for argument, on diffusers' FluxFillPipeline."""
    image = Image.fromarray(target)
    out = FluxFillPipeline(**pipe.components)(
        prompt=[content or ""], image=[image], mask_image=[Image.new("RGB", image.size, (255, 255, 255))],
        height=up.height, width=up.width, strength=up.strength, num_inference_steps=steps,
        guidance_scale=guidance, generator=generator, output_type="pil", max_sequence_length=max_sequence_length,
    ).images[0]
    return np.asarray(out)


def load_pipeline(model: str, dtype: torch.dtype, device: str = "cpu") -> GridFillPipeline:
    """A FLUX.1-Fill folder / hub id, or a full VisualClozePipeline folder (same components)."""
    return GridFillPipeline.from_pretrained(model, dtype=dtype).to(device)


def model_resolution(model: str) -> int | None:
    """The `resolution` a VisualClozePipeline folder was saved with (None for FLUX.1-Fill)."""
    try:
        return GridFillPipeline.load_config(model).get("resolution")
    except (OSError, ValueError):
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True,
                   help="hub id or local diffusers folder of FLUX.1-Fill, or a VisualClozePipeline folder")
    p.add_argument("--lora", help="train.fill folder (…/lora), a diffusers .safetensors, the reference's .pth, "
                                  "or a hub repo (with --lora-weight-name)")
    p.add_argument("--lora-weight-name", help="file inside --lora, e.g. visualcloze-lora-384.safetensors")
    p.add_argument("--task", required=True, help="task JSON object, or a .json/.jsonl file")
    p.add_argument("--line", type=int, default=0, help="line of a .jsonl --task (default 0)")
    p.add_argument("--shards", help="annotated shard folder: images of a graph200k.sample_tasks task")
    p.add_argument("--manifest", help="its manifest parquet (default: scan --shards)")
    p.add_argument("--in-context", type=int, default=None, help="keep the last N example rows")
    p.add_argument("--layout-prompt", help="verbatim (default with --task-prompt: diffusers' layout instruction)")
    p.add_argument("--task-prompt", help="verbatim task instruction, as diffusers' task_prompt")
    p.add_argument("--content-prompt", help="verbatim content instruction, as diffusers' content_prompt")
    p.add_argument("--out", default="out/infer_fill")
    p.add_argument("--res", type=int, default=None,
                   help="cell area res² (default: the task's res, the VisualClozePipeline's resolution, or 384)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--guidance", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--upsampling-strength", type=float, default=0.0, help="> 0: VisualClozePipeline's upsampling")
    p.add_argument("--upsampling-height", type=int, default=None)
    p.add_argument("--upsampling-width", type=int, default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-sequence-length", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    task, base = load_task(args.task, args.line)
    if is_sampled(task) and not args.shards:
        p.error("a graph200k.sample_tasks task reads its images by key: give --shards (and --manifest)")
    if is_sampled(task) and args.in_context is not None:
        p.error("--in-context applies to image-path tasks; a sampled task's prompt describes its rows")
    if not 0 <= args.upsampling_strength <= 1:
        p.error(f"--upsampling-strength {args.upsampling_strength} must be in [0, 1] (0 = no upsampling)")
    pipe = load_pipeline(args.model, torch_dtype(args.dtype), args.device)
    if args.lora:
        load_lora(pipe, args.lora, args.lora_weight_name)
    res = args.res or task.get("res") or model_resolution(args.model) or 384
    multiple = 2 * vae_scale_factor(pipe.vae)
    if is_sampled(task):
        grid = build_sampled_grid(task, args.shards, args.manifest, res, multiple)
    else:
        grid = build_grid(task, base, args.in_context, res, multiple)
    # diffusers' three parts, from the flags or the task's own keys (a flag wins).
    parts = [getattr(args, f"{k}_prompt") if getattr(args, f"{k}_prompt") is not None else task.get(f"{k}_prompt")
             for k in ("layout", "task", "content")]
    if any(x is not None for x in parts):
        grid = with_prompt(grid, *parts)
    up = Upsampling(args.upsampling_strength, args.upsampling_height, args.upsampling_width)
    stacked, target = solve(pipe, grid, args.steps, args.guidance, args.seed, args.max_sequence_length, up)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(target).save(out / "target.png")
    Image.fromarray(stacked).save(out / "grid.png")
    print(f"wrote {out / 'target.png'} {target.shape[1]}x{target.shape[0]} and {out / 'grid.png'}")


if __name__ == "__main__":
    main()
