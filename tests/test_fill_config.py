"""train.common.config: YAML keys = dataclass fields; unknown keys fail loudly, naming key and file."""

import pytest

from train.common.config import ConfigError, load_config, parse_args
from train.visualcloze.recipe import FillConfig


def test_paper_and_tiny_configs_load_with_the_papers_values():
    paper = load_config(FillConfig, "configs/train/fill.yaml")
    assert paper.model.pretrained == "black-forest-labs/FLUX.1-Fill-dev"
    assert (paper.lora.rank, paper.optim.lr, paper.optim.weight_decay, paper.optim.grad_clip) == (256, 1e-4, 0.0, 2.0)
    assert (paper.data.res, paper.train.global_batch_size, paper.train.mixed_precision) == (384, 64, "bf16")
    assert paper.model.gradient_checkpointing and paper.objective.loss_on == "grid"
    tiny = load_config(FillConfig, "configs/train/fill-tiny.yaml")
    assert tiny.model.build_tiny and tiny.data.source == "shards"
    assert tiny.data.shards == "build/demo/shards/graph200k"  # what `make demo` writes
    assert tiny.data.manifest == "build/demo/shards/graph200k/manifest.parquet"


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1.0e-4\n  learning_rate: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(FillConfig, bad)
    assert "optim.learning_rate" in str(e.value) and str(bad) in str(e.value)


def test_unknown_top_level_section(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="'optimizer'"):
        load_config(FillConfig, bad)


def test_overrides_typed_and_unknown_rejected():
    cfg = parse_args(FillConfig, ["--config", "configs/train/fill-tiny.yaml", "optim.lr=3e-3", "train.max_steps=7",
                                  "data.families=[restoration]", "model.revision=null"])
    assert cfg.optim.lr == 3e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 7 and cfg.data.families == ["restoration"] and cfg.model.revision is None
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(FillConfig, "configs/train/fill-tiny.yaml", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(FillConfig, "configs/train/fill-tiny.yaml", ["optim.lr=fast"])
