"""FLUX-Fill inputs: packing, row-wise 3D-RoPE ids, mask channels, padding, per-sample RoPE."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from graph200k.grid import INFER, compose_images, pack_mask
from train.visualcloze.inputs import (GridLatents, collate, grid_position_ids, grid_tokens, pack_latents, row_masks,
                               unpack_latents)


def test_pack_latents_order_by_hand():
    # 1 channel, 2x4 latent: two 2x2 patches; channel order within a token = dy*2 + dx.
    lat = torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]])[None, None]
    packed = pack_latents(lat)
    assert packed.tolist() == [[[1, 2, 5, 6], [3, 4, 7, 8]]]
    assert torch.equal(unpack_latents(packed, 2, 4), lat)


def test_position_ids_restart_per_row_by_hand():
    # First row: latent 4x4 -> 2x2 tokens; second: latent 2x6 -> 1x3 tokens (another aspect).
    # Row ids start at 1 (the reference's `j + 1`, diffusers' `enumerate(start=1)`): 0 is the text's.
    ids = grid_position_ids([(4, 4), (2, 6)])
    assert ids.tolist() == [
        [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1],
        [2, 0, 0], [2, 0, 1], [2, 0, 2],
    ]


def test_position_ids_equal_diffusers_visualcloze_pipeline():
    from diffusers import VisualClozeGenerationPipeline

    # Two concatenated pixel rows of another aspect each, VAE downscale 2: latents 8x16 and 4x12.
    rows = [torch.zeros(1, 3, 16, 32), torch.zeros(1, 3, 8, 24)]
    theirs = VisualClozeGenerationPipeline._prepare_latent_image_ids(rows, 2, "cpu", torch.float32)
    assert torch.equal(grid_position_ids([(8, 16), (4, 12)]), theirs)


def test_pack_mask_s2_by_hand():
    # s = 2: a 4x4-pixel mask is one 2x2 latent = one token with 4 * s^2 = 16 channels,
    # channel = (sy*s + sx)*4 + dy*2 + dx, latent pixel (dy, dx) covers rows 2dy+sy, cols 2dx+sx.
    # train.visualcloze.inputs takes the packed mask from graph200k.grid (Grid.latent_mask).
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 3] = 255  # dy=0, sy=0, dx=1, sx=1 -> (0*2+1)*4 + 0*2 + 1 = 5
    mask[3, 0] = 255  # dy=1, sy=1, dx=0, sx=0 -> (1*2+0)*4 + 1*2 + 0 = 10
    packed = pack_mask(mask, vae_scale=2, patch=2)
    assert packed.shape == (1, 16)
    assert np.flatnonzero(packed[0]).tolist() == [5, 10]


def test_pack_mask_s8_matches_flux_fill_pipeline():
    # Full-size FLUX: s = 8 -> 256 mask channels; compare with diffusers' own packing.
    from diffusers import FluxFillPipeline

    torch.manual_seed(0)
    mask = (torch.rand(1, 1, 32, 48) > 0.5).float()
    fake = SimpleNamespace(vae_scale_factor=8, vae=SimpleNamespace(config=SimpleNamespace(shift_factor=0.0,
                           scaling_factor=1.0)), _pack_latents=FluxFillPipeline._pack_latents)
    masked_latents = torch.zeros(1, 16, 4, 6)
    ref, _ = FluxFillPipeline.prepare_mask_latents(fake, mask, masked_latents, 1, 16, 1, 32, 48, torch.float32,
                                                   "cpu", None)
    ours = torch.from_numpy(pack_mask(mask[0, 0].numpy(), vae_scale=8, patch=2))[None]
    assert ours.shape == (1, 6, 256)
    assert torch.equal(ours, ref)


def test_grid_masks_tokens_and_budget():
    a = np.zeros((16, 16, 3), np.uint8)
    b = np.zeros((16, 32, 3), np.uint8)
    # Inference sizing at area 16², sides rounded down to 4 (diffusers' rule): row 0 is 16 x (16 + 16)
    # px; row 1 (aspect 2): h = int(sqrt(256 / 2)) = 11 -> 8, w = int(11 * 2) = 22 -> 20: 8 x (20 + 20).
    grid = compose_images([[a, a], [b, b]], mask_row=1, mask_col=1, prompt="p", res=16, mode=INFER, multiple=4)
    m = row_masks(grid)
    assert m[0].shape == (16, 32) and m[1].shape == (8, 40)
    assert m[0].sum() == 0 and m[1][:, 20:].all() and not m[1][:, :20].any()
    # s=2 (4-px tokens): (16/4)*(32/4) = 32, (8/4)*(40/4) = 20.
    assert grid_tokens(grid, 2) == 32 + 20
    grid.masks = []
    with pytest.raises(ValueError, match="compose"):
        row_masks(grid)


def _latents(ids):
    n = ids.shape[0]
    return GridLatents(torch.randn(n, 8), torch.randn(n, 8), torch.zeros(n, 16), ids, torch.tensor([[2, 2]]))


def test_collate_pads_mixed_layouts_and_shares_uniform():
    one, two = grid_position_ids([(4, 4)]), grid_position_ids([(4, 4), (2, 4)])
    text, pooled = torch.zeros(2, 3, 4), torch.zeros(2, 4)
    same = collate([_latents(one), _latents(one)], text, pooled, ["a", "b"])
    assert same.shared_positions and same.img_ids.shape == (4, 3) and same.valid.all()
    mixed = collate([_latents(one), _latents(two)], text, pooled, ["a", "b"])
    assert not mixed.shared_positions and mixed.img_ids.shape == (2, 6, 3)
    assert mixed.valid.sum(1).tolist() == [4, 6]
    assert (mixed.latents[0, 4:] == 0).all() and torch.equal(mixed.img_ids[1], two)


def test_per_sample_rope_equals_stock_and_ignores_padding(tiny_fill_dir):
    from train.visualcloze.inputs import FillBatch
    from train.visualcloze.model import PerSampleRopeAttnProcessor, load_transformer, predict_velocity

    tr = load_transformer(str(tiny_fill_dir), torch.float32).eval()
    c4 = tr.config.out_channels
    m4 = tr.config.in_channels - 2 * c4
    torch.manual_seed(0)
    ids = grid_position_ids([(4, 4), (2, 4)])
    n = ids.shape[0]
    text, pooled = torch.randn(1, 5, 32), torch.randn(1, 32)
    hidden_masked, noisy, t = torch.randn(1, n, c4 + m4), torch.randn(1, n, c4), torch.tensor([0.3])
    stock = predict_velocity(tr, FillBatch(hidden_masked, noisy, ids, torch.ones(1, n, dtype=torch.bool),
                                           torch.zeros(1, n, dtype=torch.bool), text, pooled, ["x"]), noisy, t, 1.0)
    tr.set_attn_processor(PerSampleRopeAttnProcessor())
    # The same sample padded with 3 junk tokens, per-sample ids: real tokens must not change.
    pad = 3
    batch = FillBatch(torch.cat([hidden_masked, torch.randn(1, pad, c4 + m4)], 1),
                      None, torch.cat([ids, torch.zeros(pad, 3)])[None],
                      torch.cat([torch.ones(1, n), torch.zeros(1, pad)], 1).bool(), None, text, pooled, ["x"])
    padded = predict_velocity(tr, batch, torch.cat([noisy, torch.randn(1, pad, c4)], 1), t, 1.0)
    torch.testing.assert_close(padded[:, :n], stock, rtol=1e-4, atol=1e-5)


def test_flux_shift_matches_kohya_formula():
    from train.visualcloze.model import flux_shift

    t = torch.tensor([0.5, 0.5, 0.25])
    out = flux_shift(t, torch.tensor([256, 4096, 4096]))
    mu = torch.tensor([0.5, 1.15, 1.15])
    expected = mu.exp() / (mu.exp() + (1 / t - 1))
    torch.testing.assert_close(out, expected)
    assert out[1] > out[0]  # more tokens -> shifted towards noise


@pytest.mark.parametrize("s", [1, 2, 8])
def test_pack_mask_channel_count_general(s):
    mask = np.ones((4 * s, 2 * s), np.uint8)
    assert pack_mask(mask, vae_scale=s, patch=2).shape == (2, 4 * s * s)
