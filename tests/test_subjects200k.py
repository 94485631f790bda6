import numpy as np
import pytest
from PIL import Image

from graph200k import fixtures
from graph200k.subjects200k import (PanelGeometry, RowError, clean_text, description_invalid,
                                    load_subjects200k, panel_geometry, passes_quality,
                                    resolve_quality, row_to_samples, split_panels)


@pytest.mark.parametrize("size, expected", [
    ((1056, 528), PanelGeometry(512, 8)),     # published collections 1-2
    ((2112, 1056), PanelGeometry(1024, 16)),  # 1024^2 panels, margins scaled
    ((2080, 1040), PanelGeometry(1024, 8)),   # 1024^2 panels, 8 px margins
    ((1048, 528), PanelGeometry(512, 8)),     # right margin p instead of 2p
])
def test_panel_geometry_is_derived_from_the_size(size, expected):
    assert panel_geometry(*size) == expected


def test_published_crop_boxes():
    assert PanelGeometry(512, 8).boxes() == ((8, 8, 520, 520), (528, 8, 1040, 520))


@pytest.mark.parametrize("size", [(600, 600), (1000, 300), (1056, 600)])
def test_sizes_with_no_panel_layout_are_rejected(size):
    with pytest.raises(RowError, match="fits no two-panel layout"):
        panel_geometry(*size)


@pytest.mark.parametrize("panel, margin", [(512, 8), (1024, 16)])
def test_split_returns_exactly_the_two_panels(panel, margin):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (panel, panel, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (panel, panel, 3), dtype=np.uint8)
    comp = fixtures.composite(Image.fromarray(a), Image.fromarray(b), margin)
    left, right = split_panels(comp)
    assert np.array_equal(np.asarray(left), a)
    assert np.array_equal(np.asarray(right), b)


def test_quality_presets_and_thresholds():
    good = {"compositeStructure": 5, "objectConsistency": 5, "imageQuality": 5}
    mid = {"compositeStructure": 4, "objectConsistency": 3, "imageQuality": 5}
    assert passes_quality(mid, resolve_quality("visualcloze"))
    assert not passes_quality(mid, resolve_quality("ominicontrol"))
    assert passes_quality(good, resolve_quality("ominicontrol"))
    assert not passes_quality({"objectConsistency": 2}, resolve_quality("visualcloze"))
    assert not passes_quality(None, resolve_quality("visualcloze"))
    assert resolve_quality("objectConsistency=4,imageQuality=2") == {"objectConsistency": 4,
                                                                     "imageQuality": 2}
    with pytest.raises(ValueError, match="unknown quality field"):
        resolve_quality("sharpness=3")
    with pytest.raises(ValueError, match="preset"):
        resolve_quality("strict")


def test_reader_reads_the_fixture_parquet_with_datasets(mini_parquet):
    ds = load_subjects200k(str(mini_parquet))
    assert len(ds) == 16  # 12 rows + 4 bad ones appended
    row = ds[0]
    assert set(row) == {"image", "collection", "quality_assessment", "description"}
    assert row["description"]["description_valid"] is True
    assert isinstance(row["image"]["bytes"], bytes)  # left undecoded on purpose
    samples = row_to_samples(row, 0)
    assert samples[0]["__key__"] == "0000000"
    assert samples[0]["target"].shape == (512, 512, 3)
    assert samples[0]["meta"]["description"] == row["description"]["description_0"]
    assert samples[0]["meta"]["reference_description"] == row["description"]["description_1"]
    big = ds[4]  # every 5th fixture row is a collection_3 row of 1024^2 panels
    assert big["collection"] == "collection_3"
    assert row_to_samples(big, 4)[0]["target"].shape == (1024, 1024, 3)


def test_both_panels_make_two_samples_with_swapped_roles(mini_parquet):
    row = load_subjects200k(str(mini_parquet))[1]
    s0, s1 = row_to_samples(row, 1, panels="both")
    assert (s0["__key__"], s1["__key__"]) == ("0000001_0", "0000001_1")
    assert np.array_equal(s0["target"], s1["reference"])
    assert s1["meta"]["description"] == row["description"]["description_1"]


