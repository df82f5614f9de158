"""Naive triplet references: explicit Python loops over every (anchor, positive, negative).

Slow and obvious on purpose; tnn.core.mining and tnn.core.losses are compared against these.
Distances are computed one pair at a time from the definition, with differentiable torch ops on
rows, so gradients of `loss` can be compared with the production gradients.
Anchors index query rows; positives and negatives index ref rows.
"""

from __future__ import annotations

import torch


def distance(x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance between two 1-d rows, from the definition."""
    if kind == "sqeuclidean":
        return ((x - y) ** 2).sum()
    return 1.0 - (x * y).sum() / (x.norm() * y.norm())


def distance_table(q_emb, r_emb, kind) -> list[list[torch.Tensor]]:
    """table[a][j] = d(q_a, r_j), one pair at a time."""
    return [[distance(q_emb[a], r_emb[j], kind) for j in range(len(r_emb))]
            for a in range(len(q_emb))]


def _is_self(a, j, num_q, num_r, self_index) -> bool:
    if self_index is None:
        assert num_q == num_r, "self_index is needed when query and ref sizes differ"
        return j == a
    return j == int(self_index[a])


def valid_triplets(q_labels, r_labels, exclude_self_pair=False, self_index=None):
    """Every (a, p, n) with label[p] == label[a] != label[n]; p != a's own pair if excluded."""
    out = []
    for a in range(len(q_labels)):
        for p in range(len(r_labels)):
            for n in range(len(r_labels)):
                if int(r_labels[p]) != int(q_labels[a]) or int(r_labels[n]) == int(q_labels[a]):
                    continue
                if exclude_self_pair and _is_self(a, p, len(q_labels), len(r_labels), self_index):
                    continue
                out.append((a, p, n))
    return out


def batch_all(q_emb, q_labels, r_emb, r_labels, margin, kind, exclude_self_pair=False,
              self_index=None, only_violating=False):
    trip = valid_triplets(q_labels, r_labels, exclude_self_pair, self_index)
    if not only_violating:
        return trip
    d = distance_table(q_emb.detach(), r_emb.detach(), kind)
    return [(a, p, n) for a, p, n in trip if float(d[a][p] - d[a][n] + margin) > 0]


def semi_hard(q_emb, q_labels, r_emb, r_labels, margin, kind, exclude_self_pair=False,
              self_index=None, negatives="all"):
    """d(a,p) < d(a,n) < d(a,p) + margin; "one": per (a, p) the n with the smallest d(a,n)."""
    d = distance_table(q_emb.detach(), r_emb.detach(), kind)
    band: dict[tuple[int, int], list[int]] = {}
    for a, p, n in valid_triplets(q_labels, r_labels, exclude_self_pair, self_index):
        if float(d[a][p]) < float(d[a][n]) < float(d[a][p]) + margin:
            band.setdefault((a, p), []).append(n)
    if negatives == "all":
        return [(a, p, n) for (a, p), ns in sorted(band.items()) for n in ns]
    out = []
    for (a, p), ns in sorted(band.items()):
        best = ns[0]
        for n in ns:
            if float(d[a][n]) < float(d[a][best]):
                best = n
        out.append((a, p, best))
    return out


def batch_hard(q_emb, q_labels, r_emb, r_labels, kind, exclude_self_pair=False, self_index=None):
    """Per anchor: the farthest positive and the closest negative (first index on ties)."""
    d = distance_table(q_emb.detach(), r_emb.detach(), kind)
    out = []
    for a in range(len(q_labels)):
        best_p = best_n = None
        for j in range(len(r_labels)):
            same = int(r_labels[j]) == int(q_labels[a])
            own = exclude_self_pair and _is_self(a, j, len(q_labels), len(r_labels), self_index)
            if same and not own and (best_p is None or float(d[a][j]) > float(d[a][best_p])):
                best_p = j
            if not same and (best_n is None or float(d[a][j]) < float(d[a][best_n])):
                best_n = j
        if best_p is not None and best_n is not None:
            out.append((a, best_p, best_n))
    return out


def loss(q_emb, r_emb, triplets, margin, kind, reduction="mean"):
    """Reduced hinge max(0, d(a,p) - d(a,n) + margin) over the given triplets, with autograd."""
    d = distance_table(q_emb, r_emb, kind)
    hinges = [torch.clamp(d[a][p] - d[a][n] + margin, min=0.0) for a, p, n in triplets]
    total = sum(hinges, (q_emb.sum() + r_emb.sum()) * 0.0)
    if reduction == "sum":
        return total
    active = sum(1 for h in hinges if float(h.detach()) > 0)
    return total / max(len(hinges) if reduction == "mean" else active, 1)
