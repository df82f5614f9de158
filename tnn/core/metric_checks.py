"""Input checks of `tnn.core.metrics`: label vectors, score matrices, embeddings, options.

Each raises `DataError` naming the array and the first bad row or value. A cutoff k above the
gallery size is not an error: `check_options` leaves it out of the ks it returns.
"""

from __future__ import annotations

import numpy as np

from tnn.errors import DataError


def check_labels(labels, name: str, n: int, against: str) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{name} must be a 1-D integer array, got dtype {a.dtype}, shape {a.shape}")
    if len(a) != n:
        raise DataError(f"{name} has {len(a)} entries but {against} has {n}")
    return a


def check_matrix(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or 0 in a.shape:
        raise DataError(f"{name} must be a non-empty 2-D array, got shape {a.shape}")
    if a.dtype.kind not in "iuf":
        raise DataError(f"{name} must be real-valued, got dtype {a.dtype}")
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def normalised(emb, name: str) -> np.ndarray:
    """Rows scaled to unit L2 norm, so that dot products are cosine similarities."""
    return unit_rows(check_matrix(emb, name), name)


def unit_rows(a: np.ndarray, name: str) -> np.ndarray:
    """Finite, non-zero rows of a 2-D array scaled to unit length; `DataError` naming the
    first bad row otherwise."""
    bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
    if len(bad):
        raise DataError(f"{name}: row {bad[0]} has NaN or inf values")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if (norms == 0).any():
        raise DataError(f"{name}: row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros")
    return a / norms


def check_options(q_labels, g_labels, ks, n_levels, chunk_size, memory_gib, n_threads):
    """Validates the options; returns the ks up to the gallery size, sorted, with 1 added
    (MRR@1 is always computed); a larger k is left out (the caller notes it)."""
    if not np.isin(q_labels, g_labels).any():
        raise DataError("no query has a relevant gallery item (no q_labels value is in g_labels)")
    if any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise DataError(f"ks must be integers >= 1, got {tuple(ks)}")
    if n_levels == 1 or n_levels < 0:
        raise DataError(f"n_levels must be 0 (no PR curve) or >= 2, got {n_levels}")
    for name, value in (("chunk_size", chunk_size), ("n_threads", n_threads)):
        if value is not None and value < 1:
            raise DataError(f"{name} must be a positive integer or None, got {value}")
    if not memory_gib > 0:
        raise DataError(f"memory_gib must be positive, got {memory_gib}")
    return tuple(sorted({1, *(int(k) for k in ks if k <= len(g_labels))}))
