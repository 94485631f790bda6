"""One table for three names of the same image: our node and member, the column of the released
Graph200K on the hub (`VisualCloze/Graph200K`, a `save_to_disk` DatasetDict), and the key the
reference trainer's `data.json` uses (GitHub lzyhha/VisualCloze, `processing.py`).

Export (graph200k.export) and import (pipelines.import_graph200k) both read it; docs/formats.md
prints it. The hub stores styles as variants 0-3 and FillEdit as 0-5; the reference trainer's
`processing.py` writes styles 0-2 and FillEdit 0-4 and only when all of them exist, and its
reader drops a style with fewer than 3 variants and FillEdit with fewer than 5.
"""

from __future__ import annotations

from dataclasses import dataclass

from graph200k.dataset import annotation_member


@dataclass(frozen=True)
class Column:
    node: str        # our node type
    member: str      # our shard member (variants: a format with {i})
    hub: str         # the hub's column (variants: a format with {i})
    reference: str   # the key in the reference's data.json `condition`
    variants: int = 0  # how many the hub holds (0: a single image)


# Single images, in the reference's processing order.
SINGLE = (
    Column("reference", "reference.jpg", "ref", "reference"),
    Column("target", "target.jpg", "target", "target"),
    Column("depthedit", "depthedit.0.jpg", "DepthEdit", "DepthEdit"),
    Column("mask", "mask.png", "qwen_2_5_mask", "mask"),
    Column("bbox", "bbox.png", "qwen_2_5_bounding_box", "bbox"),
    Column("sam2_mask", "sam2_mask.png", "sam2_mask", "sam2_mask"),
    Column("uniformer", "uniformer.png", "uniformer", "uniformer"),
    # The hub's `foreground` is the RMBG matte; foreground and background images are derived
    # from it online (black outside the matte), by the reference reader and by ours.
    Column("foreground", "rmbg.png", "foreground", "foreground"),
    Column("normal", "normal.png", "normal", "normal"),
    Column("depth", "depth.png", "depth", "depth"),
    Column("canny", "canny.png", "canny", "canny"),
    Column("hed", "hed.png", "hed", "hed"),
    Column("mlsd", "mlsd.png", "mlsd", "mlsd"),
    Column("openpose", "openpose.png", "openpose", "openpose"),
)

HUB_STYLE_VARIANTS = 4   # InstantStyle / ReduxStyle _{0-3}
HUB_FILLEDIT_VARIANTS = 6  # FillEdit_image_{0-5}
# What the reference's processing.py writes, and its reader's minimum to keep the node.
REFERENCE_STYLE_VARIANTS = 3
REFERENCE_FILLEDIT_VARIANTS = 5

VARIANT = (
    Column("instantstyle", "instantstyle.{i}.jpg", "InstantStyle_image_{i}", "InstantStyle",
           HUB_STYLE_VARIANTS),
    Column("instantstyle", "instantstyle_ref.{i}.jpg", "InstantStyle_ref_{i}", "InstantStyle",
           HUB_STYLE_VARIANTS),
    Column("reduxstyle", "reduxstyle.{i}.jpg", "ReduxStyle_image_{i}", "ReduxStyle",
           HUB_STYLE_VARIANTS),
    Column("reduxstyle", "reduxstyle_ref.{i}.jpg", "ReduxStyle_ref_{i}", "ReduxStyle",
           HUB_STYLE_VARIANTS),
    Column("filledit", "filledit.{i}.jpg", "FillEdit_image_{i}", "FillEdit",
           HUB_FILLEDIT_VARIANTS),
)

# Structured columns: which of our meta entries they come from.
FILLEDIT_META = "FillEdit_meta"      # {name, description} of the new subject: annotations.filledit
QWEN_META = "qwen_2_5_meta"          # boxes, names, mask colours: annotations.mask (and bbox)
TEXT_COLUMNS = ("quality_assessment", "description", "collection")
QUALITY_FIELDS = ("compositeStructure", "objectConsistency", "imageQuality")
DESCRIPTION_FIELDS = ("item", "category", "description_0", "description_1", "description_valid")

# Which annotate stage writes the members of a node (the importer's sidecars).
STAGE_OF_NODE = {"depthedit": "depthedit", "mask": "mask", "bbox": "mask",
                 "sam2_mask": "sam2_mask", "uniformer": "uniformer", "foreground": "rmbg",
                 "normal": "normal", "depth": "depth", "canny": "canny", "hed": "hed",
                 "mlsd": "mlsd", "openpose": "openpose", "instantstyle": "instantstyle",
                 "reduxstyle": "reduxstyle", "filledit": "filledit"}
SOURCE_NODES = ("target", "reference")


def hub_image_columns() -> list[str]:
    cols = [c.hub for c in SINGLE]
    for c in VARIANT:
        cols += [c.hub.format(i=i) for i in range(c.variants)]
    return cols


def hub_columns() -> list[str]:
    """Every column of the hub's Graph200K, images first."""
    return hub_image_columns() + [FILLEDIT_META, QWEN_META, *TEXT_COLUMNS]


def hub_features():
    """The hub's column types: an Image per image column; the text columns as structs (the
    Subjects200K fields); FillEdit_meta a {name, description} struct; qwen_2_5_meta a list
    of {bbox, name, color} per grounded object."""
    from datasets import Features, Image, List, Value

    feats = {c: Image() for c in hub_image_columns()}
    feats[FILLEDIT_META] = {"name": Value("string"), "description": Value("string")}
    feats[QWEN_META] = List({"bbox": List(Value("int64")), "name": Value("string"),
                             "color": List(Value("int64"))})
    feats["quality_assessment"] = {q: Value("int64") for q in QUALITY_FIELDS}
    feats["description"] = {"item": Value("string"), "category": Value("string"),
                            "description_0": Value("string"), "description_1": Value("string"),
                            "description_valid": Value("bool")}
    feats["collection"] = Value("string")
    return Features(feats)


def member_to_hub() -> dict[str, str]:
    """Our member -> the hub column, for every member a hub column holds."""
    out = {c.member: c.hub for c in SINGLE}
    for c in VARIANT:
        out.update({c.member.format(i=i): c.hub.format(i=i) for i in range(c.variants)})
    return out


MASK_ANNOTATION = annotation_member("mask")
FILLEDIT_ANNOTATION = annotation_member("filledit")