def test_bad_rows_raise_row_errors_with_reasons(mini_parquet):
    ds = load_subjects200k(str(mini_parquet))
    with pytest.raises(RowError, match="does not decode"):
        row_to_samples(ds[12], 12)
    with pytest.raises(RowError, match="600x600 fits no two-panel layout"):
        row_to_samples(ds[13], 13)
    with pytest.raises(RowError, match="description_0 is missing"):
        row_to_samples(ds[14], 14)


# -- descriptions: cleaned and capped at ingest --------------------------------------------

def test_control_characters_are_removed_and_normal_whitespace_kept():
    dirty = "A red\x00 cup\x1b[1;31m on a table\x1b[0m,\tsteam\x07 rising.\nIt is\x7f hot\u202e.\r"
    text, changes = clean_text(dirty, 1000)
    assert text == "A red cup on a table,\tsteam rising.\nIt is hot.\r"
    assert changes == {"original_chars": len(dirty), "removed_chars": len(dirty) - len(text)}


def test_escape_sequences_go_whole_not_just_their_escape_character():
    text, changes = clean_text("cat\x1b]0;title\x07 on\x1b[38;5;208m a mat\x1bc", 1000)
    assert text == "cat on a mat"
    assert changes["removed_chars"] == 10 + 11 + 2  # OSC title, 256-colour SGR, reset


def test_clean_text_leaves_clean_text_alone():
    assert clean_text("Ünïcode café, 猫 and emoji 🐱 stay.", 1000) == (
        "Ünïcode café, 猫 and emoji 🐱 stay.", {})


def test_long_descriptions_are_capped_at_a_word_boundary_and_recorded():
    long = ("A ginger cat sleeps on a windowsill in the sun. " * 5000)[:200_000]
    text, changes = clean_text(long, 1000)
    assert len(text) <= 1000 and len(text) > 800
    assert long.startswith(text) and long[len(text)] == " "  # cut between words
    assert changes == {"original_chars": 200_000, "truncated_to": len(text)}
    one_word = "x" * 5000  # no boundary near the cap: cut at the cap exactly
    assert clean_text(one_word, 1000)[0] == "x" * 1000


def test_row_meta_records_cleaning_and_the_validity_flag(mini_parquet):
    ds = load_subjects200k(str(mini_parquet))
    clean = row_to_samples(ds[0], 0)[0]["meta"]
    assert clean["description_valid"] is True and "cleaned" not in clean
    dirty = row_to_samples(ds[2], 2)[0]["meta"]  # control characters (fixtures, `bad`)
    assert not any(c in dirty["description"] for c in "\x00\x1b\x07\x7f\u202e")
    assert dirty["description"].startswith("A cup of coffee with latte art on a white saucer")
    assert dirty["item"] == "coffee cup"
    assert set(dirty["cleaned"]) == {"description", "item"}
    assert dirty["cleaned"]["item"] == {"original_chars": 11, "removed_chars": 1}
    long = row_to_samples(ds[3], 3, max_description_chars=500)[0]["meta"]  # 200,000 chars
    assert len(long["description"]) <= 500
    assert long["cleaned"]["description"]["original_chars"] == 200_000
    invalid = row_to_samples(ds[15], 15)[0]["meta"]  # kept as data; the filter is ingest's
    assert invalid["description_valid"] is False and description_invalid(ds[15])
    assert not description_invalid(ds[0])
    assert not description_invalid({"description": {"description_0": "x"}})  # unknown: kept


def test_a_description_of_only_control_characters_is_a_row_error(mini_parquet):
    row = load_subjects200k(str(mini_parquet))[0]
    row = {**row, "description": {**row["description"], "description_0": "\x00\x1b[0m\x07"}}
    with pytest.raises(RowError, match="description_0 holds only control characters"):
        row_to_samples(row, 0)
