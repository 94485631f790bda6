"""`make demo DEMO=some/dir`: every path the demo's commands and configs use is under DEMO
(the tiny configs name build/demo themselves: that used to end in a ShardError)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def demo_commands(demo: Path) -> list[str]:
    out = subprocess.run(["make", "-n", "demo", f"DEMO={demo}", "PY=python"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    # the toolkit's own commands (not the install's pip lines)
    return [line for line in out.splitlines()
            if any(f" -m {pkg}." in line for pkg in ("graph200k", "pipelines", "annotators", "train"))]


def with_overrides(config: Path, overrides: list[str]) -> dict:
    """The YAML with `a.b=value` overrides set (values parsed as YAML, as the recipes do)."""
    data = yaml.safe_load(config.read_text())
    for ov in overrides:
        key, value = ov.split("=", 1)
        *path, last = key.split(".")
        node = data
        for p in path:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)
    return data


def strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)
    elif isinstance(obj, str):
        yield obj


def test_every_demo_path_follows_DEMO(tmp_path):
    demo = tmp_path / "elsewhere"
    commands = demo_commands(demo)
    assert any("pipelines.annotate" in c for c in commands)
    assert not [c for c in commands if "build/demo" in c]
    configs = 0
    for line in commands:
        argv = shlex.split(line)
        if "--config" not in argv:
            continue
        config = argv[argv.index("--config") + 1]
        overrides = [a for a in argv[argv.index("--config") + 2:] if "=" in a and
                     not a.startswith("-")]
        if Path(config).is_absolute():  # the annotate config the demo writes for DEMO
            subprocess.run(["make", config, f"DEMO={demo}"], cwd=ROOT, check=True,
                           capture_output=True)
            data = yaml.safe_load(Path(config).read_text())
            assert data["side_inputs"]["style_pool"]["path"] == f"{demo}/shards/source"
        else:
            data = with_overrides(ROOT / config, overrides)
        stale = [s for s in strings(data) if "build/demo" in s]
        assert not stale, (config, stale)
        configs += 1
    assert configs == 5  # annotate, two trainers, two evaluations


def test_eval_overrides_are_fields_of_the_eval_config(tmp_path):
    """The overrides the demo passes load through the evaluation's own config loader."""
    from train.evaluate.config import EvalConfig
    from train.evaluate.generate import load_config

    demo = tmp_path / "d"
    for line in demo_commands(demo):
        argv = shlex.split(line)
        if "train.evaluate" in argv:
            i = argv.index("--config")
            cfg = load_config(EvalConfig, ROOT / argv[i + 1], argv[i + 2:])
            assert cfg.data.shards == f"{demo}/shards/graph200k"
            assert cfg.out_dir.startswith(str(demo)) and cfg.model.loras[0].startswith(str(demo))
            assert cfg.models.iqa == f"{demo}/eval-models/iqa"
