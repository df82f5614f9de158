"""The index format: embedding shards written by `tnn.ray.embed`, read back for search.

Layout under a prefix (a local directory or `s3://bucket/prefix`), like the feature shards
of `tnn.data.shards`::

    part-00000.parquet ... part-NNNNN.parquet
    _manifest.json      written after every shard; no manifest = no index

Columns: `clip_id` string, `label` int32, `audio_emb` and `visual_emb`
fixed_size_list<float32>[Ka] / [Kv] (unit rows). The manifest (`"kind": "tnn-embeddings"`)
names the model (name, alias, both versions, run id, URI), widths, shards and rows, source.
`EmbeddingWriter` reuses `tnn.data.shard_writer` (atomic shards, manifest last, refusal to
overwrite); `load_index` reads an index into memory (float32) as an `Index`, which searches it
exactly (`tnn.serve.search`) or through IVF lists (`tnn.serve.ivf`: FAISS when installed,
else numpy; saved by `save_ivf`); `iter_blocks` and `search_stream` go shard by shard (memory
bounded by one row group). Read from storage: data only (shard names inside the index, IVF
lists as plain arrays, `allow_pickle=False`, checked). pyarrow is imported lazily.
"""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
import zipfile

import numpy as np

from tnn.data import shards, storage
from tnn.data.paths import check_name
from tnn.data.shard_writer import ShardWriter
from tnn.errors import DataError
from tnn.serve import ivf as ivf_lists
from tnn.serve import search as retrieval

KIND, VERSION = "tnn-embeddings", 1
IVF_FILE = "_ivf-{column}.npz"  # optional saved IVF lists of one column (save_ivf)
COLUMNS = ("clip_id", "label", "audio_emb", "visual_emb")
MODEL_KEYS = ("model_uri", "name", "alias", "versions", "run_id")


