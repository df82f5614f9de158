"""Reading shard sets without Ray (pyarrow, threads): whole sets, one shard's rows, the index.

- `read_pairs(uri)`: the full in-memory load behind `load_source("s3://...")`, checked
  shard by shard.
- `shard_tables(pf, ...)`: one shard's rows as one Arrow table (checked, fold-filtered,
  projected, optionally shuffled), what `tnn.ray.dataset`'s read tasks emit.
- `fold_filter(man, ...)`: which fold ids to keep.
- `shard_index(uri)`: clip ids, labels and folds of a set (small columns only), for splits.

The format itself (schema, manifest, checks) is `tnn.data.shards`.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from tnn.data import shards, storage
from tnn.data.batches import tensor_columns
from tnn.data.pairs import Pairs, make_pairs
from tnn.errors import ConfigError, DataError


def read_pairs(uri: str, settings=None) -> Pairs:
    """Load a whole shard set into `Pairs` (with `folds`), checking it shard by shard.

    Sizes come from what is there: every shard's footer (schema, row count) is checked
    against the manifest, and the memory the set needs against what the machine has, before
    anything is allocated."""
    man = shards.read_manifest(uri, settings)
    fs, root = storage.filesystem(uri, settings)
    with ThreadPoolExecutor(max_workers=min(8, len(man.shards))) as pool:
        list(pool.map(lambda s: _footer(fs, root, uri, man, s), man.shards))
    check_memory(man, uri)
    bounds = np.cumsum([0] + [rows for _, rows in man.shards])
    out = {"audio": np.empty((man.rows, man.audio_dim), np.float32),
           "visual": np.empty((man.rows, man.visual_dim), np.float32),
           "label": np.empty(man.rows, np.int32), "fold": np.empty(man.rows, np.int8)}
    ids: list = [None] * len(man.shards)

    def load(i: int) -> None:
        name, rows = man.shards[i]
        where = storage.join(uri, name)
        pf = shards.open_shard(fs, f"{root}/{name}", where, whole=True)
        shards.check_file(pf, man, where, rows)
        table = pf.read(use_threads=False)  # parallel over shards instead
        shards.check_values(table, man, where)
        part = slice(bounds[i], bounds[i + 1])
        for col in ("audio", "visual"):
            out[col][part] = shards.matrix(table.column(col), man.width(col))
        out["label"][part] = table.column("label").to_numpy()
        out["fold"][part] = table.column("fold").to_numpy()
        ids[i] = table.column("clip_id").to_numpy(zero_copy_only=False).astype(str)

    with ThreadPoolExecutor(max_workers=min(4, len(man.shards))) as pool:
        list(pool.map(load, range(len(man.shards))))
    shards.check_unique(ids, [name for name, _ in man.shards], uri)
    return make_pairs(out["audio"], out["visual"], out["label"], np.concatenate(ids),
                      man.class_names, name=uri, folds=out["fold"])


def _footer(fs, root: str, uri: str, man: shards.Manifest, shard: tuple[str, int]) -> None:
    where = storage.join(uri, shard[0])
    shards.check_file(shards.open_shard(fs, f"{root}/{shard[0]}", where), man, where, shard[1])


def available_memory() -> int | None:
    """Bytes this machine can still allocate (Linux MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(man: shards.Manifest, uri: str) -> None:
    """Refuse a set whose arrays need more memory than the machine has available."""
    need = man.rows * (4 * (man.audio_dim + man.visual_dim) + 5)
    have = available_memory()
    if have is not None and need > have:
        raise DataError(f"{uri}: {man.rows} rows of {man.audio_dim} + {man.visual_dim} floats "
                        f"need {need / 2**30:.1f} GiB; {have / 2**30:.1f} GiB are available "
                        "(read it through Ray Data instead: tnn.ray.dataset)")


def fold_filter(man: shards.Manifest, folds=None, exclude_folds=None) -> frozenset | None:
    """The fold ids to keep (None = all), checked against the manifest's fold count."""
    if folds is None and exclude_folds is None:
        return None
    keep = set(range(man.folds)) if folds is None else {int(f) for f in folds}
    drop = {int(f) for f in exclude_folds or ()}
    bad = sorted(f for f in keep | drop if not 0 <= f < man.folds)
    if bad:
        raise ConfigError(f"folds {bad} out of range: the data set has {man.folds} folds "
                          f"(0..{man.folds - 1})")
    return frozenset(keep - drop)


def shard_tables(pf, man: shards.Manifest, where: str, columns: tuple[str, ...],
                 keep_folds: frozenset | None = None, seed: int | None = None,
                 check_values: bool = True) -> Iterator:
    """One shard's rows as one Arrow table: values checked (unless `check_values` is
    False), fold-filtered, projected to `columns`, vectors as tensor columns
    (`tensor_columns`).

    The shard is decoded in one call, so every column is a single chunk: Ray's batcher
    copies a whole multi-chunk block (`try_combine_chunked_columns`) before slicing the
    first batch out of it, which cost the driver a copy of every block when this yielded
    one table per row group (measured: `bench/ingest.py`).

    With `seed`, row groups and the rows inside each are permuted by
    `default_rng([seed, crc32 of the shard file name])` (a local, reproducible shuffle),
    gathered in one `take`.
    """
    read = sorted(set(columns) | ({"fold"} if keep_folds is not None else set()),
                  key=shards.COLUMNS.index)
    table = pf.read(columns=read, use_threads=False)  # 1 CPU per read task
    if check_values:
        shards.check_values(table, man, where)
    keep = None if keep_folds is None else np.isin(table["fold"].to_numpy(), sorted(keep_folds))
    if seed is not None:
        rng = np.random.default_rng([seed, zlib.crc32(where.rsplit("/", 1)[-1].encode())])
        row0s = np.cumsum([0] + [pf.metadata.row_group(g).num_rows
                                 for g in range(pf.num_row_groups)])
        parts = []
        for g in rng.permutation(pf.num_row_groups):
            rows = np.arange(row0s[g], row0s[g + 1])
            rows = rows if keep is None else rows[keep[rows]]
            parts.append(rows[rng.permutation(len(rows))])
        table = table.take(np.concatenate(parts)) if parts else table.slice(0, 0)
    elif keep is not None:
        table = table.filter(keep)
    if table.num_rows:
        yield tensor_columns(table.select(list(columns)))


def shard_index(uri: str) -> tuple[shards.Manifest, np.ndarray, np.ndarray, np.ndarray]:
    """(manifest, clip_ids, labels, folds) in manifest order: small columns, read directly."""
    man = shards.read_manifest(uri)
    fs, root = storage.filesystem(uri)
    cols = {"clip_id": [], "label": [], "fold": []}
    for name, rows in man.shards:
        pf = shards.open_shard(fs, f"{root}/{name}", storage.join(uri, name))
        shards.check_file(pf, man, storage.join(uri, name), rows)
        table = pf.read(columns=list(cols))
        for key in cols:
            cols[key].append(table[key].to_numpy(zero_copy_only=False))
    ids, labels, folds = (np.concatenate(cols[k]) for k in cols)
    return man, ids.astype(str), labels.astype(np.int64), folds.astype(np.int64)
