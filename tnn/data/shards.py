"""The shard format: Parquet files under a prefix plus a manifest written last.

Layout under a prefix (a local directory or `s3://bucket/prefix`)::

    part-00000.parquet ... part-NNNNN.parquet
    _manifest.json      written after every shard; no manifest = not a data set

Columns: `clip_id` string (unique over the set), `label` int32 in 0..C-1, `audio` and
`visual` fixed_size_list<float32>[Da] / [Dv], `fold` int8 in 0..K-1 (class-balanced, fixed
at write time). The manifest holds the schema version, widths, class names, the shard files
with their row counts, the fold count and seed and the source. Readers take the file list
from the manifest, never from a listing, so stray or half-written files are never read. Nothing
in a manifest is taken on trust: shard names must stay inside the set (`tnn.data.paths`),
widths and counts are bounded integers, and readers compare every count with the Parquet
footers before they allocate (`tnn.data.reader.read_pairs`).

This module holds the format (schema, manifest, numpy <-> Arrow) and `validate`;
`tnn.data.shard_writer.ShardWriter` writes sets, `tnn.data.reader` reads them without Ray
(`tnn.ray.dataset` through Ray Data). pyarrow is imported lazily (this module is core:
importing it pulls in no framework).
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tnn.data import paths, storage
from tnn.errors import DataError

SCHEMA_VERSION = 1
MANIFEST = "_manifest.json"
COLUMNS = ("clip_id", "label", "audio", "visual", "fold")
VECTORS = ("audio", "visual")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What `_manifest.json` says about a shard set."""

    audio_dim: int
    visual_dim: int
    class_names: tuple[str, ...]
    shards: tuple[tuple[str, int], ...]  # (file name under the prefix, rows)
    folds: int
    fold_seed: int
    source: str = ""
    version: int = SCHEMA_VERSION

    @property
    def rows(self) -> int:
        return sum(r for _, r in self.shards)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def width(self, column: str) -> int:
        return self.audio_dim if column == "audio" else self.visual_dim

    def to_json(self) -> str:
        return json.dumps({
            "schema_version": self.version, "source": self.source,
            "audio_dim": self.audio_dim, "visual_dim": self.visual_dim,
            "num_classes": self.num_classes, "class_names": list(self.class_names),
            "rows": self.rows, "num_shards": len(self.shards),
            "folds": self.folds, "fold_seed": self.fold_seed,
            "columns": dict(zip(COLUMNS, map(str, _types(self.audio_dim, self.visual_dim)))),
            "shards": [{"file": f, "rows": r} for f, r in self.shards]}, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str) -> "Manifest":
        """Parse and check a manifest: every field of the right type and range, shard names
        that stay inside the set (`tnn.data.paths`), counts that agree (`DataError`)."""
        try:
            d = json.loads(text)
            version = d["schema_version"]
            man = cls(_int(d, "audio_dim", 1, MAX_WIDTH), _int(d, "visual_dim", 1, MAX_WIDTH),
                      tuple(_names(d["class_names"])), tuple(_shards(d["shards"], where)),
                      _int(d, "folds", 1, 2**7 - 1), _int(d, "fold_seed", -2**63, 2**64 - 1),
                      str(d.get("source", "")), version)
        except DataError:  # a shard name outside the set: its own line
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            raise DataError(f"{where}: not a valid manifest "
                            f"({type(err).__name__}: {err})") from None
        if version != SCHEMA_VERSION:
            raise DataError(f"{where}: schema version {version} is not supported "
                            f"(this tnn reads version {SCHEMA_VERSION})")
        if (d.get("rows"), d.get("num_classes")) != (man.rows, man.num_classes):
            raise DataError(f"{where}: inconsistent manifest (rows or class counts disagree)")
        return man


MAX_WIDTH = 2**20  # floats per vector: far above any feature, far below an allocation bomb
MAX_MANIFEST_BYTES = 64 << 20


def _int(d: dict, key: str, lo: int, hi: int) -> int:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{key} must be an integer in {lo}..{hi}; got {value!r}")
    return value


def _names(names) -> list[str]:
    if not isinstance(names, list) or not names or \
            not all(isinstance(n, str) for n in names):
        raise ValueError("class_names must be a non-empty list of strings")
    return names


