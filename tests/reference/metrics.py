"""Naive retrieval-metric references: explicit Python loops over each query's sorted ranking.

Slow and obvious on purpose; tnn.core.metrics is compared against these. Each query's gallery is
walked best score first, one block of tied scores at a time (a block is one threshold step).
Per-query functions return NaN for a query with no relevant gallery item.
"""

from __future__ import annotations

import math
from fractions import Fraction


def tie_blocks(scores, relevant) -> list[tuple[int, int]]:
    """[(items in block, relevant items in block)] for blocks of equal score, best block first."""
    order = sorted(range(len(scores)), key=lambda j: -float(scores[j]))
    blocks, last = [], None
    for j in order:
        if blocks and float(scores[j]) == last:
            n, r = blocks[-1]
            blocks[-1] = (n + 1, r + int(relevant[j]))
        else:
            blocks.append((1, int(relevant[j])))
        last = float(scores[j])
    return blocks


def _relevance(q_label, g_labels) -> list[bool]:
    return [int(g) == int(q_label) for g in g_labels]


def query_average_precision(scores, relevant) -> float:
    """(1/R) sum over relevant items of (relevant ranked at or above)/(all ranked at or above)."""
    total_rel, seen, hits, ap = sum(relevant), 0, 0, 0.0
    if total_rel == 0:
        return math.nan
    for n, r in tie_blocks(scores, relevant):
        seen, hits = seen + n, hits + r
        ap += r * hits / seen
    return ap / total_rel


def query_precision_at_k(scores, relevant, k) -> float:
    """Expected relevant items in the top k over random orders of tied items, divided by k."""
    if sum(relevant) == 0:
        return math.nan
    taken, hits = 0, 0.0
    for n, r in tie_blocks(scores, relevant):
        if taken + n >= k:
            return (hits + (k - taken) * r / n) / k
        taken, hits = taken + n, hits + r
    raise AssertionError("k is larger than the gallery")


def query_pr_curve(scores, relevant, n_levels) -> list[float]:
    """Interpolated precision max{P : recall >= i/(L-1)}, over thresholds adding a relevant item."""
    total_rel = sum(relevant)
    if total_rel == 0:
        return [math.nan] * n_levels
    points, seen, hits = [], 0, 0
    for n, r in tie_blocks(scores, relevant):
        seen, hits = seen + n, hits + r
        if r:
            points.append((Fraction(hits, total_rel), hits / seen))
    levels = [Fraction(i, n_levels - 1) for i in range(n_levels)]
    return [max(p for recall, p in points if recall >= level) for level in levels]


def average_precision(sim, q_labels, g_labels) -> list[float]:
    return [query_average_precision(row, _relevance(q, g_labels)) for row, q in zip(sim, q_labels)]


def precision_at_k(sim, q_labels, g_labels, k) -> list[float]:
    return [query_precision_at_k(row, _relevance(q, g_labels), k) for row, q in zip(sim, q_labels)]


def pr_curve(sim, q_labels, g_labels, n_levels=11) -> list[list[float]]:
    return [query_pr_curve(row, _relevance(q, g_labels), n_levels) for row, q in zip(sim, q_labels)]


def nan_mean(values) -> float:
    """Mean over the entries that are not NaN (queries that have a relevant item)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept)
