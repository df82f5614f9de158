"""Shards -> Ray Datasets (streaming) and in-memory `Pairs`; the only `ray.data` importer.

`dataset(uri, ...)` reads a shard set (see `tnn.data.shards`) through a small custom datasource:
one read task per shard fetches the object in one GET (object stores serve one large read
far better than many ranged ones), decodes it on one thread and emits it as one Arrow table
(single-chunk columns, so Ray's batcher slices it without copying) whose `audio`/`visual`
are `fixed_shape_tensor` columns over the decoded buffers (no copy). So vectors arrive as
(B, D) float32 ndarrays, not object arrays of rows, and `iter_torch_batches` works once the
string `clip_id` is projected away. Read tasks check their shard's schema (and by default
its values) against the manifest, so bad data fails naming the shard and column. Why this
shape, and the measured gain: `bench/ingest.py`, `refresh_limits_often`.

`read_pairs(uri)` is the full in-memory load (pyarrow, threads, no Ray) behind
`load_source("s3://...")`. The transforms (`shard_tables`, `as_arrays`) are plain functions
of Arrow / numpy batches, testable without Ray. Ray itself is imported only by `dataset`.
"""

from __future__ import annotations

import functools
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np

from tnn.data import shards
from tnn.data import storage
from tnn.errors import ConfigError
from tnn.data.sources import Pairs, make_pairs

NUMERIC = ("label", "audio", "visual", "fold")
CHECKS = (None, "manifest", "schema", "deep")
LIMITS_REFRESH_S = 0.1  # see `refresh_limits_often`


def read_pairs(uri: str, settings=None) -> Pairs:
    """Load a whole shard set into `Pairs` (with `folds`), checking it shard by shard."""
    man = shards.read_manifest(uri, settings)
    fs, root = storage.filesystem(uri, settings)
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


def tensor_columns(table):
    """Fixed-size-list vector columns -> Arrow `fixed_shape_tensor` over the same buffers.

    No copy (the tensor type's storage is the fixed-size list), and Ray Data hands such
    columns out as (B, D) float32 ndarrays / torch tensors instead of object arrays of rows.
    """
    import pyarrow as pa
    for i, field in enumerate(table.schema):
        if field.name in shards.VECTORS and pa.types.is_fixed_size_list(field.type):
            size = field.type.list_size
            kind = pa.fixed_shape_tensor(field.type.value_type, [size])
            # re-wrapped because the tensor type's storage has a nullable child (still no copy)
            chunks = [pa.ExtensionArray.from_storage(kind, pa.FixedSizeListArray.from_arrays(
                c.flatten(), size)) for c in table[i].chunks]
            table = table.set_column(i, field.name, pa.chunked_array(chunks, kind))
    return table


def table_to_numpy(table) -> dict[str, np.ndarray]:
    """An Arrow batch (lists or tensor columns) -> numpy: vectors (B, D) float32."""
    return as_arrays({name: shards.matrix(table[name]) if name in shards.VECTORS
                      else table[name].to_numpy() for name in table.column_names})


def as_arrays(batch: dict) -> dict[str, np.ndarray]:
    """Normalise a numpy batch: vectors (B, D) float32 (object arrays of rows are stacked),
    `label` int64, `fold` int8; other columns unchanged."""
    out = dict(batch)
    for col in shards.VECTORS:
        if col in out:
            x = out[col]
            x = np.stack(list(x)) if x.dtype == object else x
            out[col] = np.ascontiguousarray(x, dtype=np.float32)
    if "label" in out:
        out["label"] = np.asarray(out["label"], np.int64)
    if "fold" in out:
        out["fold"] = np.asarray(out["fold"], np.int8)
    return out


def _read_shard(uri, name, settings, man, columns, keep_folds, seed, values) -> Iterable:
    fs, root = storage.filesystem(uri, settings)
    where = storage.join(uri, name)
    pf = shards.open_shard(fs, f"{root}/{name}", where, whole=True)
    shards.check_file(pf, man, where, dict(man.shards)[name])
    yield from shard_tables(pf, man, where, columns, keep_folds, seed, values)


def _datasource(uri, man, settings, columns, keep_folds, seed, values):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ShardDatasource(Datasource):
        """One read task per shard, in manifest order or permuted by `seed`."""

        def get_name(self) -> str:
            return "TnnShards"

        def estimate_inmemory_data_size(self) -> int:
            return man.rows * _row_bytes(man, columns)

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            refresh_limits_often()  # runs where the plan executes (driver, split coordinator)
            order = list(man.shards)
            if seed is not None:
                order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
            return [ReadTask(functools.partial(_read_shard, uri, name, settings, man, columns,
                                               keep_folds, seed, values),
                             BlockMetadata(num_rows=None if keep_folds is not None else rows,
                                           size_bytes=rows * _row_bytes(man, columns),
                                           exec_stats=None,
                                           input_files=(storage.join(uri, name),)),
                             per_task_row_limit=per_task_row_limit)
                    for name, rows in order]

    return ShardDatasource()


