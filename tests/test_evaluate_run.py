"""`python -m train.evaluate` end to end on tiny models: grouping and n, determinism, --reuse,
two processes == one, CogVideoX columns per FCD mask variant, an external folder set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from train.evaluate.config import DataSection, EvalConfig, ModelSection
from train.evaluate.run import evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS = {"rows": {"counts": [3], "probs": [1.0]}, "reverse_mask_prob": 0.0,
         "prompt": {"keep_task_prob": 1.0, "keep_content_prob": 1.0, "drop_caption_prob": 0.0},
         "families": {"conditional_generation": {"variants": [["canny", "target"]]},
                      "image_generation_with_reference": {"variants": [["reference", "target"]]}}}


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    """Annotated shards whose manifest holds half the keys out as `test`, and a 2-task config."""
    from annotated_shards import write_annotated_shards

    from graph200k.manifest import Manifest

    folder = tmp_path_factory.mktemp("eval-shards")
    write_annotated_shards(folder, num_samples=12, per_shard=4, size=48)
    manifest = Manifest.from_shards(folder, test_fraction=0.5)
    assert (manifest.splits == "test").sum() >= 3
    tasks = folder / "eval-tasks.yaml"
    tasks.write_text(yaml.safe_dump(TASKS))
    return folder, manifest.save(folder / "manifest.parquet"), tasks


@pytest.fixture(scope="module")
def fill_cfg(eval_data, tiny_fill_dir, eval_models, tmp_path_factory):
    shards, manifest, tasks = eval_data
    return EvalConfig(
        model=ModelSection(recipe="fill", pretrained=str(tiny_fill_dir), device="cpu", dtype="float32", steps=2,
                           res=32, max_sequence_length=32),
        data=DataSection(shards=str(shards), manifest=str(manifest), tasks_config=str(tasks), per_task=2),
        models=eval_models, metrics=["f1", "fid", "ssim", "musiq", "clip_score", "dino", "clip_i", "clip_t"],
        metric_device="cpu", batch_size=8, fid_features=64, samples=2,
        out_dir=str(tmp_path_factory.mktemp("eval-fill") / "one"))


@pytest.fixture(scope="module")
def fill_run(fill_cfg):
    summary = evaluate(fill_cfg, say=lambda *_: None)
    return fill_cfg, summary


def figures(summary):
    return {(e["task"], e["group"]): e for e in summary["tasks"]}


def test_fill_reports_each_task_per_in_context_rows_with_its_n(fill_run):
    cfg, summary = fill_run
    rows = figures(summary)
    assert set(rows) == {(t, k) for t in ("canny->target", "reference->target") for k in ("0", "1", "2")}
    for (task, _), e in rows.items():
        assert e["n"] == 2
        expected = {"f1", "fid", "ssim", "musiq", "clip_score"} if task == "canny->target" else {"dino", "clip_i", "clip_t"}
        assert set(e["metrics"]) == expected
        assert all(fig["n"] == 2 for fig in e["metrics"].values())
    out = Path(cfg.out_dir)
    md = (out / "metrics.md").read_text()
    assert "## Conditional generation" in md and "## Subject-driven generation" in md
    assert "| canny->target | 2 | 2 |" in md and "F1 ↑" in md and "FID ↓" in md
    assert json.loads((out / "metrics.json").read_text())["tasks"] == json.loads(json.dumps(summary["tasks"]))
    assert len(list((out / "images").glob("*.png"))) == 12
    from PIL import Image

    sheet = Image.open(out / "samples.png")
    assert sheet.size[0] > 100 and sheet.size[1] > 100


def test_same_seed_same_bytes_and_figures(fill_run, tmp_path):
    cfg, summary = fill_run
    again = evaluate(replace(cfg, out_dir=str(tmp_path / "again")), say=lambda *_: None)
    assert again["tasks"] == summary["tasks"]
    for png in sorted((Path(cfg.out_dir) / "images").glob("*.png")):
        assert (tmp_path / "again" / "images" / png.name).read_bytes() == png.read_bytes()


def test_reuse_recomputes_without_generating(fill_run, monkeypatch):
    from train.evaluate import run

    cfg, summary = fill_run
    (Path(cfg.out_dir) / "metrics.json").unlink()

    def refuse(*_):
        raise AssertionError("--reuse must not load a generator when every image exists")

    monkeypatch.setattr(run, "make_generator", refuse)
    assert evaluate(cfg, reuse=True, say=lambda *_: None)["tasks"] == summary["tasks"]


def test_two_processes_write_the_figures_of_one(fill_run, tmp_path):
    from train.evaluate.generate import to_dict

    cfg, summary = fill_run
    two = replace(cfg, out_dir=str(tmp_path / "two"))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(to_dict(two)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    # torchrun: what `accelerate launch --multi_gpu` runs; accelerate's own CPU multi-process
    # path needs MPI. accelerate's PartialState picks the gloo group up from its variables.
    import socket

    with socket.socket() as sock:  # a free port: other test runs may share this machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "train.evaluate", "--config", str(tmp_path / "cfg.yaml")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    merged = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert merged["processes"] == 2 and merged["items"] == summary["items"]
    one, two_ = figures(summary), figures(merged)
    assert one.keys() == two_.keys()
    for key, e in one.items():
        assert two_[key]["n"] == e["n"]
        for m, fig in e["metrics"].items():
            assert two_[key]["metrics"][m]["n"] == fig["n"]
            assert two_[key]["metrics"][m]["value"] == pytest.approx(fig["value"], rel=1e-4, abs=1e-6), (key, m)
    for png in sorted((Path(cfg.out_dir) / "images").glob("*.png")):
        assert (tmp_path / "two" / "images" / png.name).read_bytes() == png.read_bytes()


def test_aggregate_groups_and_counts():
    from train.evaluate.report import aggregate

    base = {"task": "canny->target", "kind": "conditional", "family": "f"}
    feats = lambda s: np.random.default_rng(s).normal(size=8)
    records = ([{**base, "group": "0", "scores": {"ssim": v}, "fid_fake": feats(i), "fid_real": feats(9 + i)}
                for i, v in enumerate((0.2, 0.4, 0.6))]
               + [{**base, "group": "1", "scores": {"ssim": 0.5, "f1": 0.25}, "fid_fake": feats(5), "fid_real": feats(6)}])
    rows = {e["group"]: e for e in aggregate(records)}
    assert rows["0"]["n"] == 3 and rows["0"]["metrics"]["ssim"] == {"value": pytest.approx(0.4), "n": 3}
    assert rows["0"]["metrics"]["fid"]["n"] == 3 and rows["0"]["metrics"]["fid"]["value"] is not None
    assert "f1" not in rows["0"]["metrics"] and rows["1"]["metrics"]["f1"] == {"value": 0.25, "n": 1}
    assert rows["1"]["metrics"]["fid"] == {"value": None, "n": 1}  # one pair: no covariance, no FID


def test_cogvideox_columns_are_the_adapters_mask_variants(eval_data, tiny_cogvideox_dir, eval_models, tmp_path):
    import torch

    from train.realgeneral.encoders import load_components
    from train.realgeneral.model import RealGeneralModel

    shards, manifest, _ = eval_data
    tasks = tmp_path / "pairs.yaml"
    tasks.write_text(yaml.safe_dump({**TASKS, "rows": {"counts": [1], "probs": [1.0]}}))
    loras = []
    for variant in ("A", "B"):
        torch.manual_seed(0)
        parts = load_components(str(tiny_cogvideox_dir))
        model = RealGeneralModel(parts["transformer"], ["canny", "reference"], variant)
        model.add_lora(4, 4)
        loras.append(str(model.save_adapter(tmp_path / f"run-{variant}" / "lora")))
    cfg = EvalConfig(
        model=ModelSection(recipe="cogvideox", pretrained=str(tiny_cogvideox_dir), loras=loras, device="cpu",
                           dtype="float32", steps=2, res=32),
        data=DataSection(shards=str(shards), manifest=str(manifest), tasks_config=str(tasks), per_task=2),
        models=eval_models, metrics=["ssim", "clip_score", "clip_i", "dino"], metric_device="cpu", fid_features=64,
        out_dir=str(tmp_path / "out"))
    summary = evaluate(cfg, say=lambda *_: None)
    rows = figures(summary)
    assert set(rows) == {(t, v) for t in ("canny->target", "reference->target") for v in ("A", "B")}
    assert all(e["n"] == 2 for e in rows.values()) and not summary["failed"]
    assert "| FCD mask |" in (tmp_path / "out" / "metrics.md").read_text()


def test_folder_set_of_images_and_prompts(fill_cfg, tmp_path):
    import cv2
    from PIL import Image
    from skimage import data

    lines = []
    for name in ("astronaut", "chelsea", "coffee"):
        image = cv2.resize(np.ascontiguousarray(getattr(data, name)()[..., :3]), (48, 48))
        Image.fromarray(image).save(tmp_path / f"{name}.png")
        Image.fromarray(cv2.Canny(image, 100, 200)).save(tmp_path / f"{name}.canny.png")
        lines.append({"id": name, "task": "canny->target", "prompt": f"a photo of {name}",
                      "images": {"canny": f"{name}.canny.png", "target": f"{name}.png"}})
    lines.append({"id": "dog-0", "task": "reference->target", "prompt": "a dog on the beach",
                  "images": {"reference": "chelsea.png"}, "subject": "dog"})  # DreamBench: no ground truth
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = replace(fill_cfg, data=DataSection(source="folder", prompts=str(tmp_path / "prompts.jsonl"), contexts=[0, 1]),
                  out_dir=str(tmp_path / "out"))
    summary = evaluate(cfg, say=lambda *_: None)
    rows = figures(summary)
    assert rows[("canny->target", "0")]["n"] == 3 and rows[("canny->target", "1")]["n"] == 3
    assert set(rows[("canny->target", "1")]["metrics"]) == {"f1", "fid", "ssim", "musiq", "clip_score"}
    assert rows[("reference->target", "0")]["n"] == 1 and ("reference->target", "1") not in rows
    assert set(rows[("reference->target", "0")]["metrics"]) == {"dino", "clip_i", "clip_t"}
    assert "reference->target ctx1" in summary["skipped"]


def test_bad_inputs_are_clear_errors(fill_cfg, tmp_path):
    from train.evaluate.generate import ConfigError

    (tmp_path / "p.jsonl").write_text('{"id": "a", "task": "canny->target", "images": {}}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:1: .*condition slot\(s\) \['canny'\]"):
        evaluate(replace(fill_cfg, data=DataSection(source="folder", prompts=str(tmp_path / "p.jsonl"))))
    with pytest.raises(ConfigError, match="model.recipe"):
        evaluate(replace(fill_cfg, model=replace(fill_cfg.model, recipe="sdxl")))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="asks for a GPU but none is visible"):
            evaluate(replace(fill_cfg, model=replace(fill_cfg.model, device="cuda"),
                             out_dir=str(tmp_path / "gpu")))
