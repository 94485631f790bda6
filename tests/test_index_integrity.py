"""An index is never trusted alone (issue: a missing or lying `index.json` hid corruption).

Each case is the fault as a user met it on an annotated dataset: the index deleted while a
member's byte flipped, two samples' records swapped, an edited offset or digest, an index
that is not JSON. Verify names each with rc 1, publish ships nothing, the reader refuses the
record, and `annotate --verify` / `verify --rebuild-indexes` rebuild the index from the tar
(checked against the stats) to the very bytes the writer wrote.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from annotate_helpers import annotate_args, ray_local, sidecar  # noqa: F401  (a fixture)
from graph200k import verify
from graph200k.dataset import ShardSet
from graph200k.reader import FetchError, SampleReader
from graph200k.shards import FIELD, KEY, ShardError
from graph200k.tarindex import BadIndexError, ShardIndex
from integrity_data import data, pristine, publish_to  # noqa: F401  (fixtures)
from pipelines import annotate


def _index(folder, shard=0):
    return folder / f"{shard:06d}.index.json"


def _edit_index(path, edit):
    index = json.loads(path.read_text())
    edit(index["members"])
    path.write_text(json.dumps(index, separators=(",", ":")))


def _pos(members, key, field):
    return [i for i, m in enumerate(members) if (m[KEY], m[FIELD]) == (key, field)][0]


def _swap(members, field="canny.png"):
    """Swap the records of 0000001's and 0000002's `field`: a valid index, the wrong bytes."""
    a, b = _pos(members, "0000001", field), _pos(members, "0000002", field)
    members[a][2:], members[b][2:] = members[b][2:], members[a][2:]


def _reader(d):
    return SampleReader(d / "out", d / "out" / "manifest.parquet", manifest_check="ignore")


def test_a_deleted_index_and_a_flipped_member_are_both_named_and_repaired(data, capsys):
    d, config = data
    canny = d / "out" / "canny"
    good_tar, good_index = sidecar(d / "out", "canny", 0).read_bytes(), _index(canny).read_bytes()
    members = json.loads(good_index)["members"]
    record = members[_pos(members, "0000001", "canny.png")]
    _index(canny).unlink()
    raw = bytearray(good_tar)
    raw[record[3] + record[4] // 2] ^= 0xFF
    sidecar(d / "out", "canny", 0).write_bytes(bytes(raw))

    assert verify.main(["--shards", str(d / "out")]) == 1
    out = capsys.readouterr().out
    assert "000000.index.json is missing" in out
    assert "bytes differ from the sha256 its writer recorded" in out
    assert publish_to(d) == 1 and not (d / "release").exists()
    with pytest.raises(FetchError) as e:
        _reader(d).fetch("0000001", "canny")
    assert e.value.reason == "bad_index" and "index.json is missing" in str(e.value)
    with pytest.raises(BadIndexError):  # no quiet fall-back to a header walk without digests
        ShardIndex.load_or_build(canny / "000000.tar", writer_index=str(_index(canny)),
                                 stats_url=str(canny / "000000.stats.json"))

    # --verify: the tar does not match its sha256, so the sidecar is recomputed
    assert annotate.main(annotate_args(d / "source", d / "out", config, "0", "--verify")) == 0
    assert sidecar(d / "out", "canny", 0).read_bytes() == good_tar
    assert _index(canny).read_bytes() == good_index
    assert verify.verify(str(d / "out")) == []


def test_swapped_index_records_are_refused_and_rebuilt_by_annotate_verify(data, capsys):
    d, config = data
    canny = d / "out" / "canny"
    good_index = _index(canny).read_bytes()
    assert publish_to(d) == 0
    released = (d / "release" / "000000.tar").read_bytes()
    shutil.rmtree(d / "release")
    reader = _reader(d)
    want = reader.member_bytes("0000001", "canny.png")
    reader.close()
    _edit_index(_index(canny), _swap)

    problems = verify.verify(str(d / "out"))
    whats = {(p.key, p.member): p.what for p in problems}
    assert any("does not match the digest its stats record" in p.what for p in problems)
    assert "points at member 0000002.canny.png" in whats[("0000001", "canny.png")]
    assert all("--verify" in p.repair for p in problems)  # the tar is intact: re-index it
    assert publish_to(d) == 1 and not (d / "release").exists()
    with pytest.raises(FetchError) as e:
        _reader(d).fetch("0000001", "canny")
    assert e.value.reason == "bad_index"

    # even with the stats made to agree with the edited index, the reader reads each
    # member's own header and refuses a record that names another sample
    stats_path = canny / "000000.stats.json"
    good_stats = stats_path.read_text()
    stats = json.loads(good_stats)
    stats["file"]["index_sha256"] = hashlib.sha256(_index(canny).read_bytes()).hexdigest()
    stats_path.write_text(json.dumps(stats))
    with pytest.raises(FetchError) as e:
        _reader(d).fetch("0000001", "canny")
    assert e.value.reason == "corrupt" and "0000002.canny.png" in str(e.value)
    stats_path.write_text(good_stats)

    assert annotate.main(annotate_args(d / "source", d / "out", config, "0-1", "--verify")) == 0
    assert "rebuilt from its tar" in capsys.readouterr().out
    assert _index(canny).read_bytes() == good_index
    assert _reader(d).member_bytes("0000001", "canny.png") == want
    assert publish_to(d) == 0
    assert (d / "release" / "000000.tar").read_bytes() == released


def _edit_offset(members, field):
    members[_pos(members, "0000003", field)][3] += 512


def _edit_digest(members, field):
    members[_pos(members, "0000003", field)][5] = "0" * 16


@pytest.mark.parametrize("where", ["canny", "source"])
@pytest.mark.parametrize("fault", ["not_json", "offset", "digest", "swapped", "deleted"])
def test_a_bad_index_is_a_named_error_and_verify_rebuilds_it(data, where, fault, capsys):
    d, _ = data
    folder = d / "out" / "canny" if where == "canny" else d / "source"
    field = "canny.png" if where == "canny" else "target.jpg"
    good = _index(folder).read_bytes()
    if fault == "not_json":
        _index(folder).write_bytes(good[:-40])
    elif fault == "deleted":
        _index(folder).unlink()
    else:
        edit = {"offset": _edit_offset, "digest": _edit_digest, "swapped": _swap}[fault]
        _edit_index(_index(folder), lambda members: edit(members, field))

    assert verify.main(["--shards", str(d / "out")]) == 1
    out = capsys.readouterr().out
    assert f"{where}/000000.tar" in out and "index" in out
    with pytest.raises(FetchError) as e:
        _reader(d).fetch("0000003", "canny" if where == "canny" else "target")
    assert e.value.reason == "bad_index"
    assert verify.main(["--shards", str(d / "out"), "--rebuild-indexes"]) == 0
    assert "rebuilt" in capsys.readouterr().out
    assert _index(folder).read_bytes() == good


def test_a_tar_whose_bytes_differ_is_not_reindexed(data, capsys):
    d, _ = data
    canny = d / "out" / "canny"
    _index(canny).unlink()
    tar = sidecar(d / "out", "canny", 0)
    raw = bytearray(tar.read_bytes())
    raw[2000] ^= 0xFF
    tar.write_bytes(bytes(raw))
    assert verify.main(["--shards", str(d / "out"), "--rebuild-indexes"]) == 1
    assert "not rebuilt" in capsys.readouterr().out
    assert not _index(canny).exists()
    with pytest.raises(ShardError):
        verify.rebuild_index(ShardSet(d / "out").stage_part("canny", 0))


def test_annotate_names_the_index_repair_when_a_source_index_is_gone(data, capsys):
    d, config = data
    good = sidecar(d / "out", "canny", 0).read_bytes()
    _index(d / "source").unlink()
    assert annotate.main(annotate_args(d / "source", d / "out", config, "0", "--force")) == 1
    err = capsys.readouterr().err
    assert "000000.index.json is missing" in err and "--rebuild-indexes" in err
    assert verify.main(["--shards", str(d / "out"), "--rebuild-indexes"]) == 0
    assert annotate.main(annotate_args(d / "source", d / "out", config, "0", "--force")) == 0
    assert sidecar(d / "out", "canny", 0).read_bytes() == good
