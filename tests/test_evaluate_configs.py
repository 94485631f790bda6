"""Every shipped evaluation config parses and passes the checks; the test task list is the
reference code's: the families and variants it names, 3 rows, the target always masked."""

from pathlib import Path

import pytest

from graph200k.tasks import TaskConfig
from train.evaluate.config import EvalConfig, check
from train.evaluate.generate import ConfigError, load_config

CONFIGS = sorted(p for p in Path("configs/eval").glob("*.yaml") if not p.name.endswith("-tasks.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    check(load_config(EvalConfig, path))


def test_test_task_list():
    c = TaskConfig.load("configs/eval/visualcloze-test-tasks.yaml")
    assert len(c.families["conditional_generation"]) == 11
    names = {v.name for v in c.variants}
    for v in ("reference->target", "reference+depth->target", "reference+openpose->target", "target->reference",
              "target->depth", "target->openpose", "GaussianBlur->target", "Inpainting->target",
              "rotate90->target", "Elastic->target", "reference+Inpainting->target", "reference+filledit->target"):
        assert v in names
    assert c.row_counts == (3,) and c.reverse_mask_prob == 0.0 and c.prompt.drop_caption_prob == 0.0


def test_unknown_key_is_an_error(tmp_path):
    (tmp_path / "x.yaml").write_text("model:\n  recipie: fill\n")
    with pytest.raises(ConfigError, match="recipie"):
        load_config(EvalConfig, tmp_path / "x.yaml")
