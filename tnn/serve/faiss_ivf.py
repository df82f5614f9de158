"""The IVF index on FAISS (`pip install -e '.[faiss]'`): the same lists as `tnn.serve.ivf`,
scanned by FAISS's `IndexIVFFlat` (inner product, compiled, multi-threaded).

`FaissIVF` has the interface of `IVFIndex` (`build`, `from_lists`, `search`, `nlist`,
`centroids`, `assignment`), so `Index.search(..., approx=True)` and `jobs.query --build-ivf`
use it unchanged, and the lists saved by either backend (centroids + each row's list, plain
arrays) load into the other. Centroids come from FAISS's spherical k-means on the same sample
and with the same sizing as the numpy build; every row goes to its nearest centroid (largest
dot product) and is added under that list with its gallery row as id. Results: (rows int64,
scores) like `exact_search`, rows -1 (score -inf) where the probed lists hold fewer than k
rows; equal scores may come in another order than the exact search's.
"""

from __future__ import annotations

import numpy as np

from tnn.errors import ConfigError
from tnn.serve.search import _matrices, check_gallery, check_k


def _faiss():
    import faiss  # the optional extra: `tnn.serve.ivf.backend()` checks it is there
    return faiss


class FaissIVF:
    """An `IndexIVFFlat` over a gallery of unit rows; build with `FaissIVF.build`."""

    def __init__(self, index, quantizer, centroids: np.ndarray, assign: np.ndarray,
                 gallery: np.ndarray) -> None:
        self.index, self._quantizer = index, quantizer  # the index uses the quantizer
        self.centroids, self._assign, self._gallery = centroids, assign, gallery

    @classmethod
    def build(cls, gallery: np.ndarray, nlist: int | None = None, *, iters: int = 10,
              train_rows: int = 100_000, seed: int = 0) -> "FaissIVF":
        """Spherical k-means (FAISS) on at most `train_rows` sampled rows, then every row to
        its nearest list; `nlist` as `tnn.serve.search.check_gallery`."""
        gallery, nlist = check_gallery(gallery, nlist)
        rng = np.random.default_rng(seed)
        n = len(gallery)
        sample = gallery[np.sort(rng.choice(n, min(n, max(train_rows, nlist)), replace=False))]
        km = _faiss().Kmeans(gallery.shape[1], nlist, niter=iters, seed=seed, spherical=True,
                             verbose=False, min_points_per_centroid=1)
        km.train(np.ascontiguousarray(sample))
        return cls.from_lists(gallery, km.centroids, None)

    @classmethod
    def from_lists(cls, gallery: np.ndarray, centroids: np.ndarray,
                   assign: np.ndarray | None) -> "FaissIVF":
        """The index of `gallery` rows in lists `assign` (N,) of `centroids` (checked by
        `tnn.serve.ivf.from_lists`); `assign` None: each row's nearest centroid."""
        faiss = _faiss()
        gallery = np.ascontiguousarray(gallery, np.float32)
        centroids = np.ascontiguousarray(centroids, np.float32)
        d = gallery.shape[1]
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(centroids)
        index = faiss.IndexIVFFlat(quantizer, d, len(centroids), faiss.METRIC_INNER_PRODUCT)
        index.is_trained = True
        if assign is None:
            assign = np.concatenate([quantizer.search(gallery[i:i + 65536], 1)[1].ravel()
                                     for i in range(0, len(gallery), 65536)])
        assign = np.ascontiguousarray(assign, np.int64)
        index.add_core(len(gallery), faiss.swig_ptr(gallery), None, faiss.swig_ptr(assign))
        return cls(index, quantizer, centroids, assign.astype(np.int32), gallery)

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    def assignment(self) -> np.ndarray:
        """The list of every gallery row (what `from_lists` takes back)."""
        return self._assign

    @property
    def rows(self) -> np.ndarray:
        """Gallery rows grouped by list, as `IVFIndex.rows` (computed when asked)."""
        return np.argsort(self._assign, kind="stable")

    @property
    def vectors(self) -> np.ndarray:
        """The gallery grouped by list, as `IVFIndex.vectors` (a copy, made when asked)."""
        return self._gallery[self.rows]

    def search(self, queries: np.ndarray, k: int, nprobe: int = 32) -> tuple[np.ndarray,
                                                                               np.ndarray]:
        """Top k among the `nprobe` nearest lists of each query: (rows int64, scores)."""
        k = min(check_k(k), int(self.index.ntotal))
        if not 1 <= nprobe:
            raise ConfigError(f"nprobe must be >= 1; got {nprobe}")
        queries, _ = _matrices(queries, self.centroids)
        params = _faiss().SearchParametersIVF(nprobe=min(nprobe, self.nlist))
        scores, rows = self.index.search(np.ascontiguousarray(queries, np.float32), k,
                                         params=params)
        missing = rows < 0
        return np.where(missing, -1, rows).astype(np.int64), np.where(missing, -np.inf, scores)
