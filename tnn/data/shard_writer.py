"""Writing shard sets: atomic shards, the manifest last, refusal or write-then-publish.

`ShardWriter` streams row chunks into `part-NNNNN.parquet` files of `rows_per_shard` rows
(each chunk becomes row groups), so memory depends on the chunk, not on the data set. Every
shard is published atomically: locally a hidden temp file beside it and `os.replace`; on S3
a local temp file sent with one PUT (an object appears whole or not at all). The manifest is
published only after every shard, so an interrupted write leaves no data set.

Replacing a set (`overwrite`) is write-then-publish: nothing is deleted before the new set is
complete. The new shards get names that no file under the prefix has (`part-NNNNN-<tag>.parquet`),
the old manifest keeps naming the old shards while they are written, and publishing the new
manifest (`os.replace` locally, one PUT on S3) switches readers over in one step; only then
are the old shards deleted. A failure at any point before that (bad input, a full disk, a
killed process, a lost store) leaves the previous set readable, plus at most some unlisted
new shard files, which readers never read (they take names from the manifest) and the next
overwrite removes. Format and validation live in `tnn.data.shards`; pyarrow is imported lazily.
"""

from __future__ import annotations

import os
import secrets

import numpy as np

from tnn.data import storage
from tnn.errors import DataError
from tnn.data.shards import MANIFEST, MAX_WIDTH, Manifest, schema, to_table


def plan_prefix(fs, root: str, uri: str, overwrite: bool) -> list[str]:
    """Refuse a prefix that holds a manifest or shards unless `overwrite`; return the names
    that a published replacement makes obsolete (old shards, old temp files). Deletes nothing.
    """
    from pyarrow import fs as pafs
    if fs.get_file_info(root).type == pafs.FileType.File:
        raise DataError(f"{uri}: is a file; expected a directory or an s3:// prefix")
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))]
    shards = sorted(n for n in names if n.startswith("part-") and n.endswith(".parquet"))
    if (MANIFEST in names or shards) and not overwrite:
        what = "a data set" if MANIFEST in names else "shard files (no manifest)"
        raise DataError(f"{uri}: already holds {what}, {len(shards)} shard(s); pass "
                        "--overwrite to replace it")
    return shards + sorted(n for n in names if n.startswith((".part-", f".{MANIFEST}")))


def check_chunk(uri: str, audio, visual, labels, clip_ids, folds, num_classes: int,
                num_folds: int) -> None:
    """Refuse a chunk Arrow cannot hold or readers would refuse (one line naming the array):
    (N, D) float matrices with 1 <= D, one length for all five arrays, labels in 0..C-1,
    folds in 0..K-1, finite values. Zero widths are refused here: Arrow dies on them (SIGFPE)."""
    n = None
    for name, x in (("audio", audio), ("visual", visual)):
        shape = np.shape(x)
        if len(shape) != 2 or not 1 <= shape[1] <= MAX_WIDTH:
            raise DataError(f"{uri}: {name!r} has shape {shape}; expected (N, D) with "
                            f"1 <= D <= {MAX_WIDTH}")
        n = shape[0] if n is None else n
    for name, x in (("audio", audio), ("visual", visual), ("labels", labels),
                    ("clip_ids", clip_ids), ("folds", folds)):
        if len(x) != n:
            raise DataError(f"{uri}: {name!r} has {len(x)} rows, 'audio' has {n}")
    for name, x, hi in (("labels", labels, num_classes), ("folds", folds, num_folds)):
        x = np.asarray(x)
        if x.size and (x.dtype.kind not in "iu" or x.min() < 0 or x.max() >= hi):
            raise DataError(f"{uri}: {name!r} must be integers in 0..{hi - 1}; "
                            f"got {x.dtype} values {x.min()}..{x.max()}")
    for name, x in (("audio", audio), ("visual", visual)):
        if not np.isfinite(np.asarray(x, np.float32)).all():
            raise DataError(f"{uri}: {name!r} has NaN or inf values")


