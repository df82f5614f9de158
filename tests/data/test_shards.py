"""The shard format: writer (atomic shards, manifest last, write-then-publish overwrite, input
refused before Arrow sees it) and validation messages."""

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from tnn.data import shards
from tnn.data import storage
from tnn.data.reader import read_pairs
from tnn.errors import DataError
from tnn.core.folds import assign_folds
from tnn.data.shard_writer import ShardWriter
from tnn.data.pairs import make_pairs


def _pairs(n=60, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return make_pairs(rng.normal(size=(n, 4)), rng.normal(size=(n, 6)), np.arange(n) % classes,
                      [f"c{i}" for i in range(n)], ["a", "b", "c"][:classes], "test")


def _write(uri, p, rows_per_shard=25, chunk=16, k=3, **kw):
    folds = assign_folds(p.labels, k, 0)
    with ShardWriter(uri, class_names=p.class_names, folds=k, fold_seed=0, source="t",
                            rows_per_shard=rows_per_shard, **kw) as w:
        for i in range(0, p.n, chunk):
            s = slice(i, i + chunk)
            w.write(p.audio[s], p.visual[s], p.labels[s], p.clip_ids[s], folds[s])
    return w.manifest


def test_writer_cuts_chunks_into_shards_and_round_trips(tmp_path):
    p = _pairs()
    man = _write(str(tmp_path / "d"), p)
    assert man.shards == (("part-00000.parquet", 25), ("part-00001.parquet", 25),
                          ("part-00002.parquet", 10))
    assert sorted(os.listdir(tmp_path / "d")) == ["_manifest.json", "part-00000.parquet",
                                                   "part-00001.parquet", "part-00002.parquet"]
    meta = json.loads((tmp_path / "d" / "_manifest.json").read_text())
    assert {k: meta[k] for k in ("schema_version", "audio_dim", "visual_dim", "num_classes",
                                 "class_names", "rows", "num_shards", "folds", "fold_seed")} == {
        "schema_version": 1, "audio_dim": 4, "visual_dim": 6, "num_classes": 3,
        "class_names": ["a", "b", "c"], "rows": 60, "num_shards": 3, "folds": 3, "fold_seed": 0}
    assert pq.read_schema(tmp_path / "d" / "part-00001.parquet") == shards.schema(4, 6)
    back = read_pairs(str(tmp_path / "d"))
    assert np.array_equal(back.audio, p.audio) and np.array_equal(back.visual, p.visual)
    assert np.array_equal(back.labels, p.labels) and list(back.clip_ids) == list(p.clip_ids)
    assert np.array_equal(back.folds, assign_folds(p.labels, 3, 0))


def _files(root) -> dict[str, bytes]:
    return {n: (root / n).read_bytes() for n in sorted(os.listdir(root))}


def test_refuses_an_existing_set_and_overwrite_publishes_then_deletes(tmp_path, monkeypatch):
    uri = str(tmp_path / "d")
    _write(uri, _pairs())
    with pytest.raises(DataError, match="already holds a data set, 3 shard.s.; pass --overwrite"):
        _write(uri, _pairs())
    events, publish, filesystem = [], storage.publish, storage.filesystem

    class Recording(pafs.LocalFileSystem):
        def delete_file(self, path):
            events.append(("delete", os.path.basename(path)))
            super().delete_file(path)

    with monkeypatch.context() as m:
        m.setattr(storage, "publish", lambda tmp, u, c=None: (
            events.append(("publish", os.path.basename(u))), publish(tmp, u, c))[1])
        m.setattr(storage, "filesystem", lambda u, s=None: (Recording(), filesystem(u, s)[1]))
        man = _write(uri, _pairs(n=30), overwrite=True)
    new = [name for name, _ in man.shards]
    assert len(new) == 2 and all(n.startswith("part-0000") and n != "part-00000.parquet"
                                 for n in new)  # names no old file had
    assert events == [("publish", new[0]), ("publish", new[1]), ("publish", "_manifest.json"),
                      *(("delete", f"part-0000{i}.parquet") for i in range(3))]
    assert sorted(os.listdir(uri)) == ["_manifest.json", *new]
    assert read_pairs(uri).n == 30 and shards.validate(uri).rows == 30


@pytest.mark.parametrize("published", [0, 1, 2, 3])
def test_a_failed_overwrite_leaves_the_old_set_readable(tmp_path, monkeypatch, published):
    """A writer failing after `published` of the 3 new shards (3: at the manifest), as from a
    full disk or a lost store: the old set's files are byte for byte what they were and it
    reads as before; the next overwrite removes the stray new shards."""
    uri, p = str(tmp_path / "d"), _pairs()
    _write(uri, p)
    before, publish = _files(tmp_path / "d"), storage.publish

    def fail_after(tmp, target, client=None):
        if len([n for n in os.listdir(uri) if n not in before and n[0] != "."]) == published:
            raise OSError("disk full")
        publish(tmp, target, client)

    monkeypatch.setattr(storage, "publish", fail_after)
    with pytest.raises(OSError, match="disk full"):
        _write(uri, _pairs(seed=1), overwrite=True)
    after = _files(tmp_path / "d")
    assert {n: after[n] for n in before} == before
    assert len(after) == len(before) + published  # stray new shards, not in the manifest
    assert not [n for n in after if n.startswith(".")]  # no temp file left
    assert np.array_equal(read_pairs(uri).audio, p.audio) and shards.validate(uri).rows == 60
    monkeypatch.undo()
    man = _write(uri, _pairs(n=45, seed=1), overwrite=True)
    assert sorted(os.listdir(uri)) == ["_manifest.json", *(n for n, _ in man.shards)]


def test_a_killed_overwrite_leaves_the_old_set_readable(tmp_path):
    """The process dies (os._exit, as from SIGKILL) after publishing one new shard."""
    uri, p = str(tmp_path / "d"), _pairs()
    _write(uri, p)
    before = _files(tmp_path / "d")
    code = f"""if True:
        import os, numpy as np
        from tnn.data.shard_writer import ShardWriter
        publish = ShardWriter._publish
        def die(self, tmp, name):
            if self.shards:
                os._exit(137)
            publish(self, tmp, name)
        ShardWriter._publish = die
        with ShardWriter({uri!r}, class_names="abc", folds=3, fold_seed=0, rows_per_shard=10,
                         overwrite=True) as w:
            w.write(np.ones((40, 4)), np.ones((40, 6)), np.arange(40) % 3,
                    [f"n{{i}}" for i in range(40)], np.arange(40) % 3)
    """
    import subprocess
    import sys
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 137
    after = _files(tmp_path / "d")
    assert {n: after[n] for n in before} == before and len(after) >= len(before) + 1
    assert np.array_equal(read_pairs(uri).visual, p.visual)


@pytest.mark.parametrize("arrays, message", [
    ((np.zeros((5, 0)), np.zeros((5, 6))), r"'audio' has shape \(5, 0\); expected \(N, D\) "
                                           r"with 1 <= D"),
    ((np.zeros((5, 4)), np.zeros(5)), r"'visual' has shape \(5,\); expected \(N, D\)"),
    ((np.zeros((5, 4)), np.zeros((4, 6))), "'visual' has 4 rows, 'audio' has 5"),
    ((np.full((5, 4), np.nan), np.zeros((5, 6))), "'audio' has NaN or inf values"),
])
def test_bad_chunks_are_refused_before_arrow_and_the_old_set_is_kept(tmp_path, arrays,
                                                                    message):
    """(N, 0) arrays made Arrow die with SIGFPE after an overwrite had deleted the old set."""
    uri = str(tmp_path / "d")
    _write(uri, _pairs())
    before = _files(tmp_path / "d")
    with pytest.raises(DataError, match=f"^{uri}: {message}"):
        with ShardWriter(uri, class_names="abc", folds=3, fold_seed=0, overwrite=True) as w:
            w.write(*arrays, np.arange(5) % 3, [f"n{i}" for i in range(5)], np.arange(5) % 3)
    assert _files(tmp_path / "d") == before


@pytest.mark.parametrize("column, values, message", [
    ("labels", np.array([0, 1, 2, 3, 0]), r"'labels' must be integers in 0..2; got int64 "
                                          r"values 0..3"),
    ("labels", np.array([0, 10**12, 0, 0, 0]), "'labels' must be integers in 0..2"),
    ("labels", np.array([0.5, 1, 0, 0, 0]), "'labels' must be integers in 0..2; got float64"),
    ("folds", np.array([0, -1, 0, 0, 0]), "'folds' must be integers in 0..2"),
])
def test_labels_and_folds_out_of_range_are_refused(tmp_path, column, values, message):
    arrays = {"labels": np.zeros(5, int), "folds": np.zeros(5, int), column: values}
    with pytest.raises(DataError, match=message):
        with ShardWriter(str(tmp_path / "d"), class_names="abc", folds=3, fold_seed=0) as w:
            w.write(np.zeros((5, 4)), np.zeros((5, 6)), arrays["labels"],
                    [f"n{i}" for i in range(5)], arrays["folds"])
    assert not (tmp_path / "d" / "_manifest.json").exists()


def test_a_crash_leaves_no_manifest_and_no_temp_files(tmp_path, monkeypatch):
    uri, publish = str(tmp_path / "d"), ShardWriter._publish

    def fail_second(self, tmp, name):
        if name == "part-00001.parquet":
            raise OSError("disk full")
        publish(self, tmp, name)

    monkeypatch.setattr(ShardWriter, "_publish", fail_second)
    with pytest.raises(OSError, match="disk full"):
        _write(uri, _pairs())
    assert sorted(os.listdir(uri)) == ["part-00000.parquet"]  # the failed temp file is gone
    with pytest.raises(DataError, match="no _manifest.json: not a shard data set"):
        shards.validate(uri)
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"already holds shard files \(no manifest\), 1 shard"):
        _write(uri, _pairs())
    with pytest.raises(DataError, match="chunk widths .4, 5. differ from .4, 6."):
        with ShardWriter(uri, class_names="ab", folds=2, fold_seed=0,
                                overwrite=True) as w:
            w.write(np.zeros((2, 4)), np.zeros((2, 6)), [0, 1], ["x", "y"], [0, 1])
            w.write(np.zeros((2, 4)), np.zeros((2, 5)), [0, 1], ["z", "w"], [0, 1])
    assert not (tmp_path / "d" / "_manifest.json").exists()
    assert [n for n in os.listdir(uri) if n.startswith(".")] == []


