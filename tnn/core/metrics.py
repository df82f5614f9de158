"""Retrieval metrics: AP / MAP, MRR@1, precision@k and the interpolated PR curve.

Pure numpy functions of a similarity matrix `sim` (queries x gallery, larger = more similar) or of
embeddings (cosine similarity), query labels and gallery labels. A gallery item is relevant to a
query when the labels are equal. The whole gallery is ranked, the query's own pair included
(PAPER.md, "Evaluation protocol").

Conventions, for one query with R relevant items among N, where R(>=s), N(>=s) count the
relevant / all items scoring at least s:
- AP = (1/R) sum_{relevant j} R(>=s_j) / N(>=s_j). A block of tied scores is one threshold step,
  which equals `sklearn.metrics.average_precision_score(relevant, scores)`, ties included.
- precision@k = (R(>t) + (k - N(>t)) R(=t) / N(=t)) / k, t the k-th largest score: the
  expectation under random tie-breaking. MRR@1 (the paper's term) is precision@1.
- PR curve: p(rho) = max{P_j : recall_j >= rho} over the relevant items' thresholds, at
  rho = i / (L - 1), i = 0..L-1 (11-point for L = 11), averaged over queries.
- A query with no relevant gallery item gets NaN and is left out of every mean; DataError if no
  query has one.
- A cutoff k above the gallery size G has no precision@k: it is left out of the results, and
  `retrieval_metrics` / `cross_modal_scores` name it under "ks_left_out" (a tuple), so a small
  test fold (8 clips with the default ks 1, 5, 10) is evaluated, not refused.

Scaling: query rows go in chunks sized from `memory_gib` to `n_threads` threads (numpy releases
the GIL in sort and searchsorted); each chunk is sorted once (SIMD `np.sort`) and the relevant
scores are located with `np.searchsorted`. From embeddings, no queries x gallery matrix is built.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tnn.core.metric_checks import (check_labels, check_matrix, check_options, normalised,
                                    unit_rows)
from tnn.errors import DataError

__all__ = ["DEFAULT_KS", "unit_rows", "average_precision", "mean_average_precision",
           "precision_at_k", "mrr_at_1", "pr_curve", "retrieval_metrics", "cross_modal_scores"]
DEFAULT_KS = (1, 5, 10)
_WORK_BYTES = 48  # int64/float64 work arrays per (query, relevant item) in _group_stats


def _first_of_block(a: np.ndarray) -> np.ndarray:
    """For rows sorted ascending: index of the first entry equal to a[i, j] (ties share it)."""
    starts = np.ones(a.shape, bool)
    np.not_equal(a[:, 1:], a[:, :-1], out=starts[:, 1:])
    if starts.all():  # no ties: skip the accumulate
        return np.broadcast_to(np.arange(a.shape[1]), a.shape)
    return np.maximum.accumulate(np.where(starts, np.arange(a.shape[1]), 0), axis=1)


def _counts_ge_gt(sorted_row: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(#entries >= v, #entries > v) for each v, in an ascending row."""
    n = len(sorted_row)
    return (n - np.searchsorted(sorted_row, values, "left"),
            n - np.searchsorted(sorted_row, values, "right"))


def _precision_at(ks, sims, rows, rel) -> np.ndarray:
    """(b, K) precision@k under random tie-breaking; sims rows and rel rows sorted ascending."""
    k = np.asarray(ks)
    kth = sims[rows[:, None], sims.shape[1] - k]  # (b, K) k-th largest scores
    counts = np.empty((4, *kth.shape), np.int64)
    for i, row in enumerate(rows):  # numpy has no row-wise searchsorted
        counts[:2, i] = _counts_ge_gt(sims[row], kth[i])
        counts[2:, i] = _counts_ge_gt(rel[i], kth[i])
    ge_all, gt_all, ge_rel, gt_rel = counts
    return (gt_rel + (k - gt_all) * (ge_rel - gt_rel) / (ge_all - gt_all)) / k


