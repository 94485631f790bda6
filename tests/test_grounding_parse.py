"""The grounding parser on real-looking Qwen2-VL / Qwen2.5-VL answers, without a model."""

import math

import pytest

from annotators import grounding as g
from annotators.grounding import QWEN2_5_VL, QWEN2_VL, Box

R0, R1, B0, B1 = "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"


def ref(name, *corners):
    """A name and its boxes, given as corner points: (x1, y1), (x2, y2), (x1, y1), ..."""
    pairs = zip(corners[0::2], corners[1::2])
    return f"{R0}{name}{R1}" + "".join(f"{B0}({a},{b}),({c},{d}){B1}" for (a, b), (c, d) in pairs)


def boxes_of(text, fmt=QWEN2_VL, size=(512, 512), input_size=None, **kw):
    return g.to_pixels(g.parse(text, fmt), fmt, size, input_size, **kw)


def test_qwen2_vl_answer_to_pixels():
    text = (ref("a red mug", (102, 250), (498, 900)) + " and " + ref("the table", (0, 600), (999, 999))
            + "<|im_end|>")
    boxes, dropped = boxes_of(text, size=(1000, 500))
    assert [b.name for b in boxes] == ["a red mug", "the table"]
    assert boxes[0].box == (102.0, 125.0, 498.0, 450.0)  # x per mille of 1000, y of 500
    assert boxes[1].box == (0.0, 300.0, 999.0, 499.5)
    assert not dropped


def test_qwen2_vl_several_boxes_after_one_name_and_a_box_without_name():
    text = ref("cups", (10, 10), (200, 200), (300, 300), (500, 500)) + f"{B0}(600,600),(900,900){B1}"
    boxes, _ = boxes_of(text, size=(1000, 1000))
    assert [b.name for b in boxes] == ["cups", "cups", "cups"]  # the last name seen
    boxes, _ = boxes_of(f"{B0}(600,600),(900,900){B1}", size=(1000, 1000))
    assert [b.name for b in boxes] == ["object"]


@pytest.mark.parametrize("text, reason", [
    (ref("cup", (10, 10), (200, 200))[:-len(B1)], g.TRUNCATED),  # cut off by max_new_tokens
    (f"{R0}cup{R1}{B0}(10,10),(20{B1}", g.MALFORMED),
    (f"{R0}cup{R1}{B0}10,10,200,200{B1}", g.MALFORMED),
    (f"{R0}cup{R1}{B0}(a,b),(c,d){B1}", g.MALFORMED),
    (ref("cup", (100, 100), (100, 400)), g.DEGENERATE),  # zero width
    (ref("cup", (1200, 100), (1500, 400)), g.OUTSIDE),
    (ref("cup", (-300, -300), (-10, -10)), g.OUTSIDE),
])
def test_qwen2_vl_bad_entries_are_dropped_with_their_reason(text, reason):
    boxes, dropped = boxes_of(text)
    assert boxes == [] and dropped == {reason: 1}


def test_qwen2_vl_unclosed_box_followed_by_a_good_one():
    text = f"{R0}cup{R1}{B0}(10,10),(20,2" + f"{B0}(100,100),(400,400){B1}"
    boxes, dropped = boxes_of(text, size=(1000, 1000))
    assert [b.box for b in boxes] == [(100.0, 100.0, 400.0, 400.0)]
    assert dropped == {g.TRUNCATED: 1}


def test_clipped_swapped_duplicated_and_limited():
    text = (ref("mug", (-50, 100), (400, 1100))  # over the border: clipped
            + ref("mug", (-40, 100), (400, 1100))  # the same object again
            + ref("plate", (900, 800), (600, 500))  # corners swapped: the same box
            + ref("fork", (10, 10), (60, 60)) + ref("knife", (70, 70), (120, 120)))
    boxes, dropped = boxes_of(text, size=(1000, 1000), max_objects=3)
    assert [b.name for b in boxes] == ["mug", "plate", "fork"]
    assert boxes[0].box == (0.0, 100.0, 400.0, 1000.0)
    assert boxes[1].box == (600.0, 500.0, 900.0, 800.0)
    assert dropped == {g.DUPLICATE: 1, g.OVER_LIMIT: 1}


def test_qwen2_5_vl_json_in_pixels_of_the_resized_input():
    text = ('```json\n[\n\t{"bbox_2d": [56, 112, 280, 448], "label": "ceramic mug"},\n'
            '\t{"bbox_2d": [0, 300, 504, 504], "label": "wooden table"}\n]\n```')
    boxes, dropped = boxes_of(text, QWEN2_5_VL, size=(1024, 1024), input_size=(504, 504))
    s = 1024 / 504
    assert [b.name for b in boxes] == ["ceramic mug", "wooden table"]
    assert boxes[0].box == pytest.approx((56 * s, 112 * s, 280 * s, 448 * s), abs=0.01)
    assert boxes[1].box[3] == 1024.0 and not dropped


