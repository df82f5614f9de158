"""Naive reference of tnn-label's loss: class-proxy cross-entropy one sample at a time, plus
the cross-modal triplet term from `tests.reference.triplets`, all from the definitions."""

from __future__ import annotations

import torch

from tests.reference import triplets


def cross_entropy(emb, labels, proxies, scale) -> torch.Tensor:
    """mean_i -log( exp(s z_i.P_y_i / |P_y_i|) / sum_c exp(s z_i.P_c / |P_c|) ), a loop over
    rows; z_i are unit rows (the network's output), so the logits are s cos(z_i, P_c)."""
    terms = []
    for i in range(len(emb)):
        logits = [scale * (emb[i] * proxies[c]).sum() / proxies[c].norm()
                  for c in range(len(proxies))]
        terms.append(-(logits[int(labels[i])] - torch.logsumexp(torch.stack(logits), 0)))
    return sum(terms) / len(terms)


def triplet_term(audio, visual, labels, margin) -> torch.Tensor:
    """Mean of a->v and v->a cosine batch-all triplet losses, mean over positive triplets."""
    out = []
    for q, r in ((audio, visual), (visual, audio)):
        trip = triplets.batch_all(q, labels, r, labels, margin, "cosine")
        out.append(triplets.loss(q, r, trip, margin, "cosine", reduction="mean_positive"))
    return (out[0] + out[1]) / 2


def proxy_loss(audio, visual, labels, proxies, scale, w_proxy, w_triplet, margin) -> torch.Tensor:
    """w_proxy * (CE_a + CE_v) / 2 + w_triplet * T."""
    ce = (cross_entropy(audio, labels, proxies, scale)
          + cross_entropy(visual, labels, proxies, scale)) / 2
    return w_proxy * ce + w_triplet * triplet_term(audio, visual, labels, margin)
