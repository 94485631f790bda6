"""What the dense stages store and how readers see it (16-bit depth, palette PNGs), and
their configuration blocks. No model runs here."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import yaml

from annotate_helpers import REPO
from annotators.imaging import back_to, check_model_size, indexed_png, read_indexed_png
from graph200k.shards import decode_image, encode_image
from pipelines.annotate_config import build_stage

DENSE = ("hed", "mlsd", "openpose", "depth", "normal", "uniformer")


def test_a_16_bit_png_keeps_its_levels_and_reads_as_8_bit():
    ramp = np.linspace(0, 65535, 256 * 256).round().astype(np.uint16).reshape(256, 256)
    data = encode_image(ramp, "png")
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8),
                                               cv2.IMREAD_UNCHANGED), ramp)
    # the project's one decoder (the training reader's) gives the high byte: a sensible
    # 8-bit depth map, near (high) still bright
    eight = decode_image(data, "L")
    assert eight.dtype == np.uint8
    np.testing.assert_array_equal(eight, (ramp >> 8).astype(np.uint8))
    assert decode_image(data, "RGB").shape == (256, 256, 3)
    with pytest.raises(ValueError, match="uint8/uint16"):
        encode_image(ramp.astype(np.float32), "png")


def test_palette_png_reads_as_colours_and_gives_back_exact_ids():
    from annotators.controlnet_nets import cn_util

    palette = np.asarray(cn_util().ade_palette(), np.uint8)
    # ADE20K's palette gives classes 6 (road) and 48 (skyscraper) one colour
    assert (palette[6] == palette[48]).all()
    ids = (np.arange(64 * 64) % 150).astype(np.uint8).reshape(64, 64)
    data = indexed_png(ids, palette)
    assert data == indexed_png(ids, palette)  # deterministic bytes
    np.testing.assert_array_equal(read_indexed_png(data), ids)
    np.testing.assert_array_equal(decode_image(data, "RGB"), palette[ids])
    from PIL import Image

    assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((6, 0)) == tuple(palette[6])
    with pytest.raises(ValueError, match="no colour"):
        indexed_png(np.full((4, 4), 200, np.uint8), palette)


def test_size_checks_and_the_way_back():
    check_model_size(np.zeros((512, 512, 3), np.uint8), "hed")
    with pytest.raises(ValueError, match="cannot take a 2048x64 image"):
        check_model_size(np.zeros((64, 2048, 3), np.uint8), "hed")
    with pytest.raises(ValueError, match="cannot take a 8x8 image"):
        check_model_size(np.zeros((8, 8, 3), np.uint8), "hed")
    small = np.eye(4, dtype=np.uint8) * 255
    assert back_to(small, (8, 8)).shape == (8, 8)
    assert set(np.unique(back_to(small, (8, 8), nearest=True))) == {0, 255}


def _stages(path):
    return yaml.safe_load((REPO / path).read_text())["stages"]


def test_production_blocks_name_hub_models_and_gpu_fractions():
    blocks = _stages("configs/annotate.yaml")
    total = 0.0
    for name in DENSE:
        stage = build_stage(name, blocks[name])
        assert stage.cls.name == name and stage.num_gpus > 0
        assert "/" in stage.config["model"] and not stage.config["model"].startswith(("/", "."))
        concurrency = blocks[name]["concurrency"]
        total += stage.num_gpus * (concurrency[1] if isinstance(concurrency, list) else concurrency)
    assert total == 8  # the one-8-GPU-node recipe: all six stages at their pools' maximum


def test_tiny_blocks_run_every_stage_from_build_tiny_models_on_the_cpu():
    config = yaml.safe_load((REPO / "configs/annotate-tiny.yaml").read_text())
    assert "ray" in config
    blocks = config["stages"]
    assert "canny" in blocks
    for name in DENSE:
        stage = build_stage(name, blocks[name])
        assert stage.config["model"] == f"build/tiny-models/{name}"
        assert stage.config.get("device") == "cpu" and stage.num_gpus == 0
        stage.cls(stage.config)  # options valid, construction cheap (no model load)
    from annotators.tiny_models import discover

    assert set(DENSE) <= set(discover())


def test_the_gpu_benchmark_on_a_machine_without_one_says_so(monkeypatch):
    import argparse
    import sys

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import models_dense

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = argparse.Namespace(gpu=True, images=8, batch_size=32, stages=[], rounds=1)
    assert models_dense.run(args) == [("dense.gpu", "skipped (no CUDA device)")]
