"""Names and sizes read from a manifest: no shard name leaves its data set, no count is taken
on trust. A shard set whose `_manifest.json` lists `../other/part-00000.parquet` (a readable
set beside it, so an unchecked join would read it), an absolute name, an empty one, NUL, a
backslash or a URL scheme is refused with one line naming the manifest and the name, for
local and s3:// sets alike, by every reader (`validate`, `read_pairs`, `shard_index`, the
jobs). A manifest claiming 10**12 rows, or rows that disagree with the Parquet footers, is
refused before anything is allocated. `tnn.data.paths` is the check (VEGAS clip ids and index
files use it too)."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from jobs import crossval
from tnn.data import paths, shards, storage
from tnn.data import write as shard_write
from tnn.data.reader import read_pairs, shard_index
from tnn.errors import DataError

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]
SOURCE = "synthetic:n=120,audio_dim=4,visual_dim=6"
QUIET = {"log": lambda *a, **k: None}
SUFFIX = "; names must stay inside the data set"
BAD_NAMES = [  # (name, why)
    ("../other/part-00000.parquet", "has an empty, '.' or '..' part"),
    ("a/../../other/part-00000.parquet", "has an empty, '.' or '..' part"),
    ("/etc/passwd", "is absolute"),
    ("", "is empty"),
    ("part\x00.parquet", "holds a control character"),
    ("..\\other\\part-00000.parquet", "holds a backslash"),
    ("s3://other-bucket/part-00000.parquet", "has a URL scheme or drive (':' in its first part)"),
    ("file:///etc/passwd", "has a URL scheme or drive (':' in its first part)"),
    ("~/part-00000.parquet", "starts with '~'"),
    ("./part-00000.parquet", "has an empty, '.' or '..' part"),
    (7, "is a int, not a string"),
]


def _edit(fs, root: str, change) -> None:
    with fs.open_input_stream(f"{root}/{shards.MANIFEST}") as f:
        meta = json.loads(f.read())
    change(meta)
    with fs.open_output_stream(f"{root}/{shards.MANIFEST}") as f:
        f.write(json.dumps(meta).encode())


def _two_sets(base: str) -> str:
    """`base/data` and, beside it, a readable `base/other`; returns the data set's URI."""
    for name in ("data", "other"):
        shard_write.write(SOURCE, storage.join(base, name), rows_per_shard=40, **QUIET)
    return storage.join(base, "data")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_prefix")


@pytest.mark.parametrize("name, why", BAD_NAMES, ids=[repr(n)[:24] for n, _ in BAD_NAMES])
def test_a_shard_name_outside_the_set_is_refused(base, name, why, capsys):
    uri = _two_sets(base)
    fs, root = storage.filesystem(uri)
    _edit(fs, root, lambda m: m["shards"][0].update(file=name))
    where = storage.join(uri, shards.MANIFEST)
    line = f"{where}: shard file {name!r} {why}{SUFFIX}"
    for read in (shards.validate, read_pairs, shard_index):
        with pytest.raises(DataError) as err:
            read(uri)
        assert str(err.value) == line
    assert crossval.main(["--data", uri, "--methods", "cca"]) == 2
    assert capsys.readouterr().err == f"crossval: error: {line}\n"


def test_paths_api():
    assert paths.inside("s3://b/p/", "x/part-0.parquet", "m") == "s3://b/p/x/part-0.parquet"
    assert paths.inside("/d", "c_01-x.npy", "m") == "/d/c_01-x.npy"
    assert paths.check_name("a b/c.d", "m") == "a b/c.d"
    for name, why in BAD_NAMES:
        assert paths.problem(name) == why
    with pytest.raises(DataError, match=r"^labels.csv: clip id '\.\./x' has an empty, '\.' or "
                                        r"'\.\.' part; names must stay inside the data set$"):
        paths.inside("/d", "../x", "labels.csv", "clip id")
    assert paths.problem("x" * 2000) == "is longer than 1024 characters"


@pytest.mark.parametrize("change, message", [
    (lambda m: (m["shards"][0].update(rows=10**12), m.update(rows=m["rows"] - 40 + 10**12)),
     r"part-00000.parquet: has 40 rows, manifest says 1000000000000$"),
    (lambda m: (m["shards"][1].update(rows=41), m.update(rows=m["rows"] + 1)),
     r"part-00001.parquet: has 40 rows, manifest says 41$"),
    (lambda m: m.update(rows=10**12), r"inconsistent manifest \(rows or class counts disagree\)"),
    (lambda m: m["shards"][0].update(rows=-5),
     r"not a valid manifest \(ValueError: rows must be an integer in 0..\d+; got -5\)"),
    (lambda m: m.update(audio_dim=0),
     r"not a valid manifest \(ValueError: audio_dim must be an integer in 1..1048576; got 0\)"),
    (lambda m: m.update(visual_dim=2**40), r"visual_dim must be an integer in 1..1048576"),
    (lambda m: m.update(audio_dim=4.5), r"audio_dim must be an integer in 1..1048576; got 4.5"),
    (lambda m: m.update(shards=[], rows=0), r"shards must be a non-empty list"),
    (lambda m: m["shards"].append(dict(m["shards"][0])) or m.update(rows=m["rows"] + 40),
     r"shard file 'part-00000.parquet' is listed twice"),
    (lambda m: m.update(class_names="ab"), r"class_names must be a non-empty list of strings"),
])
def test_sizes_come_from_the_files_before_anything_is_allocated(tmp_path, change, message):
    uri = _two_sets(str(tmp_path))
    fs, root = storage.filesystem(uri)
    _edit(fs, root, change)
    tracemalloc.start()
    with pytest.raises(DataError, match=message):
        read_pairs(uri)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 << 20  # nothing sized by the claim (10**12 rows would be terabytes)


def test_a_manifest_that_is_not_utf8_or_too_large_is_refused(tmp_path):
    uri = _two_sets(str(tmp_path))
    (tmp_path / "data" / shards.MANIFEST).write_bytes(b'{"schema_version": 1, "\xff\xfe"}')
    with pytest.raises(DataError, match=r"_manifest.json: not UTF-8 text \(invalid start byte "
                                        r"at byte 23\)$"):
        read_pairs(uri)
    (tmp_path / "data" / shards.MANIFEST).write_bytes(b" " * (shards.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(DataError, match=r"_manifest.json: larger than 64 MiB: not a manifest$"):
        shards.validate(uri)
