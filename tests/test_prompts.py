import random
import re

from graph200k import prompts
from graph200k.prompts import PromptConfig, build_prompt


def test_at_least_ten_templates_each():
    assert len(prompts.LAYOUT_TEMPLATES) >= 10
    assert len(prompts.TASK_TEMPLATES) >= 10
    assert len(prompts.CONTENT_TEMPLATES) >= 10


def test_parts_describe_every_column_with_image_tags():
    rng = random.Random(0)
    p = build_prompt(["reference", "canny", "target"], 2, "a red cup", rng,
                     PromptConfig(1.0, 1.0, 0.0))
    assert re.findall(r"\[IMAGE(\d)\]", p["task"]) == ["1", "2", "3"]
    assert "2" in p["layout"] and "3" in p["layout"]
    assert "a red cup" in p["content"]
    assert p["text"] == f'{p["layout"]} {p["task"]} {p["content"]}'


def test_no_content_when_the_target_is_not_the_image():
    p = build_prompt(["target", "depth"], 1, "a red cup", random.Random(0))
    assert p["content"] is None and not p["keep_content"]


def test_keep_and_drop_probabilities():
    rng = random.Random(1)
    n = 20000
    ps = [build_prompt(["canny", "target"], 1, "a cup", rng) for _ in range(n)]
    assert abs(sum(p["keep_task"] for p in ps) / n - 0.8) < 0.015
    assert abs(sum(p["keep_content"] for p in ps) / n - 0.8) < 0.015
    assert abs(sum(p["dropped"] for p in ps) / n - 0.1) < 0.01
    assert all(p["text"] == "" for p in ps if p["dropped"])
    kept = [p for p in ps if not p["dropped"] and not p["keep_task"]]
    assert all(p["task"] not in p["text"] and p["layout"] in p["text"] for p in kept)


def test_probabilities_are_configurable():
    cfg = PromptConfig.from_dict({"keep_task_prob": 0.0, "drop_caption_prob": 0.0})
    p = build_prompt(["canny", "target"], 1, "a cup", random.Random(0), cfg)
    assert p["task"] not in p["text"]
    try:
        PromptConfig.from_dict({"keep_tsk_prob": 1})
    except ValueError as e:
        assert "keep_tsk_prob" in str(e)
    else:
        raise AssertionError("unknown prompt option accepted")


def test_description_is_lowercased_only_where_it_continues_a_sentence():
    seen = set()
    for seed in range(200):
        p = build_prompt(["canny", "target"], 1, "A red cup.", random.Random(seed),
                         PromptConfig(1.0, 1.0, 0.0))
        seen.add(p["content"])
        assert ("A red cup." in p["content"]) == (": A red cup." in p["content"])
    assert any("a red cup." in c for c in seen) and any(": A red cup." in c for c in seen)


def test_templates_file_replaces_the_parts_it_lists(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("layout: ['{rows}x{cols} grid, {n} images.']\ncontent: ['Depicts: {desc}']\n")
    cfg = PromptConfig.from_dict({"templates": str(path), "keep_task_prob": 1.0, "keep_content_prob": 1.0,
                                  "drop_caption_prob": 0.0})
    p = build_prompt(["canny", "target"], 3, "A red cup.", random.Random(0), cfg)
    assert p["layout"] == "3x2 grid, 6 images." and p["content"] == "Depicts: A red cup."
    assert "[IMAGE1]" in p["task"] and "[IMAGE2]" in p["task"]
    assert cfg.task_templates == prompts.TASK_TEMPLATES  # not listed: ours


def test_shipped_diffusers_templates_give_diffusers_sentences():
    from graph200k.tasks import TaskConfig

    cfg = PromptConfig.from_dict({"templates": "configs/prompts/diffusers.yaml", "keep_task_prob": 1.0,
                                  "keep_content_prob": 1.0, "drop_caption_prob": 0.0})
    p = build_prompt(["canny", "target"], 2, "A red cup.", random.Random(0), cfg)
    assert p["text"].startswith("A grid layout with 2 rows and 2 columns, displaying 4 images arranged side by side.")
    # diffusers' encode_prompt puts this prefix before the content prompt, verbatim.
    assert p["text"].endswith(" The last image of the last row depicts: A red cup.")
    assert TaskConfig.load().prompt.templates is None  # configs/tasks.yaml: our templates


def test_bad_templates_file_names_the_file_and_template(tmp_path):
    import pytest

    bad = tmp_path / "bad.yaml"
    bad.write_text("layout: ['{rows} rows of {width}']\n")
    with pytest.raises(ValueError, match=r"bad.yaml: layout template '\{rows\} rows of \{width\}'"):
        PromptConfig.from_dict({"templates": str(bad)})
    bad.write_text("captions: ['x']\n")
    with pytest.raises(ValueError, match="unknown key"):
        PromptConfig.from_dict({"templates": str(bad)})
    with pytest.raises(ValueError, match="is not a file"):
        PromptConfig.from_dict({"templates": str(tmp_path / "missing.yaml")})
