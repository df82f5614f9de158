"""Shards -> Ray Datasets (streaming); with `tnn.ray.prepare`, a `ray.data` edge.

`dataset(uri, ...)` reads a shard set (see `tnn.data.shards`) through a small custom datasource:
one read task per shard fetches the object in one GET (object stores serve one large read
far better than many ranged ones), decodes it on one thread and emits it as one Arrow table
(single-chunk columns, so Ray's batcher slices it without copying) whose `audio`/`visual`
are `fixed_shape_tensor` columns over the decoded buffers (no copy). So vectors arrive as
(B, D) float32 ndarrays, not object arrays of rows, and `iter_torch_batches` works once the
string `clip_id` is projected away. Read tasks check their shard's schema (and by default
its values) against the manifest, so bad data fails naming the shard and column. Why this
shape, and the measured gain: `bench/ingest.py`, `refresh_limits_often`.

The framework-free parts live in `tnn.data`: a read task's rows come from
`tnn.data.reader.shard_tables` (and `fold_filter`), batches are normalised by
`tnn.data.batches.as_arrays`; the full in-memory load without Ray is
`tnn.data.reader.read_pairs`. Ray itself is imported only inside `dataset` / `_datasource`.
"""

from __future__ import annotations

import functools
from typing import Iterable, Iterator

import numpy as np

from tnn.data import shards, storage
from tnn.data.batches import as_arrays
from tnn.data.reader import fold_filter, shard_tables
from tnn.errors import ConfigError

NUMERIC = ("label", "audio", "visual", "fold")
CHECKS = (None, "manifest", "schema", "deep")
LIMITS_REFRESH_S = 0.1  # see `refresh_limits_often`


def _read_shard(uri, name, settings, man, columns, keep_folds, seed, values) -> Iterable:
    fs, root = storage.filesystem(uri, settings)
    where = storage.join(uri, name)
    pf = shards.open_shard(fs, f"{root}/{name}", where, whole=True)
    shards.check_file(pf, man, where, dict(man.shards)[name])
    yield from shard_tables(pf, man, where, columns, keep_folds, seed, values)


def _datasource(uri, man, settings, columns, keep_folds, seed, values, refresh=True):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ShardDatasource(Datasource):
        """One read task per shard, in manifest order or permuted by `seed`."""

        def get_name(self) -> str:
            return "TnnShards"

        def estimate_inmemory_data_size(self) -> int:
            return man.rows * _row_bytes(man, columns)

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            if refresh:  # runs where the plan executes (driver, split coordinator)
                refresh_limits_often()
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
    setting was found (a later Ray may move it; then this does nothing). The private setting
    is reached through `tnn.ray.compat`.
    """
    from tnn.ray import compat
    return compat.refresh_limits_often(seconds)


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
            concurrency: int | None = None, cache: bool = False, refresh_limits: bool = False):
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
    refresh_limits: shorten Ray Data's limits refresh when the plan executes
        (`refresh_limits_often`, a private Ray setting). Default False: public Ray APIs only
        (every execution may start with up to a second of serial reads); bench/ingest.py
        measures both side by side, and the private setting gave no gain beyond the noise.
    """
    import ray.data
    settings = settings or storage.StorageSettings.from_env()
    man, columns = _checked_manifest(uri, check, settings), _projection(columns)
    source = _datasource(uri, man, settings, columns, fold_filter(man, folds, exclude_folds),
                         shuffle_seed, values=check in ("manifest", "schema"),
                         refresh=refresh_limits)
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
