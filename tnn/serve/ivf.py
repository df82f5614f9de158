"""An inverted-file (IVF) index for approximate top-k search over unit embeddings.

`IVFIndex` follows Jegou et al., "Product quantization for nearest neighbor search", TPAMI
2011, without the quantisation: spherical k-means centroids (`kmeans`) split the gallery into
`nlist` lists; a query scans its `nprobe` nearest lists exactly, under the same total order as
`tnn.serve.search.exact_search` (`recall_at_k` there measures it). Pure numpy.

Backends: `build` and `from_lists` make the IVF index every caller uses (`Index.search(...,
approx=True)`, `jobs.query --build-ivf`): FAISS (`tnn.serve.faiss_ivf`) when faiss-cpu is
installed (`pip install -e '.[faiss]'`), else this numpy `IVFIndex`; `TNN_IVF_BACKEND=numpy`
or `faiss` chooses one. Both keep the same lists (centroids + each row's list), so lists saved
by one load into the other.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from tnn.errors import ConfigError, DataError
from tnn.serve.search import _matrices, check_gallery, check_k, merge_topk, topk_rows


def kmeans(x: np.ndarray, nlist: int, iters: int = 10, seed: int = 0,
           chunk_rows: int = 65536) -> np.ndarray:
    """Spherical k-means (assign by largest dot product, centroid = normalised mean): unit
    centroids (nlist, D). Empty lists are reseeded from random rows."""
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(len(x), nlist, replace=False)].astype(np.float32)
    for _ in range(iters):
        assign = assign_lists(x, cent, chunk_rows)
        sums = np.zeros_like(cent)
        np.add.at(sums, assign, x)
        empty = np.flatnonzero(np.bincount(assign, minlength=nlist) == 0)
        sums[empty] = x[rng.choice(len(x), len(empty), replace=False)]
        cent = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return cent


def assign_lists(x: np.ndarray, centroids: np.ndarray, chunk_rows: int = 65536) -> np.ndarray:
    """The nearest centroid (largest dot product) of every row, in row chunks."""
    return np.concatenate([np.argmax(x[i:i + chunk_rows] @ centroids.T, axis=1)
                           for i in range(0, len(x), chunk_rows)]) if len(x) else \
        np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class IVFIndex:
    """An inverted-file index: `vectors` grouped by list (list l = rows offsets[l]:offsets[l+1]),
    `rows` their gallery row numbers. Build with `IVFIndex.build`."""

    centroids: np.ndarray  # (nlist, D) unit
    offsets: np.ndarray  # (nlist + 1,)
    vectors: np.ndarray  # (N, D), grouped by list
    rows: np.ndarray  # (N,) gallery row of each vector

    @classmethod
    def build(cls, gallery: np.ndarray, nlist: int | None = None, *, iters: int = 10,
              train_rows: int = 100_000, seed: int = 0) -> "IVFIndex":
        """k-means on at most `train_rows` sampled rows, then every row to its nearest list.
        Default nlist: 4 sqrt(N), at most N / 8 lists (the usual IVF sizing)."""
        gallery, nlist = check_gallery(gallery, nlist)
        n = len(gallery)
        rng = np.random.default_rng(seed)
        sample = gallery[np.sort(rng.choice(n, min(n, max(train_rows, nlist)), replace=False))]
        centroids = kmeans(sample, nlist, iters, seed)
        return cls.from_lists(gallery, centroids, assign_lists(gallery, centroids))

    @classmethod
    def from_lists(cls, gallery: np.ndarray, centroids: np.ndarray,
                   assign: np.ndarray) -> "IVFIndex":
        """The index of `gallery` rows assigned to lists `assign` (N,) of `centroids`."""
        if len(assign) != len(gallery) or (len(assign) and assign.max() >= len(centroids)):
            raise DataError(f"IVF lists do not fit the gallery: {len(assign)} assignments for "
                            f"{len(gallery)} rows, {len(centroids)} lists")
        order = np.argsort(assign, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=len(centroids)))])
        return cls(np.asarray(centroids, np.float32), offsets, gallery[order],
                   order.astype(np.int64))

    def assignment(self) -> np.ndarray:
        """The list of every gallery row (what `from_lists` takes back)."""
        out = np.empty(len(self.rows), np.int32)
        out[self.rows] = np.repeat(np.arange(self.nlist), np.diff(self.offsets))
        return out

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    def search(self, queries: np.ndarray, k: int, nprobe: int = 32,
               query_chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Top k among the `nprobe` nearest lists of each query: (rows, scores) like
        `exact_search`; rows -1 (score -inf) where the probed lists hold fewer than k rows."""
        k = min(check_k(k), len(self.rows))
        if not 1 <= nprobe:
            raise ConfigError(f"nprobe must be >= 1; got {nprobe}")
        queries, _ = _matrices(queries, self.centroids)
        parts = [self._search(queries[i:i + query_chunk], k, min(nprobe, self.nlist))
                 for i in range(0, len(queries), query_chunk)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search(self, q: np.ndarray, k: int, nprobe: int):
        probe = topk_rows(q @ self.centroids.T, nprobe)[0]  # (Q, nprobe) list ids
        cand_rows = np.full((len(q), nprobe * k), len(self.rows), np.int64)  # sorts last
        cand = np.full((len(q), nprobe * k), -np.inf, np.result_type(q, self.vectors))
        flat = probe.ravel()
        order = np.argsort(flat, kind="stable")
        starts = np.flatnonzero(np.r_[True, flat[order][1:] != flat[order][:-1]])
        for seg in np.split(order, starts[1:]):  # the (query, slot) pairs probing one list
            lst = flat[seg[0]]
            a, b = self.offsets[lst], self.offsets[lst + 1]
            if a == b:
                continue
            qs, slots = seg // nprobe, seg % nprobe
            cols, vals = topk_rows(q[qs] @ self.vectors[a:b].T, k)  # (len(qs), <= k)
            where = slots[:, None] * k + np.arange(cols.shape[1])
            cand_rows[qs[:, None], where] = self.rows[a + cols]
            cand[qs[:, None], where] = vals
        rows, vals = merge_topk((cand_rows[:, :0], cand[:, :0]), (cand_rows, cand), k)
        return np.where(np.isfinite(vals), rows, -1), vals


# --- backends --------------------------------------------------------------------------------

BACKENDS = ("faiss", "numpy")


def _have_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def backend(name: str | None = None) -> str:
    """`name`, else $TNN_IVF_BACKEND, else "faiss" when faiss-cpu imports, else "numpy"."""
    name = name or os.environ.get("TNN_IVF_BACKEND") or None
    if name is None:
        return "faiss" if _have_faiss() else "numpy"
    if name not in BACKENDS:
        raise ConfigError(f"IVF backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if name == "faiss" and not _have_faiss():
        raise ConfigError("IVF backend 'faiss' is not installed: pip install -e '.[faiss]' "
                          "(or use the numpy backend)")
    return name


def build(gallery, nlist: int | None = None, *, backend_name: str | None = None, **kwargs):
    """An IVF index of `gallery` on the chosen backend (`backend`)."""
    if backend(backend_name) == "faiss":
        from tnn.serve.faiss_ivf import FaissIVF
        return FaissIVF.build(gallery, nlist, **kwargs)
    return IVFIndex.build(gallery, nlist, **kwargs)


def from_lists(gallery, centroids, assign, *, backend_name: str | None = None, where: str = ""):
    """Saved lists (`centroids` (L, D), `assign` (N,) ints in 0..L-1) on the chosen backend,
    checked first: `DataError` naming `where` when they do not fit the gallery."""
    gallery, centroids, assign = np.asarray(gallery), np.asarray(centroids), np.asarray(assign)
    ok = (centroids.ndim == 2 and centroids.dtype.kind == "f" and assign.ndim == 1 and
          assign.dtype.kind in "iu" and len(assign) == len(gallery) and len(centroids) >= 1 and
          centroids.shape[1] == gallery.shape[1] and np.isfinite(centroids).all() and
          (len(assign) == 0 or (assign.min() >= 0 and assign.max() < len(centroids))))
    if not ok:
        raise DataError(f"{where}: IVF lists do not fit the gallery: centroids "
                        f"{centroids.shape} {centroids.dtype}, assignments {assign.shape} "
                        f"{assign.dtype} for {gallery.shape} rows")
    if backend(backend_name) == "faiss":
        from tnn.serve.faiss_ivf import FaissIVF
        return FaissIVF.from_lists(gallery, centroids, assign)
    return IVFIndex.from_lists(gallery, centroids, assign)