@dataclasses.dataclass(frozen=True)
class IndexManifest:
    """What an index's `_manifest.json` says."""

    model: dict  # MODEL_KEYS: where the embeddings came from (registry.load_encoders' info)
    audio_dim: int
    visual_dim: int
    shards: tuple[tuple[str, int], ...]
    source: str = ""
    class_names: tuple[str, ...] = ()
    index_id: str = ""  # random, new at every write: saved IVF lists name the index they fit

    @property
    def rows(self) -> int:
        return sum(r for _, r in self.shards)

    def width(self, column: str) -> int:
        return self.audio_dim if column == "audio_emb" else self.visual_dim

    def to_json(self) -> str:
        return json.dumps({"kind": KIND, "schema_version": VERSION, "model": self.model,
                           "audio_dim": self.audio_dim, "visual_dim": self.visual_dim,
                           "rows": self.rows, "num_shards": len(self.shards),
                           "source": self.source, "class_names": list(self.class_names),
                           "index_id": self.index_id,
                           "shards": [{"file": f, "rows": r} for f, r in self.shards]}, indent=1)

    @classmethod
    def from_json(cls, text: str, uri: str) -> "IndexManifest":
        where = storage.join(uri, shards.MANIFEST)
        try:
            d = json.loads(text)
            if d.get("kind") != KIND:
                raise DataError(f"{uri}: not an embedding index (its manifest is not "
                                f"kind {KIND!r}; build one with python -m jobs.embed)")
            man = cls({k: d["model"].get(k) for k in MODEL_KEYS}, int(d["audio_dim"]),
                      int(d["visual_dim"]), tuple((check_name(s["file"], where, "shard file"),
                                                   int(s["rows"])) for s in d["shards"]),
                      d.get("source", ""), tuple(d.get("class_names", ())),
                      d.get("index_id", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            if isinstance(err, DataError):
                raise
            raise DataError(f"{where}: not a valid index manifest "
                            f"({type(err).__name__}: {err})") from None
        if d["schema_version"] != VERSION or d.get("rows") != man.rows:
            raise DataError(f"{where}: schema version {d['schema_version']} or row count "
                            f"{d.get('rows')} is inconsistent (this tnn reads version {VERSION})")
        return man


def schema(audio_dim: int, visual_dim: int):
    import pyarrow as pa
    vector = lambda d: pa.list_(pa.field("element", pa.float32(), nullable=False), d)  # noqa
    types = [pa.string(), pa.int32(), vector(audio_dim), vector(visual_dim)]
    return pa.schema([pa.field(n, t, nullable=False) for n, t in zip(COLUMNS, types)])


def to_table(clip_ids, labels, audio_emb, visual_emb):
    """Numpy rows -> an Arrow table in index layout (float matrices are not copied)."""
    import pyarrow as pa
    sch = schema(audio_emb.shape[1], visual_emb.shape[1])
    fsl = lambda x, f: pa.FixedSizeListArray.from_arrays(  # noqa: E731
        pa.array(np.ascontiguousarray(x, np.float32).reshape(-1)), type=sch.field(f).type)
    return pa.table([pa.array(np.asarray(clip_ids).astype(str), pa.string()),
                     pa.array(np.asarray(labels, np.int32)), fsl(audio_emb, "audio_emb"),
                     fsl(visual_emb, "visual_emb")], schema=sch)


class EmbeddingWriter(ShardWriter):
    """`ShardWriter` for embedding rows: `write(clip_ids, labels, audio_emb, visual_emb)`.
    Closing publishes the manifest naming `model` (an index of 0 rows is written too, and
    refused at search time)."""

    def __init__(self, uri: str, *, model: dict, source: str = "", class_names=(),
                 rows_per_shard: int = 200_000, overwrite: bool = False, settings=None):
        super().__init__(uri, class_names=class_names, folds=0, fold_seed=0, source=source,
                         rows_per_shard=rows_per_shard, overwrite=overwrite, settings=settings)
        self._model = {k: model.get(k) for k in MODEL_KEYS}

    def write(self, clip_ids, labels, audio_emb, visual_emb) -> None:
        self._append(to_table(clip_ids, labels, audio_emb, visual_emb),
                     (int(audio_emb.shape[1]), int(visual_emb.shape[1])))

    def _parquet_writer(self, path: str):
        import pyarrow.parquet as pq
        return pq.ParquetWriter(path, schema(*self._widths), use_dictionary=False,
                                compression=self.compression, write_statistics=["label"])

    def close(self) -> IndexManifest:
        if self._pw is not None:
            self._finish()
        self.manifest = IndexManifest(self._model, *(self._widths or (0, 0)), tuple(self.shards),
                                      self._meta["source"], self._meta["class_names"],
                                      uuid.uuid4().hex)
        self._tmp = storage.temp_path(self.uri, shards.MANIFEST)
        with open(self._tmp, "w") as f:
            f.write(self.manifest.to_json())
        storage.publish(self._tmp, storage.join(self.uri, shards.MANIFEST), self._client)
        self._tmp = None
        return self.manifest


def read_manifest(uri: str, settings=None) -> IndexManifest:
    """The index manifest at `uri`; `DataError` if missing (unfinished), malformed or a
    feature shard set."""
    fs, root = storage.filesystem(uri, settings)
    try:
        with fs.open_input_stream(f"{root}/{shards.MANIFEST}") as f:
            text = f.read().decode()
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"{uri}: no {shards.MANIFEST}: not an embedding index, or its writing "
                        f"did not finish (the manifest is written last) ({err})") from None
    return IndexManifest.from_json(text, uri)


def _check_file(pf, man: IndexManifest, where: str, rows: int) -> None:
    expected = schema(man.audio_dim, man.visual_dim)
    for field in expected:
        if field.name not in pf.schema_arrow.names:
            raise DataError(f"{where}: missing column {field.name!r}")
        got = pf.schema_arrow.field(field.name).type
        if got != field.type:
            raise DataError(f"{where}: column {field.name!r} has type {got}, manifest says "
                            f"{field.type}")
    if pf.metadata.num_rows != rows:
        raise DataError(f"{where}: has {pf.metadata.num_rows} rows, manifest says {rows}")


def iter_blocks(uri: str, columns=COLUMNS, settings=None, man: IndexManifest | None = None):
    """(first row, {column: numpy}) per row group, shards in manifest order; vectors
    (n, K) float32. Memory: one row group (plus one shard's compressed bytes)."""
    man = man or read_manifest(uri, settings)
    fs, root = storage.filesystem(uri, settings)
    row0 = 0
    for name, rows in man.shards:
        where = storage.join(uri, name)
        pf = shards.open_shard(fs, f"{root}/{name}", where, whole=True)
        _check_file(pf, man, where, rows)
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=list(columns), use_threads=False)
            block = {c: shards.matrix(t[c], man.width(c)) if c.endswith("_emb") else
                     t[c].to_numpy(zero_copy_only=False) for c in columns}
            yield row0, block
            row0 += t.num_rows