def refresh_limits_often(seconds: float = LIMITS_REFRESH_S) -> bool:
    """Let Ray Data see the cluster's CPUs within `seconds` of starting an execution.

    Ray Data (2.60) asks its autoscaling coordinator actor for the resources it may use and
    reads the answer back only when it next refreshes its limits, one second later
    (`ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S`). Until then the limits are zero and
    the executor runs one read task at a time (its liveness rule), so every epoch starts
    with a second of serial reads: on 2 CPUs most of a 100k-row epoch, and the larger part
    of the gap to pyarrow (`bench/ingest.py`). A shorter interval only makes the executor
    notice its budget sooner; budgets and backpressure are unchanged. Returns whether the
    setting was found (a later Ray may move it; then this does nothing).
    """
    try:
        from ray.data._internal.execution.resource_manager import ResourceManager
    except ImportError:
        return False
    current = getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None)
    if not isinstance(current, (int, float)):
        return False
    if current > seconds:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = seconds
    return True


def _row_bytes(man: shards.Manifest, columns) -> int:
    sizes = {"clip_id": 24, "label": 4, "fold": 1, "audio": 4 * man.audio_dim,
             "visual": 4 * man.visual_dim}
    return sum(sizes[c] for c in columns)


def _checked_manifest(uri: str, check: str | None, settings) -> shards.Manifest:
    if check not in CHECKS:
        raise ConfigError(f"check must be one of {CHECKS}; got {check!r}")
    if check in ("schema", "deep"):
        return shards.validate(uri, deep=check == "deep", settings=settings)
    return shards.read_manifest(uri, settings)


def _projection(columns) -> tuple[str, ...]:
    columns = tuple(shards.COLUMNS if columns is None else columns)
    unknown = [c for c in columns if c not in shards.COLUMNS]
    if unknown or not columns:
        raise ConfigError(f"columns {unknown or '[]'} unknown; choose from {shards.COLUMNS}")
    return columns


def dataset(uri: str, *, folds=None, exclude_folds=None, columns=None, shuffle_seed=None,
            check: str | None = "schema", settings=None, num_cpus: float = 1.0,
            concurrency: int | None = None, cache: bool = False):
    """A `ray.data.Dataset` over the shards at `uri`.

    folds / exclude_folds: keep only these fold ids / drop these (e.g. a test fold).
    columns: projection, a subset of `clip_id label audio visual fold` (default all;
        `NUMERIC` drops the string clip id, as `iter_torch_batches` needs).
    shuffle_seed: permute shard order, row-group order and rows within row groups,
        reproducibly; combine with `iter_numpy(shuffle_buffer=...)` for a wider shuffle.
    check: where the data is checked; a read task always checks its shard's schema and row
        count. None: nothing more (for sets already validated, e.g. right after writing;
        fastest). "manifest": read tasks check values too. "schema" (default): also every
        shard's schema and row count up front on the driver, for an early plain error.
        "deep": `shards.validate(deep=True)` up front (values, unique clip ids), so the
        read tasks skip the values.
    num_cpus, concurrency: per read task, and the most tasks at once (0.5 CPU next to Ray
        Train workers on a 2-CPU node; cap concurrency if the store is the bottleneck).
    cache: materialize once (object store) so later epochs skip reading and decoding.
    """
    import ray.data
    settings = settings or storage.StorageSettings.from_env()
    man, columns = _checked_manifest(uri, check, settings), _projection(columns)
    source = _datasource(uri, man, settings, columns, fold_filter(man, folds, exclude_folds),
                         shuffle_seed, values=check in ("manifest", "schema"))
    # One block stream per shard: without override_num_blocks Ray splits each read task's
    # output into many small blocks to reach its default parallelism (slower, no gain here).
    ds = ray.data.read_datasource(source, num_cpus=num_cpus, concurrency=concurrency,
                                  override_num_blocks=len(man.shards))
    if shuffle_seed is not None:  # a seeded order must not depend on task timing
        ds.context.execution_options.preserve_order = True
    return ds.materialize() if cache else ds


def iter_numpy(ds, batch_size: int = 256, *, shuffle_buffer: int | None = None,
               shuffle_seed: int | None = None, drop_last: bool = False,
               prefetch_batches: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches (`as_arrays`) from a Dataset or a DataIterator (e.g. a Train shard)."""
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy",
                                 local_shuffle_buffer_size=shuffle_buffer,
                                 local_shuffle_seed=shuffle_seed, drop_last=drop_last,
                                 prefetch_batches=prefetch_batches):
        yield as_arrays(batch)
