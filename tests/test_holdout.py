"""The unseen-task holdout (configs/tasks-unseen.yaml): named variants never reach training, and
validation draws only from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from graph200k.stream import GridStream
from graph200k.tasks import TaskConfig
from train.common.validation import ValidationConfig, select_tasks

ROOT = Path(__file__).resolve().parents[1]
HOLDOUT = ROOT / "configs/tasks-unseen.yaml"


def test_holdout_extends_the_task_families_and_names_real_variants():
    base, holdout = TaskConfig.load(ROOT / "configs/tasks.yaml"), TaskConfig.load(HOLDOUT)
    assert holdout.families == base.families and holdout.weights == base.weights
    assert len(holdout.unseen) == 5 and holdout.unseen <= {v.name for v in base.variants}
    # Composition, not novelty: every node of a held-out variant is trained in some other variant.
    trained = {n for v in base.variants if v.name not in holdout.unseen for n in v.nodes}
    assert all(set(v.nodes) <= trained for v in base.variants if v.name in holdout.unseen)


def test_a_misspelt_holdout_variant_is_an_error(tmp_path):
    bad = tmp_path / "holdout.yaml"
    bad.write_text(yaml.safe_dump({"include": str(ROOT / "configs/tasks.yaml"), "unseen": ["reference+dept->target"]}))
    with pytest.raises(ValueError, match="unseen variant 'reference\\+dept->target' is not a variant of any family; "
                                         "did you mean 'reference\\+depth->target'"):
        TaskConfig.load(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("include: loop.yaml\n")
    with pytest.raises(ValueError, match="includes itself"):
        TaskConfig.load(loop)


@pytest.mark.parametrize("mode", ["grid", "pair"])
def test_training_never_sees_the_holdout_and_validation_sees_only_it(annotated_shards, mode):
    folder, manifest = annotated_shards
    stream = GridStream(folder, manifest, res=32, tasks_config=HOLDOUT, mode=mode, max_tasks=400)
    unseen = stream.config.unseen
    trained = {stream.task(i).variant for i in range(400)}
    assert trained and not trained & unseen
    tasks = select_tasks(ValidationConfig(every=1, num_tasks=2), stream.manifest, stream.config,
                         say=pytest.fail)  # no fallback: the shards satisfy held-out variants
    assert tasks and {t.variant for t in tasks} <= unseen
