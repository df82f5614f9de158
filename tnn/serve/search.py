"""Top-k cross-modal search: exact (chunked matrix products), query checks, results.

Scores are dot products, i.e. cosine similarities on the unit rows `jobs.embed` writes. The
order is total: higher score first, equal scores by gallery row (lower first), so results are
deterministic whatever the chunking. Exact search never builds the queries x gallery matrix:
each block `q @ G[a:b].T` (at most `chunk_elems` floats) gives its top k by `argpartition`;
block results merge into a running top k (each block's top k under the total order holds every
global winner from that block, so the merge is exact). Rows tied at the k-th score are
resolved by gallery order. The same accumulator searches an index shard by shard
(`tnn.serve.index.search_stream`): memory bounded by one block.

The approximate search is `tnn.serve.ivf.IVFIndex` (`recall_at_k` measures it against exact
search); an index in memory that searches either way is `tnn.serve.index.Index`. Pure numpy;
no Ray, MLflow or pyarrow here.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tnn.errors import ConfigError, DataError
from tnn.core.metrics import unit_rows

CHUNK_ELEMS = 1 << 24  # floats per score block (64 MB in float32)
QUERY_CHUNK = 1024
MODALITIES = {"audio": "visual", "visual": "audio"}  # query modality -> gallery column searched


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be an integer >= 1; got {k!r}")
    return int(k)


def topk_rows(scores: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `scores` (Q, n): the top min(k, n) columns under the total order, sorted;
    returns (columns + offset as int64 (Q, k'), their scores)."""
    nq, n = scores.shape
    k = min(k, n)
    if k < n:
        cols = np.argpartition(scores, n - k, axis=1)[:, n - k:]  # the k largest, unordered
        kth = np.take_along_axis(scores, cols, 1).min(axis=1, keepdims=True)
        tied = np.flatnonzero((scores >= kth).sum(axis=1) > k)  # ties straddle the cut
        if len(tied):
            cols[tied] = _first_k(scores[tied], kth[tied], k)
    else:
        cols = np.broadcast_to(np.arange(n), (nq, n))
    vals = np.take_along_axis(scores, cols, 1)
    order = np.lexsort((cols, -vals), axis=1)
    return (np.take_along_axis(cols, order, 1).astype(np.int64) + offset,
            np.take_along_axis(vals, order, 1))


def _first_k(scores, kth, k) -> np.ndarray:
    """Columns above the k-th score, then the lowest-numbered ones equal to it: k per row."""
    above, equal = scores > kth, scores == kth
    need = k - above.sum(axis=1, keepdims=True)
    keep = above | (equal & (np.cumsum(equal, axis=1) <= need))
    return np.nonzero(keep)[1].reshape(len(scores), k)


