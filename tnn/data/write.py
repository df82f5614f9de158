"""Writing data sets: any data source as a shard set (`write`), a JSON result (`write_json`).

`write(spec, out)` streams `load_source`-able data (synthetic sets chunk by chunk: labels
first, then features, so memory does not grow with N) through a `ShardWriter` with
class-balanced folds (`assign_folds(labels, folds, seed)`) stored per row. `jobs.make_shards`
is its command line; tests and `bench/` call it directly.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from tnn.core.folds import assign_folds
from tnn.data import shards, storage
from tnn.data.shard_writer import ShardWriter
from tnn.data.sources import load_source
from tnn.data.storage import StorageSettings
from tnn.errors import DataError

PROGRESS_SECONDS = 2.0


def chunks(spec: str, k: int, seed: int, chunk_rows: int):
    """(class names, rows, iterator of (audio, visual, labels, clip_ids, folds) chunks)."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        from tnn.data.synthetic import iter_synthetic, parse_spec, synthetic_labels
        kwargs = parse_spec(arg)
        folds = assign_folds(synthetic_labels(**kwargs), k, seed)
        parts = iter_synthetic(chunk_rows=chunk_rows, **kwargs)
        first = next(parts)
        stream = itertools.chain([first], parts)
    else:
        first = load_source(spec)
        folds = assign_folds(first.labels, k, seed)
        stream = (first.subset(slice(i, i + chunk_rows)) for i in range(0, first.n, chunk_rows))

    def rows():
        start = 0
        for p in stream:
            yield p.audio, p.visual, p.labels, p.clip_ids, folds[start:start + p.n]
            start += p.n
    return first.class_names, len(folds), rows()


def write(spec: str, out: str, *, rows_per_shard: int = 25_000, folds: int = 5,
          seed: int = 0, overwrite: bool = False, chunk_rows: int = 8192,
          settings: StorageSettings | None = None, log=print,
          job: str = "make_shards") -> shards.Manifest:
    """Write `spec` to `out` as shards + manifest, logging `<job>: rows/total rows, rate`
    progress lines through `log` every PROGRESS_SECONDS."""
    if chunk_rows < 1:
        raise DataError(f"--chunk-rows must be >= 1; got {chunk_rows}")
    names, total, rows = chunks(spec, folds, seed, chunk_rows)
    start = last = time.perf_counter()
    with ShardWriter(out, class_names=names, folds=folds, fold_seed=seed, source=spec,
                     rows_per_shard=rows_per_shard, overwrite=overwrite,
                     settings=settings) as writer:
        for chunk in rows:
            writer.write(*chunk)
            now = time.perf_counter()
            if now - last >= PROGRESS_SECONDS:
                log(f"{job}: {writer.rows}/{total} rows, "
                    f"{writer.rows / (now - start):.0f} rows/s", flush=True)
                last = now
    return writer.manifest


def write_json(uri: str, data: dict) -> None:
    """A local path or s3://bucket/key (a job's working directory on a cluster is temporary)."""
    fs, path = storage.filesystem(uri)
    if not storage.is_s3(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(data, indent=2).encode())
