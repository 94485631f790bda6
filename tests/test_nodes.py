import collections

import pytest

from graph200k import nodes


def test_the_papers_49_types_plus_reference():
    assert len(nodes.NODE_TYPES) == 50
    kinds = collections.Counter(n.kind for n in nodes.NODE_TYPES.values())
    assert kinds == {"image": 2, "condition": 12, "style": 2, "edit": 2, "degradation": 32}
    assert set(nodes.CONDITIONS) == {"canny", "hed", "mlsd", "depth", "normal", "openpose",
                                     "uniformer", "sam2_mask", "mask", "bbox", "foreground",
                                     "background"}
    assert len(set(nodes.DEGRADATIONS)) == 32
    # the paper's count: everything but the reference photo
    assert len([n for n in nodes.NODE_TYPES if n != "reference"]) == 49


def test_bbox_is_a_stored_condition_on_the_last_bit():
    bbox = nodes.node_type("bbox")
    assert bbox.kind == "condition" and not bbox.online and bbox.members == ("bbox.png",)
    assert nodes.member_node("bbox.png") == "bbox"
    # appended after the degradations: the bits of manifests written before it are unchanged
    assert nodes.NODE_BIT["bbox"] == 49 and nodes.NODE_NAMES[-1] == "bbox"
    assert nodes.NODE_BIT["target"] == 0 and nodes.NODE_BIT["rotate270"] == 48
    assert nodes.mask_of(["bbox"]) < 2 ** 64
    assert "bbox" in nodes.available_nodes({"target.jpg", "bbox.png"})
    assert not hasattr(nodes, "BBOX_META_FIELD")


def test_styles_contribute_two_images_everything_else_one():
    for n in nodes.NODE_TYPES.values():
        assert n.num_images == (2 if n.kind == "style" else 1), n.name
    inst = nodes.node_type("instantstyle")
    assert [s.member for s in inst.slots] == ["instantstyle_ref.0.jpg", "instantstyle.0.jpg"]
    assert inst.slots[-1].name == "instantstyle"  # the stylized image is the node's output


def test_every_slot_has_at_least_five_distinct_phrases():
    for slot in nodes.SLOTS.values():
        assert len(slot.phrases) >= 5, slot.name
        assert len(set(slot.phrases)) == len(slot.phrases), slot.name
        assert all(p and p.strip() == p for p in slot.phrases)


def test_rotation_phrases_say_clockwise():
    assert "90 degrees clockwise" in nodes.node_type("rotate90").phrases[0]
    assert "270 degrees clockwise" in nodes.node_type("rotate270").phrases[0]


def test_online_nodes_and_their_sources():
    assert nodes.node_type("blur").online and nodes.node_type("blur").members == ("target.jpg",)
    assert nodes.node_type("foreground").members == ("rmbg.png",)
    assert not nodes.node_type("canny").online


def test_bitmask_round_trip_and_member_availability():
    m = nodes.mask_of(["target", "canny", "reduxstyle"])
    assert nodes.names_of(m) == ["target", "canny", "reduxstyle"]
    have = nodes.available_nodes({"target.jpg", "canny.png", "reduxstyle.0.jpg", "meta.json"})
    assert "reduxstyle" not in have  # the style reference is missing
    assert {"target", "canny", "blur", "rotate270"} <= set(have)
    assert "foreground" not in have


def test_unknown_node_type_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown node type 'cany'.*canny"):
        nodes.mask_of(["cany"])