def merge_topk(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of two (rows, scores) candidate sets of the same queries, under the order."""
    rows, vals = np.concatenate([a[0], b[0]], 1), np.concatenate([a[1], b[1]], 1)
    order = np.lexsort((rows, -vals), axis=1)[:, :k]
    return np.take_along_axis(rows, order, 1), np.take_along_axis(vals, order, 1)


class TopK:
    """A running top k of Q queries over gallery blocks fed in any order: `add(scores, row0)`
    with the block's scores (Q, n) and its first gallery row."""

    def __init__(self, nq: int, k: int, dtype=np.float32) -> None:
        self.k = check_k(k)
        self.best = (np.zeros((nq, 0), np.int64), np.zeros((nq, 0), dtype))

    def add(self, scores: np.ndarray, row0: int) -> None:
        self.best = merge_topk(self.best, topk_rows(scores, self.k, row0), self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.best


def exact_search(queries: np.ndarray, gallery: np.ndarray, k: int, *,
                 chunk_elems: int = CHUNK_ELEMS, query_chunk: int = QUERY_CHUNK,
                 gallery_chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k of `queries` (Q, D) against `gallery` (N, D): (rows int64 (Q, min(k, N)),
    scores (Q, min(k, N))). Blocks of `query_chunk` x `gallery_chunk` scores (default: as
    many gallery rows as fit `chunk_elems`)."""
    k = check_k(k)
    queries, gallery = _matrices(queries, gallery)
    gallery_chunk = gallery_chunk or max(k, chunk_elems // max(1, min(query_chunk, len(queries))))
    parts = []
    for q0 in range(0, len(queries), query_chunk):
        q = queries[q0:q0 + query_chunk]
        acc = TopK(len(q), k, np.result_type(q, gallery))
        for g0 in range(0, len(gallery), gallery_chunk):
            acc.add(q @ gallery[g0:g0 + gallery_chunk].T, g0)  # (q, g) block
        parts.append(acc.result())
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def check_gallery(gallery, nlist: int | None) -> tuple[np.ndarray, int]:
    """(gallery as float32, nlist): default 4 sqrt(N), at most N / 8 lists (the usual IVF
    sizing); an empty gallery or an nlist outside 1..N refused."""
    gallery = np.asarray(gallery, np.float32)
    n = len(gallery)
    if n == 0:
        raise DataError("the gallery is empty (0 rows): nothing to index")
    nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 8))
    if not 1 <= nlist <= n:
        raise ConfigError(f"nlist must be in 1..{n} (the gallery rows); got {nlist}")
    return gallery, nlist


def _matrices(queries, gallery) -> tuple[np.ndarray, np.ndarray]:
    queries, gallery = np.asarray(queries), np.asarray(gallery)
    if queries.ndim != 2 or gallery.ndim != 2:
        raise DataError(f"queries and gallery must be 2-D; got shapes {queries.shape} and "
                        f"{gallery.shape}")
    if len(gallery) == 0:
        raise DataError("the gallery is empty (0 rows): nothing to search")
    if queries.shape[1] != gallery.shape[1]:
        raise DataError(f"queries have width {queries.shape[1]}, the gallery {gallery.shape[1]}")
    return queries, gallery


def normalise(x: np.ndarray, what: str = "queries") -> np.ndarray:
    """Finite rows scaled to unit length (float32); `DataError` naming the first bad row."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise DataError(f"{what} must be a 2-D array (N, D); got shape {x.shape}")
    return unit_rows(x, what)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean over queries of |approx top k & exact top k| / k (k = exact_rows' width)."""
    hits = (approx_rows[:, :, None] == exact_rows[:, None, :]).any(axis=2).sum(axis=1)
    return float(np.mean(hits / exact_rows.shape[1]))


# --- the query API: model checks, results ----------------------------------------------------

def gallery_column(modality: str) -> str:
    """Audio queries search the visual embeddings and vice versa."""
    if modality not in MODALITIES:
        raise ConfigError(f"query modality must be 'audio' or 'visual'; got {modality!r}")
    return f"{MODALITIES[modality]}_emb"


def describe_model(model: dict) -> str:
    """`tnn@champion (audio v3, visual v3, run 1a2b3c4d)` or `runs:/ID (run ID)`."""
    head = f"{model.get('name')}@{model.get('alias')}" if model.get("name") else \
        model.get("model_uri") or "an unknown model"
    versions = model.get("versions") or {}
    parts = [f"{m} v{versions[m]}" for m in ("audio", "visual") if versions.get(m)]
    parts.append(f"run {model.get('run_id')}")
    return f"{head} ({', '.join(parts)})"


def check_model(built_by: dict, query_model: dict | None, where: str) -> None:
    """Refuse a query encoder other than the one that built the index: a different run, or
    other versions of the same registered model. None: the caller embedded the queries."""
    if query_model is None:
        return
    vb, vq = built_by.get("versions"), query_model.get("versions")
    same_name = built_by.get("name") and built_by.get("name") == query_model.get("name")
    if built_by.get("run_id") != query_model.get("run_id") or (same_name and vb and vq and
                                                               vb != vq):
        raise DataError(
            f"{where}: the index was built by {describe_model(built_by)} but the query encoder "
            f"is {describe_model(query_model)}: embeddings of different model versions are "
            "not comparable; rebuild the index with this model (python -m jobs.embed) or "
            f"query with the model that built it (--model runs:/{built_by.get('run_id')})")


def check_query(queries, rows: int, width: int, column: str, built_by: dict,
                query_model: dict | None, where: str) -> np.ndarray:
    """The checks before any search (empty index, model, width); unit float32 queries."""
    if rows == 0:
        raise DataError(f"{where}: the index is empty (0 rows): nothing to search")
    check_model(built_by, query_model, where)
    queries = np.asarray(queries, np.float32)
    queries = queries[None] if queries.ndim == 1 else queries
    if queries.ndim != 2 or queries.shape[1] != width:
        raise DataError(f"{where}: query embeddings have shape {queries.shape}, but the index "
                        f"column {column!r} has width {width}")
    return normalise(queries, "query embeddings")


@dataclasses.dataclass(frozen=True)
class Hits:
    """Top-k results of Q queries: gallery rows, scores, clip ids and labels, each (Q, k)."""

    rows: np.ndarray
    scores: np.ndarray
    clip_ids: np.ndarray
    labels: np.ndarray

    def to_list(self) -> list[list[dict]]:
        """Per query, its hits as {rank, clip_id, score, label} (missing approximate hits,
        row -1, left out)."""
        return [[{"rank": j + 1, "clip_id": str(c), "score": float(s), "label": int(lab)}
                 for j, (r, c, s, lab) in enumerate(zip(rs, cs, ss, ls)) if r >= 0]
                for rs, cs, ss, ls in zip(self.rows, self.clip_ids, self.scores, self.labels)]
