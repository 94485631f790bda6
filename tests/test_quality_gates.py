"""Quality gates in the task sampler, `sample_tasks --stats` and the manifest column."""

import json

import pytest

from graph200k import sample_tasks
from graph200k.manifest import Manifest
from graph200k.tasks import TaskConfig, TaskError, TaskSampler

STYLE_TASK = {"families": {"style": {"variants": [["canny", "instantstyle"]]}}}
EDIT_TASK = {"families": {"edit": {"variants": [["target", "filledit"]]}}}


def scores(good: list[int], n: int, node="instantstyle") -> str:
    return json.dumps({node: {str(v): {"style": 0.9, "content": 0.9 if v in good else 0.1,
                                       "subject_change": 0.3 if v in good else 0.0,
                                       "clip_t": 0.3, "background": 0.99,
                                       "flags": [] if v in good else ["uniform"]}
                              for v in range(n)}})


def manifest(node="instantstyle", n=4):
    recs = [{"key": f"k{i}", "shard": 0, "nodes": ["target", "canny", node],
             "variants": {node: n}, "quality_scores": scores([i % n], n, node)}
            for i in range(8)]
    recs.append({"key": "unscored", "shard": 0, "nodes": ["target", "canny", node],
                 "variants": {node: n}})
    recs.append({"key": "all_bad", "shard": 0, "nodes": ["target", "canny", node],
                 "variants": {node: n}, "quality_scores": scores([], n, node)})
    return Manifest.from_records(recs, test_fraction=0.0)


def drawn(sampler, node, tasks=200):
    out = set()
    for t in sampler.take(tasks):
        for row in t.rows:
            out |= {(c["key"], c["variant"]) for c in row if c["node"] == node}
    return out


@pytest.mark.parametrize("gate", [{"style": {"content_min": 0.5}}, {"reject_flags": True}])
def test_a_gated_variant_is_never_drawn(gate):
    m = manifest()
    config = TaskConfig.from_dict({**STYLE_TASK, "quality": gate})
    s = TaskSampler(m, config, seed=0)
    seen = drawn(s, "instantstyle")
    scored = {(f"k{i}", v) for i in range(8) for v in range(4)}
    assert {x for x in seen if x in scored} == {(f"k{i}", i % 4) for i in range(8)}
    assert not any(k == "all_bad" for k, _ in seen)  # nothing left: not eligible at all
    assert {v for k, v in seen if k == "unscored"} == {0, 1, 2, 3}  # unscored: every variant
    name = "instantstyle.content_min" if "style" in gate else "instantstyle.flags"
    assert s.gate_counts == {name: 8 * 3 + 4}


def test_gates_off_draw_as_the_paper_does():
    m = manifest()
    off = TaskSampler(m, TaskConfig.from_dict(STYLE_TASK), seed=3).take(50)
    default = TaskConfig.from_dict({**STYLE_TASK, "quality": {"style": {"content_min": None}}})
    assert [t.to_json() for t in TaskSampler(m, default, seed=3).take(50)] == [t.to_json() for t in off]
    assert len({v for k, v in drawn(TaskSampler(m, TaskConfig.from_dict(STYLE_TASK)), "instantstyle")
                if k == "k0"}) == 4


def test_edit_gate_drops_unchanged_edits_and_every_sample_gated_is_an_error():
    m = manifest("filledit")
    config = TaskConfig.from_dict({**EDIT_TASK, "quality": {"edit": {"subject_change_min": 0.1}}})
    seen = drawn(TaskSampler(m, config, seed=1), "filledit")
    assert all(v == int(k[1:]) % 4 for k, v in seen if k.startswith("k"))
    every = Manifest.from_records([{"key": "a", "shard": 0, "nodes": ["target", "filledit"],
                                    "variants": {"filledit": 2},
                                    "quality_scores": scores([], 2, "filledit")}], 0.0)
    with pytest.raises(TaskError):
        TaskSampler(every, config, seed=0)


def test_manifest_keeps_the_scores_and_sample_tasks_stats_prints_the_gates(tmp_path, capsys):
    m = manifest()
    path = m.save(tmp_path / "manifest.parquet")
    back = Manifest.load(path)
    assert back.scores(0) == m.scores(0) and json.loads(back.scores(0))["instantstyle"]
    assert back.scores(back.index_of("unscored")) == ""
    config = tmp_path / "tasks.yaml"
    config.write_text(json.dumps({**STYLE_TASK, "quality": {"reject_flags": True}}))
    assert sample_tasks.main(["--manifest", str(path), "--config", str(config), "--num", "20",
                              "--stats", "--on-stale", "ignore"]) == 0
    out = capsys.readouterr().out
    assert "quality gates: 28 variant(s) removed" in out
    assert "instantstyle.flags" in out and " 28" in out
    plain = tmp_path / "plain.yaml"
    plain.write_text(json.dumps(STYLE_TASK))
    assert sample_tasks.main(["--manifest", str(path), "--config", str(plain), "--num", "5",
                              "--stats", "--on-stale", "ignore"]) == 0
    assert "quality gates: off" in capsys.readouterr().out


def test_the_default_task_config_has_every_gate_off():
    assert not TaskConfig.load().quality.active


def test_the_pair_stream_keeps_the_gates():
    from graph200k.stream import pair_config

    config = TaskConfig.from_dict({**EDIT_TASK, "quality": {"reject_flags": True}})
    paired = pair_config(config)
    assert paired.quality.reject_flags
    seen = drawn(TaskSampler(manifest("filledit"), paired, seed=0), "filledit")
    assert all(v == int(k[1:]) % 4 for k, v in seen if k.startswith("k"))


def test_summary_histograms_and_gate_counts():
    from graph200k.quality import QualityGates, markdown, summarize

    cells = manifest().quality_scores.to_pylist()
    s = summarize(cells, QualityGates.from_config({"reject_flags": True}))
    assert s["scored"] == {"instantstyle": 9 * 4}
    content = s["histograms"][("instantstyle", "content")]
    assert content[1] == 8 * 3 + 4 and content[9] == 8 and sum(content) == 36
    assert s["flags"]["instantstyle"] == {"uniform": 28}
    assert s["removed"] == {"instantstyle.flags": 28}
    text = "\n".join(markdown(s))
    assert "| instantstyle.flags | 28 |" in text and "24 0 0 0 0 0 0 0 8" not in text
    assert "| instantstyle | content |" in text
    assert "gates: off" in "\n".join(markdown(summarize(cells)))


def test_dataset_card_and_browse_show_histograms_and_gates(tmp_path):
    from graph200k.browse.pages import quality_html
    from graph200k.dataset_card import render
    from graph200k.quality import QualityGates, summarize

    manifest().save(tmp_path / "manifest.parquet")
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(json.dumps({**STYLE_TASK, "quality": {"style": {"content_min": 0.5}}}))
    card = render(tmp_path, tasks_path=tasks)
    section = card.split("## Quality scores", 1)[1]
    assert "| instantstyle.content_min | 28 |" in section
    assert "| instantstyle | content |" in section

    class Stub:
        def quality_summary(self):
            return summarize(manifest().quality_scores.to_pylist(),
                             QualityGates.from_config({"reject_flags": True}))

    html = quality_html(Stub())
    assert "id=quality-gates" in html and "data-count=28" in html
    assert "<td>content<td data-counts='0 28 0 0 0 0 0 0 0 8'>" in html
