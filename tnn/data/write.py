"""Writing data sets: any data source as a shard set (`write`), a JSON result (`write_json`),
and the write-then-publish helpers every job output goes through.

`write(spec, out)` streams `load_source`-able data (synthetic sets chunk by chunk: labels
first, then features, so memory does not grow with N) through a `ShardWriter` with
class-balanced folds (`assign_folds(labels, folds, seed)`) stored per row. `jobs.make_shards`
is its command line; tests and `bench/` call it directly.

Write-then-publish (`Staged`, `write_bytes`, `write_json`): an output is written under a
temporary name in its final folder (`.NAME.tmp-XXXXXXXX`) and renamed over NAME only when every
output of the step was written, so a failure at any point leaves what was there before. On S3
an object appears only when its one PUT completes. `check_writable` refuses, before any work,
an output path that can never be written (a folder, a parent that is a file, no permission).
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from pathlib import Path

from tnn.core.folds import assign_folds
from tnn.data import shards, storage
from tnn.data.shard_writer import ShardWriter
from tnn.data.sources import load_source
from tnn.data.storage import StorageSettings
from tnn.errors import ConfigError, DataError, TnnError

PROGRESS_SECONDS = 2.0


def chunks(spec: str, k: int, seed: int, chunk_rows: int):
    """(class names, rows, iterator of (audio, visual, labels, clip_ids, folds) chunks)."""
    kind, _, arg = spec.partition(":")
    if kind in ("vegas", "ave"):  # releases: clip by clip, their stored folds when K fits
        from tnn.data.releases import open_release
        return open_release(spec).chunks(k, seed, chunk_rows)
    if kind == "synthetic":
        from tnn.data.synthetic import iter_synthetic, parse_spec, synthetic_labels
        kwargs = parse_spec(arg)
        folds = _folds(spec, synthetic_labels(**kwargs), k, seed)
        parts = iter_synthetic(chunk_rows=chunk_rows, **kwargs)
        first = next(parts)
        stream = itertools.chain([first], parts)
    else:
        first = load_source(spec)
        folds = _folds(spec, first.labels, k, seed)
        stream = (first.subset(slice(i, i + chunk_rows)) for i in range(0, first.n, chunk_rows))

    def rows():
        start = 0
        for p in stream:
            yield p.audio, p.visual, p.labels, p.clip_ids, folds[start:start + p.n]
            start += p.n
    return first.class_names, len(folds), rows()


def _folds(spec: str, labels, k: int, seed: int):
    try:
        return assign_folds(labels, k, seed)
    except TnnError as err:  # name the source
        raise type(err)(f"{spec}: {err}") from None


def write(spec: str, out: str, *, rows_per_shard: int = 25_000, folds: int = 5,
          seed: int = 0, overwrite: bool = False, chunk_rows: int = 8192,
          settings: StorageSettings | None = None, log=print,
          job: str = "make_shards") -> shards.Manifest:
    """Write `spec` to `out` as shards + manifest, logging through `log` a progress line per
    shard written (`<job>: shard 3/8 written: 75000/200000 rows, 11000 rows/s, ~11 s left`)
    and, between shards, one every PROGRESS_SECONDS."""
    if chunk_rows < 1:
        raise DataError(f"--chunk-rows must be >= 1; got {chunk_rows}")
    names, total, rows = chunks(spec, folds, seed, chunk_rows)
    start = last = time.perf_counter()
    with ShardWriter(out, class_names=names, folds=folds, fold_seed=seed, source=spec,
                     rows_per_shard=rows_per_shard, overwrite=overwrite,
                     settings=settings) as writer:
        shown = 0
        for chunk in rows:  # cut where shards end (as the writer does): a line per shard
            n, at = len(chunk[2]), 0
            while at < n:
                take = min(n - at, rows_per_shard - writer.rows % rows_per_shard)
                writer.write(*(column[at:at + take] for column in chunk))
                at, now = at + take, time.perf_counter()
                if len(writer.shards) > shown or now - last >= PROGRESS_SECONDS:
                    log(progress(job, writer, total, rows_per_shard, now - start), flush=True)
                    shown, last = len(writer.shards), now
    if len(writer.shards) > shown:  # the last, partial shard is published on closing
        log(progress(job, writer, total, rows_per_shard, time.perf_counter() - start),
            flush=True)
    return writer.manifest


def progress(job: str, writer: ShardWriter, total: int, rows_per_shard: int,
             seconds: float) -> str:
    """`make_shards: shard 3/8 written: 75000/200000 rows, 11000 rows/s, ~11 s left`."""
    rate = writer.rows / max(seconds, 1e-9)
    left = f", ~{(total - writer.rows) / rate:.0f} s left" if rate and total > writer.rows else ""
    return (f"{job}: shard {len(writer.shards)}/{max(1, -(-total // rows_per_shard))} written: "
            f"{writer.rows}/{total} rows, {rate:.0f} rows/s{left}")


class Staged:
    """Files written under temporary names in their final folders, renamed into place together
    when the `with` block ends without an error; on an error the temporary files are removed
    and every final file is as it was.

        with Staged() as stage:
            fig.savefig(stage(out / "plot.png"), format="png")
            stage(out / "results.md").write_text(text)
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []

    def __call__(self, final: str | Path) -> Path:
        final = Path(final)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        self.pending.append((tmp, final))
        return tmp

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, kind, err, tb) -> None:
        if kind is None:
            for tmp, final in self.pending:
                os.replace(tmp, final)
        else:
            for tmp, _ in self.pending:
                tmp.unlink(missing_ok=True)


def check_writable(uri: str, option: str) -> None:
    """Refuse a local output path that cannot be written, before any work: `ConfigError`
    naming the option and the path (S3 keys are checked when written)."""
    if "\x00" in uri:
        raise ConfigError(f"{option} {uri!r}: a path cannot hold a NUL character")
    if storage.is_s3(uri):
        return
    path = Path(uri)
    if not path.name or path.is_dir():
        raise ConfigError(f"{option} {uri}: is a folder; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {uri}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {uri}: no permission to write in {parent}")


def write_bytes(uri: str, data: bytes) -> None:
    """A local path (temporary name, then renamed over it) or s3://bucket/key (one PUT)."""
    fs, path = storage.filesystem(uri)
    if storage.is_s3(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Staged() as stage:
        stage(path).write_bytes(data)


def write_json(uri: str, data: dict) -> None:
    """A local path or s3://bucket/key (a job's working directory on a cluster is temporary),
    published only once completely written."""
    write_bytes(uri, json.dumps(data, indent=2).encode())