def _shards(entries, where: str) -> list[tuple[str, int]]:
    """(file, rows) of each listed shard; names checked to stay inside the set."""
    if not isinstance(entries, list) or not entries:
        raise ValueError("shards must be a non-empty list")
    out = [(paths.check_name(s["file"], where, "shard file"), _int(s, "rows", 0, 2**62))
           for s in entries]
    names = [f for f, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"shard file {next(n for n in names if names.count(n) > 1)!r} "
                         "is listed twice")
    return out


def _types(audio_dim: int, visual_dim: int) -> list:
    import pyarrow as pa
    vector = lambda d: pa.list_(pa.field("element", pa.float32(), nullable=False), d)  # noqa
    return [pa.string(), pa.int32(), vector(audio_dim), vector(visual_dim), pa.int8()]


def schema(audio_dim: int, visual_dim: int):
    """The Arrow schema shards are written with. Every field is non-nullable: Parquet then
    stores no definition levels for the floats, which decodes ~25% faster (measured)."""
    import pyarrow as pa
    return pa.schema([pa.field(n, t, nullable=False)
                      for n, t in zip(COLUMNS, _types(audio_dim, visual_dim))])


def to_table(audio, visual, labels, clip_ids, folds):
    """Numpy chunk -> Arrow table in shard layout (float matrices are not copied)."""
    import pyarrow as pa
    sch = schema(audio.shape[1], visual.shape[1])
    fsl = lambda x, f: pa.FixedSizeListArray.from_arrays(  # noqa: E731
        pa.array(np.ascontiguousarray(x, np.float32).reshape(-1)), type=sch.field(f).type)
    return pa.table([pa.array(np.asarray(clip_ids).astype(str), pa.string()),
                     pa.array(np.asarray(labels, np.int32)), fsl(audio, "audio"),
                     fsl(visual, "visual"), pa.array(np.asarray(folds, np.int8))], schema=sch)


def matrix(column, width: int | None = None) -> np.ndarray:
    """A fixed-size-list (or fixed-shape tensor) column, Array or ChunkedArray -> (n, width)
    numpy; zero-copy for a single chunk."""
    width = width or getattr(column.type, "storage_type", column.type).list_size
    parts = [getattr(c, "storage", c).flatten().to_numpy().reshape(-1, width)
             for c in getattr(column, "chunks", [column])]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty((0, width), np.float32)


def read_manifest(uri: str, settings=None) -> Manifest:
    """Read and parse `<uri>/_manifest.json`; `DataError` if it is missing or malformed."""
    fs, root = storage.filesystem(uri, settings)
    where = storage.join(uri, MANIFEST)
    try:
        with fs.open_input_stream(f"{root}/{MANIFEST}") as f:
            parts, size = [], 0
            while size <= MAX_MANIFEST_BYTES and (part := f.read(1 << 20)):
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
    except (FileNotFoundError, OSError) as err:
        if isinstance(err, FileNotFoundError) or "does not exist" in str(err).lower() \
                or "not found" in str(err).lower():
            raise DataError(f"{uri}: no {MANIFEST}: not a shard data set, or its writing "
                            "did not finish (the manifest is written last)") from None
        raise DataError(f"{where}: cannot read ({err})") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise DataError(f"{where}: larger than {MAX_MANIFEST_BYTES >> 20} MiB: not a manifest")
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return Manifest.from_json(text, where)


def check_schema(actual, man: Manifest, where: str) -> None:
    """Names, types and fixed widths of a shard's Arrow schema against the manifest
    (nullability and list child names are not compared: nulls are a value check)."""
    import pyarrow as pa
    names = actual.names
    for name, expected in zip(COLUMNS, _types(man.audio_dim, man.visual_dim)):
        if name not in names:
            raise DataError(f"{where}: missing column {name!r}; found {names}")
        got = actual.field(name).type
        if name in VECTORS and pa.types.is_fixed_size_list(got) and \
                got.value_type == pa.float32():
            if got.list_size != man.width(name):
                raise DataError(f"{where}: column {name!r} has width {got.list_size}, "
                                f"manifest says {man.width(name)}")
        elif got != expected:
            raise DataError(f"{where}: column {name!r} has type {got}, expected {expected}")


