"""tnn.data.reader without Ray: one shard's rows (fold filter, projection, seeded shuffle), the
fold filter. (`read_pairs` over whole sets: `tests/data/test_shards.py`.)"""

import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.make_shards import write
from tnn.data import shards
from tnn.data.batches import table_to_numpy
from tnn.data.reader import fold_filter, shard_tables
from tnn.errors import ConfigError


def _collect(batches) -> dict:
    parts = list(batches)
    return {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}


def test_shard_tables_filter_and_shuffle_without_ray(tmp_path):
    uri = str(tmp_path / "d")
    write("synthetic:n=5000,visual_dim=8,audio_dim=4", uri, rows_per_shard=5000, chunk_rows=1000,
          folds=4, log=lambda *a, **k: None)
    man = shards.read_manifest(uri)
    pf = pq.ParquetFile(tmp_path / "d" / "part-00000.parquet")
    run = lambda **kw: _collect(table_to_numpy(t) for t in shard_tables(  # noqa: E731
        pf, man, "x/part-00000.parquet", **kw))
    plain = run(columns=("clip_id", "audio", "fold"))
    assert pf.num_row_groups == 2 and plain["audio"].shape == (5000, 4)
    assert np.array_equal(plain["audio"], shards.matrix(pf.read()["audio"]))
    tables = list(shard_tables(pf, man, "x", ("visual", "label")))
    table = tables[0]  # one table, single-chunk columns: Ray slices it into batches, no copy
    assert len(tables) == 1 and all(c.num_chunks == 1 for c in table.columns)
    assert str(table.schema.field("visual").type).startswith("extension<arrow.fixed_shape_tensor")
    sub = run(columns=("clip_id",), keep_folds=frozenset({1, 2}))
    assert set(sub) == {"clip_id"} and sorted(sub["clip_id"]) == sorted(
        plain["clip_id"][np.isin(plain["fold"], [1, 2])])
    s1, s2 = run(columns=("clip_id",), seed=3), run(columns=("clip_id",), seed=4)
    assert list(s1["clip_id"]) == list(run(columns=("clip_id",), seed=3)["clip_id"])
    assert list(s1["clip_id"]) != list(s2["clip_id"]) != list(plain["clip_id"])
    assert sorted(s1["clip_id"]) == sorted(plain["clip_id"])
    # reference: row groups in a seeded order, the kept rows of each permuted
    rng = np.random.default_rng([3, zlib.crc32(b"part-00000.parquet")])
    keep, order = np.isin(plain["fold"], [0, 3]), []
    row0s = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(2)])
    for g in rng.permutation(2):
        rows = np.arange(row0s[g], row0s[g + 1])
        rows = rows[keep[rows]]
        order.extend(rows[rng.permutation(len(rows))])
    mixed = run(columns=("clip_id", "fold"), seed=3, keep_folds=frozenset({0, 3}))
    assert list(mixed["clip_id"]) == list(plain["clip_id"][order])


def test_fold_filter():
    man = shards.Manifest(4, 8, ("a", "b"), (("p", 10),), folds=5, fold_seed=0)
    assert fold_filter(man) is None
    assert fold_filter(man, exclude_folds=[4]) == {0, 1, 2, 3}
    with pytest.raises(ConfigError, match=r"folds \[-1\] out of range"):
        fold_filter(man, folds=[-1])
