"""The evaluation config: `python -m train.evaluate --config configs/eval/<name>.yaml [key=value ...]`.

YAML keys are these dataclass field names; `key=value` overrides them (`data.per_task=5`,
`model.loras=[runs/fill/lora]`), and an unknown key is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from train.evaluate.metrics import METRICS
from train.evaluate.models import MetricModelsConfig

RECIPES = ("fill", "cogvideox")
SOURCES = ("graph200k", "folder")


@dataclass
class ModelSection:
    recipe: str = "fill"  # fill (FLUX.1-Fill + train.fill LoRA) | cogvideox (RealGeneral adapters)
    pretrained: str = "black-forest-labs/FLUX.1-Fill-dev"  # hub id or local diffusers folder
    revision: str | None = None
    # fill: at most one LoRA folder (none = the base model); cogvideox: one adapter folder per
    # FCD mask variant to compare, each a column of the tables.
    loras: list[str] = field(default_factory=list)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto: float16 on a GPU, float32 on the CPU; the paper configs set bfloat16
    steps: int = 28  # denoising steps (fill 28, cogvideox 50 in the papers' setups)
    guidance: float | None = None  # null: the inference CLIs' defaults (fill 30; cogvideox 6 subject / 2 other)
    res: int = 384  # fill: cell area res^2 (aspect kept); cogvideox: square side of both frames
    max_sequence_length: int = 512  # fill: T5 tokens
    scheduler: str = "dpm"  # cogvideox: dpm | ddim


@dataclass
class DataSection:
    source: str = "graph200k"  # graph200k: held-out tasks from shards; folder: a JSONL of prompts + images
    shards: str = "shards/graph200k"
    manifest: str | None = None  # null: scan the shards
    tasks_config: str = "configs/eval/visualcloze-test-tasks.yaml"
    split: str = "test"  # test: held-out samples (manifest split); unseen: the config's unseen variants
    per_task: int = 20  # tasks drawn per variant
    contexts: list[int] = field(default_factory=lambda: [0, 1, 2])  # fill: in-context rows per column
    prompts: str | None = None  # folder: the JSONL (image paths relative to it)
    tasks: list[str] | None = None  # folder: keep only these task names


@dataclass
class EvalConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    models: MetricModelsConfig = field(default_factory=MetricModelsConfig)  # metric networks
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    metric_device: str = "auto"
    batch_size: int = 16  # images per metric-network call
    fid_features: int = 2048  # FID's Inception layer (64 / 192 / 768 / 2048); the papers' FID is 2048
    seed: int = 0
    out_dir: str = "runs/eval"
    samples: int = 4  # tasks shown in samples.png
    limit: int | None = None  # evaluate only the first N items (smoke runs)


def check(cfg: EvalConfig) -> None:
    from train.evaluate.generate import ConfigError

    m, d = cfg.model, cfg.data
    if m.recipe not in RECIPES:
        raise ConfigError(f"model.recipe must be one of {RECIPES}, got {m.recipe!r}")
    if d.source not in SOURCES:
        raise ConfigError(f"data.source must be one of {SOURCES}, got {d.source!r}")
    if m.recipe == "fill" and len(m.loras) > 1:
        raise ConfigError("model.loras: the fill recipe evaluates one LoRA per run (its columns are the in-context "
                          "rows); run once per LoRA")
    if m.recipe == "cogvideox" and not m.loras:
        raise ConfigError("model.loras: the cogvideox recipe needs at least one train.cogvideox adapter folder")
    if d.split not in ("test", "unseen"):
        raise ConfigError(f"data.split must be test or unseen, got {d.split!r}")
    if d.source == "folder" and not d.prompts:
        raise ConfigError("data.source folder needs data.prompts (a JSONL file)")
    unknown = [x for x in cfg.metrics if x not in METRICS]
    if unknown:
        raise ConfigError(f"metrics: unknown {unknown}; known: {', '.join(METRICS)}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