def _interpolated(prec: np.ndarray, n_levels: int) -> np.ndarray:
    """(b, L) interpolated precision from prec (b, R), relevant items in ascending score order.

    Recall falls along a row, so p(i/m) = max(prec[:, :e_i]), e_i = R + 1 - c_i with
    c_i = max(1, ceil(i R / m)); a tie block shares P and recall, so any member gives its value.
    Computed as a running max over the segments between the distinct ends e_i.
    """
    n_rel = prec.shape[1]
    ends = n_rel + 1 - np.maximum(1, -(-np.arange(n_levels) * n_rel // max(n_levels - 1, 1)))
    cuts = np.unique(ends)  # strictly increasing, so no reduceat segment is empty
    segment_max = np.maximum.reduceat(prec, np.r_[0, cuts[:-1]], axis=1)
    return np.maximum.accumulate(segment_max, axis=1)[:, np.searchsorted(cuts, ends)]


def _group_stats(sims, rows, rel, ks, n_levels):
    """Queries `rows` of one class: sims (B, G) rows and rel (b, R) relevant scores sorted
    ascending. Returns AP (b,), precision@k (b, K), interpolated PR (b, L)."""
    ge_rel = rel.shape[1] - _first_of_block(rel)  # R(>= s_j)
    ge_all = np.empty(rel.shape, np.int64)
    for i, row in enumerate(rows):
        ge_all[i] = np.searchsorted(sims[row], rel[i], "left")
    ge_all = np.subtract(sims.shape[1], ge_all, out=ge_all)  # N(>= s_j)
    prec = np.divide(ge_rel, ge_all, out=np.empty(rel.shape))  # R(>= s_j) / N(>= s_j)
    return prec.mean(axis=1), _precision_at(ks, sims, rows, rel), _interpolated(prec, n_levels)


def _chunk_stats(sims, q_labels, g_cols, ks, n_levels):
    """Per-query (AP, precision@k, PR) for one chunk; sims (B, G) is sorted in place."""
    b = len(q_labels)
    out = (np.full(b, np.nan), np.full((b, len(ks)), np.nan), np.full((b, n_levels), np.nan))
    classes, inverse = np.unique(q_labels, return_inverse=True)
    groups = [(np.flatnonzero(inverse == i), g_cols.get(c)) for i, c in enumerate(classes)]
    groups = [(rows, np.sort(sims[np.ix_(rows, cols)], axis=1))  # (b, R) relevant scores
              for rows, cols in groups if cols is not None]
    sims.sort(axis=1)
    for rows, rel in groups:
        for stat, value in zip(out, _group_stats(sims, rows, rel, ks, n_levels)):
            stat[rows] = value
    return out


def _chunk_rows(g_cols, n_gallery, itemsize, memory_gib, n_threads) -> int:
    """Query rows per chunk so that n_threads chunk buffers and work arrays fit memory_gib."""
    max_rel = max(len(c) for c in g_cols.values())
    per_row = n_gallery * itemsize + max_rel * (itemsize + _WORK_BYTES)
    return max(1, int(memory_gib * 2**30 // (n_threads * per_row)))


def _columns_by_label(g_labels) -> dict[int, np.ndarray]:
    """{label: gallery columns holding it}, for the labels present in g_labels."""
    order = np.argsort(g_labels, kind="stable")
    classes, starts = np.unique(g_labels[order], return_index=True)
    return dict(zip(classes.tolist(), np.split(order, starts[1:])))


def _available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _all_stats(fill, dtype, q_labels, g_labels, ks, n_levels, chunk_size, memory_gib, n_threads):
    """fill(lo, hi, out) writes similarity rows lo:hi into out (hi - lo, G).
    Returns per-query AP (Q,), precision@k (Q, K), PR (Q, L), NaN where nothing is relevant."""
    n_q, n_g, g_cols = len(q_labels), len(g_labels), _columns_by_label(g_labels)
    n_threads = n_threads or _available_cpus()
    rows = chunk_size or min(-(-n_q // n_threads),  # at least one chunk per thread
                             _chunk_rows(g_cols, n_g, np.dtype(dtype).itemsize, memory_gib, n_threads))
    starts = range(0, n_q, rows)
    results, n_workers = [None] * len(starts), min(n_threads, len(starts))

    def work(w):  # one reused buffer per worker; chunks w, w + n_workers, ...
        buf = np.empty((min(rows, n_q), n_g), dtype)
        for k in range(w, len(starts), n_workers):
            lo, hi = starts[k], min(starts[k] + rows, n_q)
            fill(lo, hi, buf[: hi - lo])
            results[k] = _chunk_stats(buf[: hi - lo], q_labels[lo:hi], g_cols, ks, n_levels)
            if not np.isfinite(buf[: hi - lo, [0, -1]]).all():  # sorted rows: NaN/inf at the ends
                raise DataError(f"sim contains NaN or inf in rows {lo}..{hi - 1}")

    with ThreadPoolExecutor(n_workers) as pool:
        list(pool.map(work, range(n_workers)))
    return tuple(np.concatenate(parts) for parts in zip(*results))


def _sim_stats(sim, q_labels, g_labels, ks=(1,), n_levels=0, chunk_size=None, memory_gib=1.0,
               n_threads=None):
    """Validated inputs -> (ks with 1 added, per-query stats of `_all_stats`)."""
    sim = check_matrix(sim, "sim")
    q = check_labels(q_labels, "q_labels", sim.shape[0], "sim (rows)")
    g = check_labels(g_labels, "g_labels", sim.shape[1], "sim (columns)")
    ks = check_options(q, g, ks, n_levels, chunk_size, memory_gib, n_threads)

    def fill(lo, hi, out):
        out[...] = sim[lo:hi]

    return ks, _all_stats(fill, sim.dtype, q, g, ks, n_levels, chunk_size, memory_gib, n_threads)


def average_precision(sim, q_labels, g_labels, *, chunk_size=None, memory_gib=1.0, n_threads=None):
    """Per-query AP, shape (Q,), from sim (Q, G); NaN for queries with no relevant item.

    chunk_size: query rows per chunk (default: from memory_gib, the working memory of all
    n_threads threads together, inputs excluded). n_threads defaults to the CPUs this process
    may use; set it explicitly in a Ray worker."""
    _, (ap, _, _) = _sim_stats(sim, q_labels, g_labels, chunk_size=chunk_size,
                               memory_gib=memory_gib, n_threads=n_threads)
    return ap


def mean_average_precision(sim, q_labels, g_labels, **opts) -> float:
    """MAP: mean of `average_precision` over queries that have a relevant item."""
    return float(np.nanmean(average_precision(sim, q_labels, g_labels, **opts)))


def precision_at_k(sim, q_labels, g_labels, ks=DEFAULT_KS, **opts) -> dict[int, float]:
    """{k: mean precision@k} over queries that have a relevant item (ties: see module doc)."""
    ks_all, (_, pk, _) = _sim_stats(sim, q_labels, g_labels, ks, **opts)
    return {k: float(v) for k, v in zip(ks_all, np.nanmean(pk, axis=0)) if k in ks}


def mrr_at_1(sim, q_labels, g_labels, **opts) -> float:
    """MRR@1 as in the paper: mean over queries of 1[top-1 relevant], i.e. precision@1 (a tied
    top block counts its fraction of relevant items)."""
    return precision_at_k(sim, q_labels, g_labels, (1,), **opts)[1]


def pr_curve(sim, q_labels, g_labels, n_levels=11, **opts) -> tuple[np.ndarray, np.ndarray]:
    """(recall levels (L,), mean interpolated precision (L,)) at recall i / (L - 1)."""
    if n_levels < 2:
        raise DataError(f"n_levels must be >= 2, got {n_levels}")
    _, (_, _, pr) = _sim_stats(sim, q_labels, g_labels, n_levels=n_levels, **opts)
    return np.arange(n_levels) / (n_levels - 1), np.nanmean(pr, axis=0)


def retrieval_metrics(query_emb, q_labels, gallery_emb, g_labels, *, ks=DEFAULT_KS, n_levels=11,
                      chunk_size=None, memory_gib=1.0, n_threads=None) -> dict:
    """Cosine-similarity retrieval of gallery_emb (G, D) by query_emb (Q, D), chunk by chunk.

    Returns floats "map", "mrr1", "p@k" for k in ks, and when n_levels > 0 the arrays
    "pr_recall", "pr_precision" (L,). Options as in `average_precision`."""
    qe, ge = normalised(query_emb, "query_emb"), normalised(gallery_emb, "gallery_emb")
    q = check_labels(q_labels, "q_labels", len(qe), "query_emb")
    g = check_labels(g_labels, "g_labels", len(ge), "gallery_emb")
    return _retrieval(qe, q, ge, g, ks, n_levels, chunk_size, memory_gib, n_threads)


def _retrieval(qe, q, ge, g, ks, n_levels, chunk_size, memory_gib, n_threads) -> dict:
    """sim rows are qe[lo:hi] @ ge.T of L2-normalised rows, in the embeddings' dtype. BLAS may
    round a float32 entry differently with the chunk size, reordering near-ties; pass float64
    embeddings when results must not depend on chunk_size."""
    if qe.shape[1] != ge.shape[1]:
        raise DataError(f"query dim {qe.shape[1]} differs from gallery dim {ge.shape[1]}")
    ks_all = check_options(q, g, ks, n_levels, chunk_size, memory_gib, n_threads)
    dtype = np.result_type(qe, ge)
    qe, g_t = qe.astype(dtype, copy=False), np.ascontiguousarray(ge.T, dtype)
    fill = lambda lo, hi, out: np.matmul(qe[lo:hi], g_t, out=out)  # noqa: E731
    stats = _all_stats(fill, dtype, q, g, ks_all, n_levels, chunk_size, memory_gib, n_threads)
    return _summary(ks_all, ks, n_levels, *stats)


def _summary(ks_all, ks, n_levels, ap, pk, pr) -> dict:
    p = dict(zip(ks_all, np.nanmean(pk, axis=0).tolist()))
    out = {"map": float(np.nanmean(ap)), "mrr1": p[1], **{f"p@{k}": p[k] for k in ks if k in p}}
    if any(k not in p for k in ks):  # above the gallery size: left out, with this note
        out["ks_left_out"] = tuple(int(k) for k in ks if k not in p)
    if n_levels:
        out.update(pr_recall=np.arange(n_levels) / (n_levels - 1), pr_precision=np.nanmean(pr, 0))
    return out


def cross_modal_scores(audio_emb, visual_emb, labels, *, ks=DEFAULT_KS, n_levels=11,
                       chunk_size=None, memory_gib=1.0, n_threads=None) -> dict:
    """Both directions of cross-modal retrieval; pair i is (audio_emb[i], visual_emb[i], labels[i]).

    a2v ranks visual items for each audio query (sim = A @ V.T); v2a ranks audio items for each
    visual query with V_chunk @ A.T, the transpose of the same cosine similarity. Keys:
    "a2v_map", "v2a_map", "mrr1_a2v", "mrr1_v2a", "a2v_p@k", "v2a_p@k" (floats), and when
    n_levels > 0 "pr_recall", "a2v_pr", "v2a_pr" (arrays). Options as in `average_precision`."""
    a, v = normalised(audio_emb, "audio_emb"), normalised(visual_emb, "visual_emb")
    if a.shape != v.shape:
        raise DataError(f"audio_emb has shape {a.shape} but visual_emb has shape {v.shape}")
    y = check_labels(labels, "labels", len(a), "audio_emb")
    opts, out = (ks, n_levels, chunk_size, memory_gib, n_threads), {}
    for name, (q_emb, g_emb) in (("a2v", (a, v)), ("v2a", (v, a))):
        res = _retrieval(q_emb, y, g_emb, y, *opts)
        rename = {"mrr1": f"mrr1_{name}", "pr_recall": "pr_recall", "pr_precision": f"{name}_pr",
                  "ks_left_out": "ks_left_out"}
        out.update({rename.get(key, f"{name}_{key}"): value for key, value in res.items()})
    return out
