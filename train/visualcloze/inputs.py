"""FLUX.1-Fill inputs for a visual-cloze `Grid`: packing, row-wise position ids, mask channels.

Pure tensor functions (no model state) shared by train.fill, train.infer_fill and the tests.

Token layout of one grid (VisualCloze, §3.2): every row is VAE-encoded on its own and
packed into 2x2 latent patches; the rows' tokens are concatenated in row order. Position
ids are FLUX's 3D RoPE ids with axis 0 = row number *starting at 1* (text tokens keep 0) and
axes 1-2 = (y, x) of the patch *within its row*, restarting at 0 in every row, so rows may
have different aspect ratios. Row 1 first is what the reference trainer
(``img_ids[..., 0] = j + 1``) and diffusers' VisualClozeGenerationPipeline
(``enumerate(..., start=1)``) use: a LoRA moves between them and us unshifted.

The Fill transformer takes, per image token, ``[noisy (4C) | masked image (4C) | mask (4 s^2)]``
with C latent channels and s the VAE downscale factor: the pixel mask is folded s x s
into s^2 channels at latent resolution, then packed 2x2 like the latents (real FLUX:
64 + 64 + 256 = 384). Grids and that packed mask come from graph200k.grid (`compose_images`,
`Grid.latent_mask`); this module only turns them into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from graph200k.grid import Grid


# --------------------------------------------------------------------------- packing
def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C); channel index = c*4 + dy*2 + dx (diffusers' order)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent size {h}x{w} must be even to pack 2x2 patches")
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a (B, h/2*w/2, 4C) block of one row's tokens."""
    b, n, c4 = tokens.shape
    if n != (h // 2) * (w // 2):
        raise ValueError(f"{n} tokens do not form a {h}x{w} latent")
    x = tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


# --------------------------------------------------------------------------- positions
def row_position_ids(row: int, latent_h: int, latent_w: int) -> torch.Tensor:
    """(latent_h/2 * latent_w/2, 3) ids [row, y, x] of one row's packed tokens (y, x restart at 0);
    `row` is the RoPE row id itself (the first grid row is 1)."""
    hp, wp = latent_h // 2, latent_w // 2
    ids = torch.zeros(hp, wp, 3)
    ids[..., 0] = row
    ids[..., 1] = torch.arange(hp)[:, None]
    ids[..., 2] = torch.arange(wp)[None, :]
    return ids.reshape(hp * wp, 3)


def grid_position_ids(row_latent_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """Ids of all rows' tokens concatenated in row order: axis 0 = row number from 1 (3D RoPE)."""
    return torch.cat([row_position_ids(r, h, w) for r, (h, w) in enumerate(row_latent_sizes, start=1)], dim=0)


def text_position_ids(num_tokens: int) -> torch.Tensor:
    return torch.zeros(num_tokens, 3)


def row_tokens(height: int, width: int, s: int) -> int:
    """Packed image tokens of one row of height x width pixels."""
    return (height // (2 * s)) * (width // (2 * s))


def grid_tokens(grid: Grid, s: int) -> int:
    """Image tokens of a grid, computed from its sizes alone (the token budget check)."""
    return sum(row_tokens(r.shape[0], r.shape[1], s) for r in grid.rows)


# --------------------------------------------------------------------------- grid -> tensors
def row_to_tensor(row: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> float (1, 3, H, W) in [-1, 1] (what the FLUX VAE expects)."""
    return torch.from_numpy(np.ascontiguousarray(row)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)


def row_masks(grid: Grid) -> list[np.ndarray]:
    """Per-row {0, 1} float32 pixel masks (1 on the masked cell)."""
    if len(grid.masks) != grid.num_rows:
        raise ValueError(f"grid {grid.task_id!r} has {len(grid.masks)} masks for {grid.num_rows} rows; "
                         "compose grids with graph200k.grid.compose / compose_images")
    return [(m > 0).astype(np.float32) for m in grid.masks]


@dataclass
class GridLatents:
    """One grid as Fill-transformer inputs (no batch dim)."""

    latents: torch.Tensor  # (N, 4C) clean packed latents (normalised)
    masked_latents: torch.Tensor  # (N, 4C) packed latents of the rows with the masked cell blanked
    mask: torch.Tensor  # (N, 4 s^2) packed pixel mask
    img_ids: torch.Tensor  # (N, 3)
    row_latent_sizes: torch.Tensor  # (rows, 2) latent h, w of every row

    @property
    def num_tokens(self) -> int:
        return self.latents.shape[0]

    @property
    def cell_tokens(self) -> torch.Tensor:
        """(N,) bool: tokens that overlap the masked cell (the `loss_on: masked_cell` region)."""
        return self.mask.amax(dim=-1) > 0.5


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _vae_encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    # The posterior mean, not a sample: FLUX's VAE posterior is nearly deterministic and the
    # mean makes cached latents reproducible.
    lat = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    shift = vae.config.shift_factor or 0.0
    return ((lat - shift) * vae.config.scaling_factor).float()


def device_pixels(row: torch.Tensor, device) -> torch.Tensor:
    """uint8 3 x H x W (pinned by a DataLoader) -> float (1, 3, H, W) in [-1, 1] on `device`:
    the copy moves 4x fewer bytes than floats and overlaps compute when the source is pinned."""
    return row.to(device, non_blocking=True)[None].float().div(127.5).sub(1.0)


def grid_pixels(grid: Grid, device, pixels: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The rows as float (1, 3, H, W) in [-1, 1] on `device`; `pixels`: the rows as uint8
    3 x H x W tensors (train.common.loader makes them in its workers), else converted here."""
    out = []
    for r, row in enumerate(grid.rows):
        out.append(row_to_tensor(row).to(device, non_blocking=True) if pixels is None
                   else device_pixels(pixels[r], device))
    return out


def check_row_sizes(grid: Grid, s: int) -> None:
    for r, row in enumerate(grid.rows):
        h, w = row.shape[:2]
        if h % (2 * s) or w % (2 * s):
            raise ValueError(f"grid {grid.task_id!r} row {r}: {h}x{w} px is not a multiple of {2 * s} "
                             "(2 x VAE downscale); compose grids with sides that are multiples of 16")


@torch.no_grad()
def encode_rows(vae, rows: list[torch.Tensor],
                masks: list[np.ndarray | None]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each row's (clean, masked) latents, (1, C, h, w) on the VAE's device, in as few VAE calls as
    there are row sizes: the rows of one size and the blanked copies of those that carry the
    masked cell go through one call. `masks[r]`: the row's {0, 1} pixel mask, None for a row
    without the masked cell (its masked latents are its clean ones: no second encode). Which
    rows need the second encode is read from the numpy masks, so the step never waits on the GPU."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for r, px in enumerate(rows):
        by_size.setdefault(tuple(px.shape[-2:]), []).append(r)
    out: list = [None] * len(rows)
    for members in by_size.values():
        masked = [r for r in members if masks[r] is not None]
        blanked = [rows[r] * (1 - torch.from_numpy(masks[r]).to(rows[r].device, non_blocking=True)[None, None])
                   for r in masked]
        lat = _vae_encode(vae, torch.cat([rows[r] for r in members] + blanked))
        clean = dict(zip(members, lat[:len(members)].split(1)))
        blank = dict(zip(masked, lat[len(members):].split(1)))
        for r in members:
            out[r] = (clean[r], blank.get(r, clean[r]))
    return out


def masked_rows(grid: Grid) -> list[np.ndarray | None]:
    """Per row, its {0, 1} float32 pixel mask when the row holds the masked cell, else None."""
    return [m if m.any() else None for m in row_masks(grid)]


def grid_latents(grid: Grid, rows: list[tuple[torch.Tensor, torch.Tensor]], s: int) -> GridLatents:
    """A grid's inputs from its rows' (clean, masked) latents; the mask channels come from the
    grid's own masks (never stored: cheap to rebuild, 4x the latents' width at s = 8)."""
    sizes = [(clean.shape[2], clean.shape[3]) for clean, _ in rows]
    packed_masks = grid.latent_mask(vae_scale=s, patch=2)  # FluxFillPipeline.prepare_mask_latents' layout
    return GridLatents(
        latents=torch.cat([pack_latents(c)[0] for c, _ in rows]),
        masked_latents=torch.cat([pack_latents(m)[0] for _, m in rows]),
        mask=torch.from_numpy(np.concatenate(packed_masks)),
        img_ids=grid_position_ids(sizes), row_latent_sizes=torch.tensor(sizes),
    )


def encode_grid(grid: Grid, vae, pixels: list[torch.Tensor] | None = None) -> GridLatents:
    """The grid's inputs; latents stay on the VAE's device (the step moves nothing back to the host).
    `pixels`: the rows as uint8 3 x H x W tensors (train.common.loader makes them in its workers);
    without them the rows are converted here."""
    s = vae_scale_factor(vae)
    check_row_sizes(grid, s)
    return grid_latents(grid, encode_rows(vae, grid_pixels(grid, vae.device, pixels), masked_rows(grid)), s)


# --------------------------------------------------------------------------- text
@torch.no_grad()
def encode_prompts(prompts: list[str], tokenizer, text_encoder, tokenizer_2, text_encoder_2,
                   max_sequence_length: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 token embeddings (B, L, D) padded to `max_sequence_length` + pooled CLIP (B, Dp).

    Same recipe as FluxPipeline.encode_prompt (T5 padded to max length, CLIP's pooled
    EOS state), so training sees what inference sees.
    """
    t5 = tokenizer_2(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                     return_tensors="pt")
    t5_embeds = text_encoder_2(t5.input_ids.to(text_encoder_2.device, non_blocking=True), output_hidden_states=False)[0]
    clip = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt")
    pooled = text_encoder(clip.input_ids.to(text_encoder.device, non_blocking=True),
                          output_hidden_states=False).pooler_output
    return t5_embeds.float(), pooled.float()  # on the encoders' device: no copy back to the host


# --------------------------------------------------------------------------- batching
@dataclass
class FillBatch:
    hidden_masked: torch.Tensor  # (B, N, 4C + 4s^2) masked latents | mask (zeros on padding)
    latents: torch.Tensor  # (B, N, 4C) clean latents (zeros on padding)
    img_ids: torch.Tensor  # (N, 3) when shared by the batch, else (B, N, 3)
    valid: torch.Tensor  # (B, N) bool: real (non-padding) image tokens
    cell: torch.Tensor  # (B, N) bool: tokens of the masked cell
    text: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor  # (B, Dp)
    task_ids: list[str]

    @property
    def shared_positions(self) -> bool:
        return self.img_ids.ndim == 2

    @property
    def num_tokens(self) -> torch.Tensor:
        return self.valid.sum(dim=1)


def collate(items: list[GridLatents], text: torch.Tensor, pooled: torch.Tensor, task_ids: list[str]) -> FillBatch:
    """Stack grids; pad to the longest when token counts or layouts differ.

    When every grid has the same position ids (same layout) the batch keeps one shared
    (N, 3) id table and no padding — diffusers' fast path. Otherwise ids become per-sample
    (B, N, 3) and `valid` masks the padding (keys) and the loss. Latents stay on their device
    (the VAE's); ids, `valid` and `cell` are host tensors built from sizes and numpy masks.
    """
    n = max(it.num_tokens for it in items)
    b = len(items)
    device = items[0].latents.device
    shared = all(it.num_tokens == n and torch.equal(it.img_ids, items[0].img_ids) for it in items)
    cell = torch.zeros(b, n, dtype=torch.bool)
    valid = torch.zeros(b, n, dtype=torch.bool)
    for i, it in enumerate(items):
        valid[i, :it.num_tokens] = True
        cell[i, :it.num_tokens] = it.cell_tokens
    if shared:  # no padding: one stack per field
        latents = torch.stack([it.latents for it in items])
        hidden_masked = torch.cat([torch.stack([it.masked_latents for it in items]),
                                   torch.stack([it.mask for it in items]).to(device, non_blocking=True)], dim=-1)
        return FillBatch(hidden_masked, latents, items[0].img_ids, valid, cell, text, pooled, list(task_ids))
    c4, m4 = items[0].latents.shape[1], items[0].mask.shape[1]
    latents = torch.zeros(b, n, c4, device=device)
    hidden_masked = torch.zeros(b, n, c4 + m4, device=device)
    ids = torch.zeros(b, n, 3)
    for i, it in enumerate(items):
        k = it.num_tokens
        latents[i, :k] = it.latents
        hidden_masked[i, :k] = torch.cat([it.masked_latents, it.mask.to(device, non_blocking=True)], dim=-1)
        ids[i, :k] = it.img_ids
    return FillBatch(hidden_masked, latents, ids, valid, cell, text, pooled, list(task_ids))