def test_qwen2_5_vl_truncated_relaxed_and_malformed():
    text = ('[{"bbox_2d": [10, 10, 100, 100], "label": "cup"}, '
            "{'bbox_2d': [1, 2, 3], 'label': 'x'}, "  # not JSON, not 4 numbers
            '{"bbox_2d": [20, 20, 90, 95], "label": "lid",}, '  # trailing comma: the fields
            '{"bbox_2d": [200, 200, 300, 300], "label": true}, '
            '{"bbox_2d": [5, 5, 50')  # cut off
    boxes, dropped = boxes_of(text, QWEN2_5_VL, size=(400, 400), input_size=(400, 400))
    assert [b.name for b in boxes] == ["cup", "lid", "object"]
    assert dropped == {g.MALFORMED: 1, g.TRUNCATED: 1}


def test_qwen2_5_vl_non_finite_and_bad_types():
    text = ('[{"bbox_2d": [NaN, 1, 50, 50], "label": "a"}, {"bbox_2d": [1e999, 1, 50, 50]}, '
            '{"bbox_2d": ["1", 2, 3, 4], "label": "b"}, {"bbox_2d": [true, 2, 30, 40]}]')
    boxes, dropped = boxes_of(text, QWEN2_5_VL, size=(100, 100), input_size=(100, 100))
    assert boxes == [] and dropped == {g.NON_FINITE: 2, g.MALFORMED: 2}


@pytest.mark.parametrize("text", [
    "", "   ", "I cannot see any objects in this image.", "<|im_end|>", "<|box_start|>",
    "<|box_end|><|object_ref_end|>((((", "ȡ�stems�7���er��>Zz�lIss", "{", "[{}]",
    '{"bbox_2d": {"x": 1}}', "\x00\x01\ufffd" * 50, None, 12345,
])
@pytest.mark.parametrize("fmt", [QWEN2_VL, QWEN2_5_VL])
def test_garbage_never_crashes_and_has_no_box(text, fmt):
    parsed = g.parse(text, fmt)
    boxes, dropped = g.to_pixels(parsed, fmt, (64, 64), (56, 56))
    assert boxes == []
    reason = g.why_none(parsed, dropped, text)
    assert reason.startswith("no usable box (")


def test_why_none_says_what_was_found():
    text = ref("cup", (100, 100), (100, 400)) + ref("cup", (1200, 0), (1300, 10))
    parsed = g.parse(text, QWEN2_VL)
    boxes, dropped = g.to_pixels(parsed, QWEN2_VL, (64, 64))
    assert boxes == []
    assert g.why_none(parsed, dropped, text).startswith(
        "no usable box (2 found: 1 degenerate, 1 outside the image); answer begins")


def test_names_are_cleaned_and_bounded():
    boxes, _ = boxes_of(ref("  the  <|im_start|> Mug.\n ", (0, 0), (500, 500))
                        + ref("x" * 300, (500, 500), (999, 999)), size=(100, 100))
    assert boxes[0].name == "the Mug" and len(boxes[1].name) == 64


def test_unknown_format_is_an_error_naming_the_known_ones():
    with pytest.raises(ValueError, match="qwen2_vl, qwen2_5_vl"):
        g.parse("", "florence")


def b(name, area_side):
    return Box(name, (0.0, 0.0, float(area_side), float(area_side)))


@pytest.mark.parametrize("names, item, expected", [
    (["table", "red mug"], "red mug", (1, "name")),
    (["table", "the red mugs"], "Red Mug", (1, "name")),  # articles, case, plural
    (["table", "mug"], "ceramic coffee mug", (1, "partial")),
    (["table", "coffee cup", "saucer"], "coffee mug", (1, "words")),
    (["table", "wall"], "sneaker", (0, "largest")),
    (["table", "wall"], "", (0, "largest")),
])
def test_match_subject(names, item, expected):
    boxes = [b(n, 100 - 10 * i) for i, n in enumerate(names)]
    assert g.match_subject(boxes, item) == expected


def test_match_subject_without_boxes():
    assert g.match_subject([], "cup") == (None, "none")


def test_iou():
    assert g.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert g.iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert math.isclose(g.iou((0, 0, 10, 10), (5, 0, 15, 10)), 1 / 3)
