"""Naive top-k reference: every score as an explicit float64 dot product, one Python sort per
query on (-score, gallery row). Slow and obvious on purpose; tnn.serve.search is compared with
it."""

from __future__ import annotations

import numpy as np


def topk(queries, gallery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (Q, min(k, N)), scores) under the order: higher score first, then lower row."""
    rows, scores = [], []
    for q in np.asarray(queries, np.float64):
        s = [float(np.dot(q, g)) for g in np.asarray(gallery, np.float64)]
        order = sorted(range(len(s)), key=lambda j: (-s[j], j))[:k]
        rows.append(order)
        scores.append([s[j] for j in order])
    return np.array(rows, np.int64), np.array(scores)
