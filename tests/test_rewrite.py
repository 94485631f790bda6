"""Caption rewrites (VLM replies parsed) and the records pool."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from generative_helpers import write_subject_shards
from annotators.rewrite import FILL, RewriteError, parse_rewrites, rewrite_prompt
from annotators.side_inputs import ConfigError, load_side_input


def test_a_json_list_in_the_reply_parses_fences_and_chatter_aside():
    reply = ('Sure! Here they are:\n```json\n[{"subject": "teapot", "caption": "A teapot on a '
             'white saucer."}, {"subject": "Teapot", "caption": "again"}, {"subject": "coffee '
             'cup", "caption": "the old one"}, {"subject": "", "caption": "x"}, "noise", '
             '{"subject": "bowl", "caption": "A bowl  of  soup on a saucer."}]\n```')
    edits = parse_rewrites(reply, 5, old_subject="coffee cup")
    assert edits == [{"subject": "teapot", "caption": "A teapot on a white saucer."},
                     {"subject": "bowl", "caption": "A bowl of soup on a saucer."}]
    assert len(parse_rewrites(reply, 1, "coffee cup")) == 1


@pytest.mark.parametrize("reply", ["labelled the the cup", "[not json at all]",
                                   '{"subject": "a", "caption": "b"}', "[]",
                                   '[{"subject": "cup", "caption": "same subject"}]'])
def test_replies_without_a_new_subject_do_not_parse(reply):
    with pytest.raises(RewriteError, match="the rewrite does not parse"):
        parse_rewrites(reply, 3, old_subject="cup")


def test_prompts_name_the_subject_the_caption_and_the_count():
    p = rewrite_prompt(FILL, "cup", "  A cup on a table. ", 5)
    assert '"A cup on a table."' in p and '"cup"' in p and "Invent 5" in p
    assert "background stays the same" in p


def test_records_pool_from_shards_and_parquet(tmp_path):
    pool = load_side_input("subject_pool", {"kind": "records",
                                            "path": str(write_subject_shards(tmp_path / "s"))})
    assert len(pool) == 8
    vehicles = pool.of_category("Vehicles")
    assert sorted(pool.record(i)["item"] for i in vehicles) == ["motorcycle", "rocket"]
    assert pool.of_category("Minerals") == []
    back = pickle.loads(pickle.dumps(pool))  # what travels to the workers
    assert back.of_category("Vehicles") == vehicles
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item": ["cup", "mug"], "category": ["Kitchen"] * 2,
                             "description": ["A cup.", "A mug."]}), path)
    table = load_side_input("p", {"kind": "records", "path": str(path), "limit": 1})
    assert table.ids == ["0"] and table.record("0")["item"] == "cup"
    pq.write_table(pa.table({"item": ["cup"]}), tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['category', 'description'\]"):
        load_side_input("p", {"kind": "records", "path": str(tmp_path / "bad.parquet")})