def _set(table, name, values):
    return table.set_column(table.schema.get_field_index(name), name, values)


def _vectors(table, name, width, edit):
    x = shards.matrix(table[name], width).copy()
    edit(x)
    return _set(table, name, pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]))


def _labels(edit, dtype=np.int32):
    def fn(t):
        x = t["label"].to_numpy().astype(dtype)
        edit(x)
        return _set(t, "label", pa.array(x))
    return fn


TAMPER = [  # (change to part-00001, message); the shard's rows are clips c25..c49
    (lambda t: _set(t, "visual", pa.FixedSizeListArray.from_arrays(
        pa.array(np.zeros(25 * 5, np.float32)), 5)),
     "part-00001.parquet: column 'visual' has width 5, manifest says 6"),
    (_labels(lambda x: None, np.int64), "part-00001.parquet: column 'label' has type int64, "
                                        "expected int32"),
    (lambda t: t.drop_columns(["fold"]), "part-00001.parquet: missing column 'fold'"),
    (lambda t: t.slice(0, 24), "part-00001.parquet: has 24 rows, manifest says 25"),
    (lambda t: _vectors(t, "audio", 4, lambda x: x.__setitem__((3, 1), np.nan)),
     r"part-00001.parquet: column 'audio' has NaN or inf values \(row 3 of the shard, "
     r"clip 'c28'\)"),
    (lambda t: _vectors(t, "visual", 6, lambda x: x.__setitem__((7, 0), -np.inf)),
     r"part-00001.parquet: column 'visual' has NaN or inf values \(row 7 of the shard"),
    (_labels(lambda x: x.__setitem__(2, 3)),
     r"part-00001.parquet: column 'label' value 3 is out of range 0..2 \(row 2 of the shard"),
    (_labels(lambda x: x.__setitem__(0, -1)), "column 'label' value -1 is out of range 0..2"),
    (lambda t: _set(t, "fold", pa.array(np.full(25, 3, np.int8))),
     "part-00001.parquet: column 'fold' value 3 is out of range 0..2"),
    (lambda t: _set(t, "label", pa.array([None] + list(range(24)), pa.int32()).cast(pa.int32())),
     "part-00001.parquet: column 'label' has null values"),
    (lambda t: _set(t, "clip_id", pa.array(["c3"] + [f"c{i}" for i in range(26, 50)])),
     r"part-00001.parquet: column 'clip_id' repeats id 'c3' \(also in part-00000.parquet\)"),
]