def check_values(table, man: Manifest, where: str, row0: int = 0) -> None:
    """Nulls, NaN/inf vectors, label and fold ranges of one shard's rows (a table or batch)."""
    for name in table.column_names:
        if table.column(name).null_count:
            raise DataError(f"{where}: column {name!r} has null values")
    for name in VECTORS:
        if name in table.column_names:
            finite = np.isfinite(matrix(table.column(name), man.width(name))).all(axis=1)
            if not finite.all():
                _bad_row(table, where, name, "has NaN or inf values", ~finite, row0)
    for name, hi in (("label", man.num_classes), ("fold", man.folds)):
        if name in table.column_names:
            x = table.column(name).to_numpy()
            bad = (x < 0) | (x >= hi)
            if bad.any():
                _bad_row(table, where, name, f"value {x[bad][0]} is out of range 0..{hi - 1}",
                         bad, row0)


def _bad_row(table, where, name, what, bad, row0) -> None:
    i = int(np.flatnonzero(bad)[0])
    clip = (f", clip {table.column('clip_id')[i].as_py()!r}"
            if "clip_id" in table.column_names else "")
    raise DataError(f"{where}: column {name!r} {what} (row {row0 + i} of the shard{clip})")


def check_unique(ids: list[np.ndarray], files: list[str], uri: str) -> None:
    """Clip ids must be unique over all shards; name the shards that share one."""
    flat = np.concatenate(ids) if ids else np.array([], str)
    uniq, counts = np.unique(flat, return_counts=True)
    if len(uniq) == len(flat):
        return
    dup = uniq[counts > 1][0]
    where = [f for f, x in zip(files, ids) if (x == dup).any()]
    raise DataError(f"{storage.join(uri, where[-1])}: column 'clip_id' repeats id {str(dup)!r} "
                    f"(also in {', '.join(where[:-1]) or 'the same shard'})")


def open_shard(fs, path: str, where: str, whole: bool = False):
    """A `ParquetFile` for one shard; `whole` fetches the object in one GET first (fastest
    when most bytes are read: object stores serve one large read better than many ranges)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        if not whole:
            return pq.ParquetFile(fs.open_input_file(path))
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(pa.BufferReader(f.read_buffer()))
    except FileNotFoundError:
        raise DataError(f"{where}: listed in the manifest but missing") from None
    except (OSError, pa.ArrowException) as err:  # ArrowInvalid (a corrupt footer) is no OSError
        raise DataError(f"{where}: not a readable Parquet file ({err})") from None


def check_file(pf, man: Manifest, where: str, rows: int) -> None:
    """A shard's schema and row count (its footer) against the manifest."""
    check_schema(pf.schema_arrow, man, where)
    if pf.metadata.num_rows != rows:
        raise DataError(f"{where}: has {pf.metadata.num_rows} rows, manifest says {rows}")


def _checked_ids(pf, man: Manifest, where: str) -> np.ndarray:
    row0, ids = 0, [np.array([], str)]
    for batch in pf.iter_batches(batch_size=8192):
        check_values(batch, man, where, row0)
        row0 += batch.num_rows
        ids.append(batch.column("clip_id").to_numpy(zero_copy_only=False).astype(str))
    return np.concatenate(ids)


def validate(uri: str, deep: bool = True, settings=None) -> Manifest:
    """Check a shard set; raise `DataError` naming the shard file and column at fault.

    Always: the manifest (present, version), every listed shard's schema and row count
    (footers, fetched concurrently). `deep`: every value too (nulls, NaN/inf, label and fold
    ranges, clip ids unique across shards), one shard in memory at a time.
    """
    man = read_manifest(uri, settings)
    fs, root = storage.filesystem(uri, settings)

    def one(shard: tuple[str, int]):
        where = storage.join(uri, shard[0])
        pf = open_shard(fs, f"{root}/{shard[0]}", where, whole=deep)
        check_file(pf, man, where, shard[1])
        return _checked_ids(pf, man, where) if deep else None

    if deep:
        check_unique([one(s) for s in man.shards], [n for n, _ in man.shards], uri)
    else:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, man.shards))
    return man