class Index:
    """An embedding index in memory (`load_index`): search either direction exactly, or
    approximately through an `IVFIndex` (saved with the index, or built on first use)."""

    def __init__(self, clip_ids, labels, audio_emb, visual_emb, model: dict | None = None,
                 uri: str = "<memory>", class_names=()) -> None:
        self.clip_ids, self.labels = np.asarray(clip_ids), np.asarray(labels)
        self.emb = {"audio_emb": audio_emb, "visual_emb": visual_emb}
        self.model, self.uri, self.class_names = model or {}, uri, tuple(class_names)
        self._ivf: dict = {}  # column -> IVFIndex or FaissIVF (tnn.serve.ivf.build)

    def __len__(self) -> int:
        return len(self.labels)

    def ivf(self, column: str, nlist: int | None = None):
        """The IVF index of `column` (`ivf_lists.build`: FAISS when installed, else numpy): a
        saved or earlier one (`set_ivf`) unless `nlist` asks for another size, else built now
        (seconds per 100k rows)."""
        have = self._ivf.get(column)
        if have is None or nlist not in (None, have.nlist):
            self._ivf[column] = have = ivf_lists.build(self.emb[column], nlist)
        return have

    def set_ivf(self, column: str, ivf) -> None:
        self._ivf[column] = ivf

    def search(self, queries, modality: str, k: int = 10, *, model: dict | None = None,
               approx: bool = False, nprobe: int = 32, nlist: int | None = None) -> retrieval.Hits:
        """Top k of the other modality for query embeddings (Q, K) (unit-normalised here);
        `model`: the query encoder's info, refused unless it built the index."""
        k, column = retrieval.check_k(k), retrieval.gallery_column(modality)
        gallery = self.emb[column]
        q = retrieval.check_query(queries, len(self), gallery.shape[1], column, self.model,
                                  model, self.uri)
        rows, scores = self.ivf(column, nlist).search(q, k, nprobe) if approx else \
            retrieval.exact_search(q, gallery, k)
        safe = np.maximum(rows, 0)
        return retrieval.Hits(rows, scores, self.clip_ids[safe], self.labels[safe])


def load_index(uri: str, settings=None) -> Index:
    """The whole index in memory: ids, labels and both embedding matrices (float32)."""
    man = read_manifest(uri, settings)
    out = {"audio_emb": np.empty((man.rows, man.audio_dim), np.float32),
           "visual_emb": np.empty((man.rows, man.visual_dim), np.float32),
           "label": np.empty(man.rows, np.int32), "clip_id": np.empty(man.rows, object)}
    for row0, block in iter_blocks(uri, settings=settings, man=man):
        for col, values in block.items():
            out[col][row0:row0 + len(values)] = values
    index = Index(out["clip_id"].astype(str), out["label"], out["audio_emb"], out["visual_emb"],
                  man.model, uri, man.class_names)
    for column in COLUMNS[2:]:
        ivf = load_ivf(uri, column, index.emb[column], man, settings)
        if ivf is not None:
            index.set_ivf(column, ivf)
    return index


def save_ivf(uri: str, column: str, ivf, man: IndexManifest, settings=None) -> str:
    """Publish `ivf`'s centroids and row lists as `<uri>/_ivf-<column>.npz` (atomically),
    tagged with the index id so a rewritten index never uses stale lists; returns the URI."""
    name = IVF_FILE.format(column=column)
    tmp = storage.temp_path(uri, name)
    with open(tmp, "wb") as f:
        np.savez(f, centroids=ivf.centroids, assign=ivf.assignment(),
                 index_id=np.array(man.index_id))
    client = storage.s3_client(settings, storage.split_s3(uri)[0]) if storage.is_s3(uri) \
        else None
    storage.publish(tmp, storage.join(uri, name), client)
    return storage.join(uri, name)


def load_ivf(uri: str, column: str, gallery: np.ndarray, man: IndexManifest, settings=None):
    """The saved IVF lists of `column` if present and made for this index, else None; not
    plain arrays of the right shapes: `DataError` naming the file."""
    name = IVF_FILE.format(column=column)
    fs, root = storage.filesystem(uri, settings)
    try:
        with fs.open_input_stream(f"{root}/{name}") as f:
            raw = f.read()
    except (FileNotFoundError, OSError):
        return None
    where = storage.join(uri, name)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            saved = {k: z[k] for k in ("centroids", "assign", "index_id")}
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{where}: not readable IVF lists ({type(err).__name__}: {err}); "
                        "rebuild them with jobs.query --build-ivf") from None
    if str(saved["index_id"]) != man.index_id or len(saved["assign"]) != len(gallery):
        return None  # lists of an earlier index at this prefix
    return ivf_lists.from_lists(gallery, saved["centroids"], saved["assign"], where=where)


def search_stream(uri: str, queries: np.ndarray, modality: str, k: int = 10, *,
                  model: dict | None = None, settings=None) -> retrieval.Hits:
    """Exact search shard by shard with a running top k (`retrieval.TopK`): the index is
    never held whole. Same checks and results as `load_index(uri).search(...)`."""
    k, column = retrieval.check_k(k), retrieval.gallery_column(modality)
    man = read_manifest(uri, settings)
    q = retrieval.check_query(queries, man.rows, man.width(column), column, man.model, model, uri)
    acc, keep = retrieval.TopK(len(q), k), {}
    for row0, block in iter_blocks(uri, ("clip_id", "label", column), settings, man):
        acc.add(q @ block[column].T, row0)
        live = set(acc.result()[0].ravel().tolist())  # ids and labels of the running top k only
        keep = {r: v for r, v in keep.items() if r in live}
        keep.update((r, (str(block["clip_id"][r - row0]), int(block["label"][r - row0])))
                    for r in live if r >= row0)
    rows, scores = acc.result()
    return retrieval.Hits(rows, scores, np.array([[keep[r][0] for r in row] for row in rows]),
                          np.array([[keep[r][1] for r in row] for row in rows], np.int32))