@pytest.mark.parametrize("change, message", TAMPER)
def test_validation_names_shard_and_column(tmp_path, change, message):
    uri = str(tmp_path / "d")
    _write(uri, _pairs())
    path = tmp_path / "d" / "part-00001.parquet"
    pq.write_table(change(pq.read_table(path)), path)
    with pytest.raises(DataError, match=message):
        shards.validate(uri)
    with pytest.raises(DataError, match=message):
        read_pairs(uri)
    if "value" in message or "NaN" in message or "repeats" in message or "null" in message:
        shards.validate(uri, deep=False)  # values are only read by a deep check


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(schema_version=2), "schema version 2 is not supported .this tnn reads "
                                           "version 1."),
    (lambda d: d.pop("audio_dim"), r"_manifest.json: not a valid manifest \(KeyError"),
    (lambda d: d.update(rows=61), "inconsistent manifest"),
    (lambda d: d["shards"].append({"file": "part-00009.parquet", "rows": 1}) or
     d.update(rows=61), "part-00009.parquet: listed in the manifest but missing"),
])
def test_manifest_problems(tmp_path, edit, message):
    uri = str(tmp_path / "d")
    _write(uri, _pairs())
    meta = json.loads((tmp_path / "d" / "_manifest.json").read_text())
    edit(meta)
    (tmp_path / "d" / "_manifest.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=message):
        shards.validate(uri)


@pytest.mark.s3
@pytest.mark.timeout(60)
def test_s3_validation_names_the_s3_shard(s3_prefix):
    p = _pairs()
    with pytest.raises(DataError, match=f"{s3_prefix}: no _manifest.json"):
        shards.validate(s3_prefix)
    _write(s3_prefix, p)
    assert shards.validate(s3_prefix).rows == 60
    assert np.array_equal(read_pairs(s3_prefix).visual, p.visual)
    key = storage.split_s3(s3_prefix)[1] + "/part-00001.parquet"
    client = storage.s3_client()
    table = pq.read_table(io.BytesIO(client.get_object(Bucket="tnn-test", Key=key)["Body"].read()))
    buf = io.BytesIO()
    pq.write_table(TAMPER[0][0](table), buf)
    client.put_object(Bucket="tnn-test", Key=key, Body=buf.getvalue())
    with pytest.raises(DataError, match=f"^{s3_prefix}/part-00001.parquet: column 'visual' has "
                                        "width 5, manifest says 6$"):
        shards.validate(s3_prefix, deep=False)
    with pytest.raises(DataError, match="already holds a data set"):
        _write(s3_prefix, p)


@pytest.mark.s3
@pytest.mark.timeout(60)
def test_s3_overwrite_is_write_then_publish(s3_prefix, monkeypatch):
    """On S3: new objects first, the manifest last, the old objects deleted only after it; a
    failure before the manifest leaves every old object as it was."""
    p, client = _pairs(), storage.s3_client()
    bucket, key = storage.split_s3(s3_prefix)

    def objects():
        listed = client.list_objects_v2(Bucket=bucket, Prefix=key + "/").get("Contents", [])
        return {o["Key"].rsplit("/", 1)[1]: o["ETag"] for o in listed
                if not o["Key"].endswith("/")}  # pyarrow's directory marker after deletes
    _write(s3_prefix, p)
    before, publish = objects(), storage.publish

    def fail_second(tmp, target, c=None):
        if len(objects()) == len(before) + 1:
            os.unlink(tmp)
            raise DataError("upload failed")
        publish(tmp, target, c)

    monkeypatch.setattr(storage, "publish", fail_second)
    with pytest.raises(DataError, match="upload failed"):
        _write(s3_prefix, _pairs(seed=1), overwrite=True)
    after = objects()
    assert {n: after[n] for n in before} == before and len(after) == len(before) + 1
    assert np.array_equal(read_pairs(s3_prefix).audio, p.audio)
    monkeypatch.undo()
    man = _write(s3_prefix, _pairs(n=30, seed=1), overwrite=True)
    assert sorted(objects()) == sorted(["_manifest.json", *(n for n, _ in man.shards)])
    assert read_pairs(s3_prefix).n == 30
