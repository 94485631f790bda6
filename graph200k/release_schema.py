"""The columns of a released Graph200K as `datasets` sees them, declared in the dataset card.

`datasets`' webdataset builder infers columns from the first five samples and refuses a
release whose samples hold different members ("don't share the same prefix or the same
types"): `filledit` exists in some samples only. Declared features (the union of every
member of every shard, a missing one read as None) make every sample load; `meta.json` is
a struct of its stable fields, the per-stage `annotations` and the text `cleaned` record
as JSON (their shape differs from stage to stage).

Ray Data's `read_webdataset` casts every column it can to a tensor column by default and
fails on a member absent from some samples; the one setting that lets it read a release
is `DataContext.get_current().enable_tensor_extension_casting = False` (the card says so).
"""

from __future__ import annotations

from graph200k import storage
from graph200k.dataset import part_in
from graph200k.shards import list_shards, shard_index

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
RAY_SETTING = "ray.data.DataContext.get_current().enable_tensor_extension_casting = False"
# meta.json fields every sample holds in the same shape (graph200k.subjects200k writes them).
_QUALITY = ("compositeStructure", "objectConsistency", "imageQuality")


def meta_features():
    """The `meta.json` struct; a field a sample lacks reads as None."""
    from datasets import Json, List, Value

    return {
        "key": Value("string"), "row": Value("int64"), "panel": Value("int64"),
        "collection": Value("string"), "item": Value("string"), "category": Value("string"),
        "description": Value("string"), "reference_description": Value("string"),
        "description_valid": Value("bool"),
        "quality": {q: Value("int64") for q in _QUALITY},
        "size": List(Value("int64")), "nodes": List(Value("string")),
        "split": Value("string"),
        "annotations": Json(), "cleaned": Json(),
    }


def member_names(folder) -> list[str]:
    """Every member name any sample of any shard in `folder` holds (from the indexes; a tar
    without one is indexed from its headers), sorted."""
    from graph200k.tarindex import ShardIndex

    names: set[str] = set()
    for tar in list_shards(folder):
        part = part_in(storage.normalize(str(folder)), shard_index(tar))
        index = ShardIndex.load_or_build(part.url, write=False, writer_index=part.index_url)
        for key in index.keys():
            names.update(index.fields(key))
    return sorted(names)


def release_features(members):
    """`datasets.Features` of a release holding `members` (webdataset builder columns:
    `__key__`, one column per member, `__url__`)."""
    from datasets import Features, Image, Value

    cols = {"__key__": Value("string")}
    for m in sorted(members):
        ext = m.rsplit(".", 1)[-1].lower()
        if m == "meta.json":
            cols[m] = meta_features()
        elif ext in IMAGE_EXTENSIONS:
            cols[m] = Image()
        elif ext == "json":
            from datasets import Json

            cols[m] = Json()
        else:
            cols[m] = Value("binary")
    cols["__url__"] = Value("string")
    return Features(cols)


def card_dataset_info(members) -> dict:
    """The card's `dataset_info` entry: the features as YAML (datasets' own serialisation)."""
    return {"features": release_features(members)._to_yaml_list()}
