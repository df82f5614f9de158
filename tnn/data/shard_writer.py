"""Writing shard sets: atomic shards, the manifest last, refusal or safe overwrite.

`ShardWriter` streams row chunks into `part-NNNNN.parquet` files of `rows_per_shard` rows
(each chunk becomes row groups), so memory depends on the chunk, not on the data set. Every
shard is published atomically: locally a hidden temp file beside it and `os.replace`; on S3
a local temp file sent with one PUT (an object appears whole or not at all). The manifest is
published only after every shard, so an interrupted write leaves no data set. Format and
validation live in `tnn.data.shards`; pyarrow is imported lazily.
"""

from __future__ import annotations

import os

from tnn.data import storage
from tnn.errors import DataError
from tnn.data.shards import MANIFEST, Manifest, schema, to_table


def prepare_prefix(fs, root: str, uri: str, overwrite: bool) -> None:
    """Refuse a prefix that holds a manifest or shards, or (`overwrite`) empty it safely.

    The old manifest is deleted first, so a crash while overwriting leaves no data set.
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
    if MANIFEST in names:
        fs.delete_file(f"{root}/{MANIFEST}")
    for name in shards + [n for n in names if n.startswith((".part-", f".{MANIFEST}"))]:
        fs.delete_file(f"{root}/{name}")
    if not storage.is_s3(uri):
        fs.create_dir(root, recursive=True)


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
        self._client = storage.s3_client(settings) if storage.is_s3(self.uri) else None
        if self._client is not None:
            storage.check_bucket(self._client, self.uri)
        prepare_prefix(self._fs, self._root, self.uri, overwrite)
        self.shards: list[tuple[str, int]] = []
        self.manifest: Manifest | None = None
        self._widths = self._pw = self._tmp = None
        self._rows = 0

    @property
    def rows(self) -> int:
        return sum(r for _, r in self.shards) + self._rows

    def write(self, audio, visual, labels, clip_ids, folds) -> None:
        """Append rows (numpy arrays of equal length) in shard layout."""
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
        return f"part-{len(self.shards):05d}.parquet"

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
        self._tmp = storage.temp_path(self.uri, MANIFEST)
        with open(self._tmp, "w") as f:
            f.write(self.manifest.to_json())
        storage.publish(self._tmp, storage.join(self.uri, MANIFEST), self._client)
        self._tmp = None
        return self.manifest

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
            self.close()
