"""Searching an embedding index from files: query rows, exact / IVF / streamed search, output.

`search` runs query embeddings against an index (`tnn.serve.index`): in memory, exactly or
through IVF lists (`approx`), or shard by shard (`stream`, bounded memory); `open_index`
makes the checks that come before any work. `build_ivf` builds, measures (recall@k against
exact search, speed-up) and saves the IVF lists of both columns. Raw features are embedded
first by `tnn.tracking.query.query` (the registered encoders); `jobs.query` is the command line.
"""

from __future__ import annotations

import time

import numpy as np

from tnn.errors import ConfigError, DataError
from tnn.serve import index as embedding_shards
from tnn.serve import ivf as ivf_lists
from tnn.serve import search as retrieval


def load_queries(path: str) -> np.ndarray:
    """A .npy file of query rows (N, D) or one row (D,), as finite float32 (N, D)."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read a .npy array ({err})") from None
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or x.dtype.kind not in "iuf" or len(x) == 0:
        raise DataError(f"{path}: expected a non-empty numeric (N, D) array; got dtype "
                        f"{x.dtype}, shape {x.shape}")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)  # a value beyond float32's range becomes inf: refused below
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise DataError(f"{path}: row {bad[0]} has NaN or inf values (or beyond float32)")
    return x


def open_index(index_uri: str, modality: str, k) -> embedding_shards.IndexManifest:
    """The checks before any work (k, modality, a non-empty index); the index's manifest."""
    retrieval.check_k(k)
    retrieval.gallery_column(modality)  # refuse an unknown modality before any work
    man = embedding_shards.read_manifest(index_uri)
    if man.rows == 0:
        raise DataError(f"{index_uri}: the index is empty (0 rows): nothing to search")
    return man


def search(index_uri: str, x: np.ndarray, modality: str, k: int = 10, *,
           model: dict | None = None, approx: bool = False, nprobe: int = 32,
           stream: bool = False, man: embedding_shards.IndexManifest | None = None
           ) -> retrieval.Hits:
    """Top k of the other modality for query embeddings `x` of `modality`. `model`: the query
    encoder's info, refused (before the index is read) unless it built the index."""
    man = man or open_index(index_uri, modality, k)
    k = retrieval.check_k(k)
    if stream:
        if approx:
            raise ConfigError("--stream searches exactly; drop --approx or --stream")
        return embedding_shards.search_stream(index_uri, x, modality, k, model=model)
    if model is not None:  # refuse before reading the whole index
        retrieval.check_model(man.model, model, index_uri)
    index = embedding_shards.load_index(index_uri)
    return index.search(x, modality, k, model=model, approx=approx, nprobe=nprobe)


def build_ivf(index_uri: str, nlist: int | None = None, nprobe: int = 32, k: int = 10,
              sample: int = 1000, log=print) -> dict:
    """Build, measure and save the IVF lists of both columns: recall@k against exact search
    and the speed-up, with `sample` rows of the other modality as queries."""
    index = embedding_shards.load_index(index_uri)
    if len(index) == 0:
        raise DataError(f"{index_uri}: the index is empty (0 rows): nothing to index")
    picks = np.random.default_rng(0).choice(len(index), min(sample, len(index)), replace=False)
    out = {}
    for modality in ("audio", "visual"):
        column = retrieval.gallery_column(modality)
        gallery, q = index.emb[column], index.emb[f"{modality}_emb"][picks]
        t0 = time.perf_counter()
        ivf = ivf_lists.build(gallery, nlist)
        t1 = time.perf_counter()
        exact = retrieval.exact_search(q, gallery, k)[0]
        t2 = time.perf_counter()
        approx = ivf.search(q, k, nprobe)[0]
        t3 = time.perf_counter()
        out[column] = {"nlist": ivf.nlist, "build_s": t1 - t0, "nprobe": nprobe,
                       "recall": retrieval.recall_at_k(approx, exact),
                       "speedup": (t2 - t1) / (t3 - t2),
                       "file": embedding_shards.save_ivf(index_uri, column, ivf,
                                                         embedding_shards.read_manifest(
                                                             index_uri))}
        log(f"query: IVF of {column}: {ivf.nlist} lists in {t1 - t0:.1f} s; recall@{k} "
            f"{out[column]['recall']:.4f} at nprobe {nprobe} ({len(q)} {modality} rows as "
            f"queries), {out[column]['speedup']:.1f}x exact search; saved "
            f"{out[column]['file']}", flush=True)
    return out


def render(hits: retrieval.Hits, class_names=()) -> str:
    """Each query's hits as lines of rank, clip id, score, label (and class name)."""
    lines = []
    for i, row in enumerate(hits.to_list()):
        lines.append(f"query {i}:")
        lines += [f"  {h['rank']:3d}  {h['clip_id']:24s} {h['score']:8.4f}  label {h['label']}"
                  + (f" ({class_names[h['label']]})" if h["label"] < len(class_names) else "")
                  for h in row]
    return "\n".join(lines)


def smoke_index(tmp: str) -> tuple[str, str]:
    """A random 2,000-row index under `tmp` and a file of 2 query embeddings from it:
    (index URI, query file), for `jobs.query --smoke`."""
    rng = np.random.default_rng(0)
    emb = retrieval.normalise(rng.normal(size=(2000, 8)))
    with embedding_shards.EmbeddingWriter(f"{tmp}/index", model={"model_uri": "smoke"},
                                          rows_per_shard=500) as w:
        w.write(np.array([f"clip{i}" for i in range(2000)]), np.arange(2000) % 10, emb, emb)
    np.save(f"{tmp}/q.npy", emb[:2])
    return f"{tmp}/index", f"{tmp}/q.npy"