class ShardWriter:
    """Stream row chunks into `part-NNNNN.parquet` shards of `rows_per_shard` rows.

    Each `write` call appends one or more row groups. Use as a context manager: leaving the
    block normally publishes the last shard and then the manifest (`self.manifest`); an
    exception removes the open temp file and writes no manifest.
    """

    def __init__(self, uri: str, *, class_names, folds: int, fold_seed: int, source: str = "",
                 rows_per_shard: int = 50_000, overwrite: bool = False, settings=None,
                 compression: str = "snappy"):
        if rows_per_shard < 1:
            raise DataError(f"rows_per_shard must be >= 1; got {rows_per_shard}")
        self.uri, self.rows_per_shard = str(uri).rstrip("/"), rows_per_shard
        self.compression = compression
        self._meta = dict(class_names=tuple(str(c) for c in class_names), folds=int(folds),
                          fold_seed=int(fold_seed), source=source)
        self._fs, self._root = storage.filesystem(self.uri, settings)
        self._client = storage.s3_client(settings, storage.split_s3(self.uri)[0]) \
            if storage.is_s3(self.uri) else None
        if self._client is not None:
            storage.check_bucket(self._client, self.uri)
        self._obsolete = plan_prefix(self._fs, self._root, self.uri, overwrite)
        self._tag = f"-{secrets.token_hex(4)}" if self._obsolete else ""
        if not storage.is_s3(self.uri):
            self._fs.create_dir(self._root, recursive=True)
        self.shards: list[tuple[str, int]] = []
        self.manifest: Manifest | None = None
        self._widths = self._pw = self._tmp = None
        self._rows = 0

    @property
    def rows(self) -> int:
        return sum(r for _, r in self.shards) + self._rows

    def write(self, audio, visual, labels, clip_ids, folds) -> None:
        """Append rows (numpy arrays of equal length) in shard layout."""
        check_chunk(self.uri, audio, visual, labels, clip_ids, folds,
                    len(self._meta["class_names"]), self._meta["folds"])
        self._append(to_table(audio, visual, labels, clip_ids, folds),
                     (int(audio.shape[1]), int(visual.shape[1])))

    def _append(self, table, widths: tuple[int, int]) -> None:
        """Append an Arrow table, cutting shards of `rows_per_shard` rows."""
        if self._widths not in (None, widths):
            raise DataError(f"{self.uri}: chunk widths {widths} differ from {self._widths}")
        self._widths, start = widths, 0
        while start < table.num_rows:
            if self._pw is None:
                self._start()
            take = min(table.num_rows - start, self.rows_per_shard - self._rows)
            self._pw.write_table(table.slice(start, take))
            self._rows, start = self._rows + take, start + take
            if self._rows == self.rows_per_shard:
                self._finish()

    def _name(self) -> str:
        return f"part-{len(self.shards):05d}{self._tag}.parquet"

    def _parquet_writer(self, path: str):
        import pyarrow.parquet as pq
        return pq.ParquetWriter(path, schema(*self._widths), use_dictionary=False,
                                compression=self.compression, write_statistics=["label", "fold"])

    def _start(self) -> None:
        self._tmp = storage.temp_path(self.uri, self._name())
        self._pw = self._parquet_writer(self._tmp)
        self._rows = 0

    def _finish(self) -> None:
        self._pw.close()
        self._pw = None
        self._publish(self._tmp, self._name())
        self.shards.append((self._name(), self._rows))
        self._rows, self._tmp = 0, None

    def _publish(self, tmp: str, name: str) -> None:
        storage.publish(tmp, storage.join(self.uri, name), self._client)

    def close(self) -> Manifest:
        """Publish the open shard, then the manifest; return the manifest."""
        if self._pw is not None:
            self._finish()
        if not self.shards:
            raise DataError(f"{self.uri}: nothing to write (0 rows)")
        self.manifest = Manifest(*self._widths, shards=tuple(self.shards), **self._meta)
        self.publish_manifest(self.manifest.to_json())
        return self.manifest

    def publish_manifest(self, text: str) -> None:
        """Publish the manifest (the one step that switches readers to the new set), then
        delete what it replaced: the old set's shards and stale temp files."""
        self._tmp = storage.temp_path(self.uri, MANIFEST)
        with open(self._tmp, "w") as f:
            f.write(text)
        storage.publish(self._tmp, storage.join(self.uri, MANIFEST), self._client)
        self._tmp = None
        listed = {name for name, _ in self.shards}
        for name in self._obsolete:
            if name not in listed:
                try:
                    self._fs.delete_file(f"{self._root}/{name}")
                except OSError:  # gone already, or the store failed: a stray, never read
                    pass

    def abort(self) -> None:
        """Drop the shard being written; published shards stay, the manifest is not written."""
        if self._pw is not None:
            self._pw.close()
            self._pw = None
        if self._tmp and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._tmp = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self.manifest is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
