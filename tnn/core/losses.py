"""Cross-modal triplet losses: pure functions of ``(query_emb, query_labels, ref_emb, ref_labels)``.

Hinge (Zeng et al., TOMM 2020; Schroff et al., FaceNet, 2015), d from `tnn.core.distances`:
    l(a, p, n) = max(0, d(q_a, r_p) - d(q_a, r_n) + margin)
Anchors a are query rows (e.g. audio, (Q, D)); positives p and negatives n are ref rows (e.g.
visual, (R, D)). Positive: ``r_labels[p] == q_labels[a]``; negative: ``r_labels[n] != q_labels[a]``.
The clip's own pair (audio i, visual i) IS a valid positive; it is dropped only with
``exclude_self_pair=True`` (the authors' batch-all rule), where ``self_index[a]`` is the ref row of
query a's pair (default ``arange`` when Q == R, i.e. the same batch in the same order).

Distributed use: pass the LOCAL queries and the GLOBAL refs gathered by `tnn.train.distributed`; these
functions never ask for rank or world size. With an equal-size all-gather, local row i pairs with
global row ``rank * local_batch + i``: pass that as ``self_index``. A mean over the global batch
needs the global count as its normaliser: ``reduce_counts`` maps the local counts to it (e.g. a
sum over workers), and the loss is then this worker's share of the global mean.

Empty batches (one class, or only singleton classes with self pairs excluded) give a loss of 0
that is still connected to the embeddings (zero gradient, never NaN) and ``num_triplets == 0``.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from tnn.core.distances import check_kind, pairwise_distance
from tnn.errors import ConfigError, DataError
from tnn.core.mining import check_directions, mine_from_distances, pair_masks

REDUCTIONS = ("mean", "mean_positive", "sum")
MINERS = ("batch_all", "semi_hard", "batch_hard")
_MAX_ELEMENTS = 1 << 22  # fused batch-all: (anchors, R) elements per chunk
CountReducer = Callable[[torch.Tensor], torch.Tensor]  # (2,) local counts -> (2,) normaliser counts


class TripletLossOutput(NamedTuple):
    """The reduced loss (with gradient) and detached 0-d counts for logging."""
    loss: torch.Tensor
    num_triplets: torch.Tensor  # int64: triplets considered
    num_active: torch.Tensor  # int64: triplets with a strictly positive hinge
    frac_active: torch.Tensor  # num_active / max(num_triplets, 1)


def triplet_loss(q_emb: torch.Tensor, q_labels: torch.Tensor, r_emb: torch.Tensor,
                 r_labels: torch.Tensor, margin: float = 0.5, *, distance: str = "sqeuclidean",
                 miner: str = "batch_all", exclude_self_pair: bool = False,
                 self_index: torch.Tensor | None = None, reduction: str = "mean",
                 triplets: tuple[torch.Tensor, ...] | None = None, negatives: str = "all",
                 chunk_size: int | None = None,
                 reduce_counts: CountReducer | None = None) -> TripletLossOutput:
    """Triplet hinge over mined triplets, reduced by ``reduction``.

    q_emb (Q, D), q_labels (Q,), r_emb (R, D), r_labels (R,); ``distance``: "sqeuclidean"
    (paper, margin 0.5) or "cosine". ``miner="batch_all"`` takes the fused path
    (`batch_all_triplet_loss`, no index list); "semi_hard" (``negatives`` "all" or "one") and
    "batch_hard" mine indices from the detached (Q, R) distances (`tnn.core.mining`), then the hinge is
    taken on the differentiable ones. ``triplets=(a_idx, p_idx, n_idx)`` skips mining.
    Reductions: "mean" over triplets, "mean_positive" over triplets with a positive hinge, "sum".
    ``reduce_counts`` maps the local (2,) int64 counts (num_triplets, num_active) to the counts
    that normalise the loss and are returned (default: the local ones); with a sum over workers
    the loss is this worker's share of the mean over all workers' anchors.
    """
    _check(q_emb, q_labels, r_emb, r_labels, distance, reduction)
    if triplets is None and miner == "batch_all":
        return batch_all_triplet_loss(q_emb, q_labels, r_emb, r_labels, margin, distance=distance,
                                      exclude_self_pair=exclude_self_pair, self_index=self_index,
                                      reduction=reduction, chunk_size=chunk_size,
                                      reduce_counts=reduce_counts)
    if miner not in MINERS:
        raise ConfigError(f"unknown miner {miner!r}; expected one of {MINERS}")
    dist = pairwise_distance(q_emb, r_emb, distance)  # (Q, R)
    if triplets is None:
        pos, neg = pair_masks(q_labels, r_labels, exclude_self_pair, self_index)
        triplets = mine_from_distances(miner, dist, pos, neg, margin, negatives=negatives,
                                       chunk_size=chunk_size)
    a, p, n = triplets
    hinge = (dist[a, p] - dist[a, n] + margin).clamp_min(0.0)  # (T,)
    num_active = (hinge > 0).sum()
    return _reduce(hinge.sum(), torch.tensor(len(a), device=dist.device), num_active, reduction,
                   reduce_counts)


def batch_all_triplet_loss(q_emb: torch.Tensor, q_labels: torch.Tensor, r_emb: torch.Tensor,
                           r_labels: torch.Tensor, margin: float = 0.5, *,
                           distance: str = "sqeuclidean", exclude_self_pair: bool = False,
                           self_index: torch.Tensor | None = None, reduction: str = "mean",
                           chunk_size: int | None = None,
                           reduce_counts: CountReducer | None = None) -> TripletLossOutput:
    """Batch-all triplet loss without the O(Q R^2) triplet list or a (Q, R, R) tensor.

    For anchor a, positive p and t = d(a, p) + margin, with a's negative distances sorted
    ascending (s_1 <= s_2 <= ...) and k = #{n : s_n < t}:
        sum_n max(0, t - s_n) = k t - (s_1 + ... + s_k).
    Anchors are grouped by label (all anchors of a class share their positive and negative ref
    rows), so each anchor costs one sort of its negatives, a cumulative sum and one binary search
    per positive: O(R log R) time, O(R) memory; ``chunk_size`` anchors are processed at a time.
    Gradients are exact except on ties s_n == t, where the hinge has a kink anyway. Float32
    round-off grows with k (the two sums are of order k t). ``reduce_counts`` as in `triplet_loss`.
    """
    _check(q_emb, q_labels, r_emb, r_labels, distance, reduction)
    pos, neg = pair_masks(q_labels, r_labels, exclude_self_pair, self_index)  # (Q, R) each
    step = chunk_size or max(1, _MAX_ELEMENTS // max(1, r_emb.shape[0]))
    total = 0.0 * (q_emb.sum() + r_emb.sum())  # keeps a gradient path when nothing is mined
    num_active = torch.zeros((), dtype=torch.long, device=q_emb.device)
    for label in torch.unique(q_labels):
        rows = (q_labels == label).nonzero().squeeze(1)  # (n_c,) anchors of this class
        is_pos = r_labels == label  # (R,)
        r_pos, r_neg = r_emb[is_pos], r_emb[~is_pos]  # (P, D), (N, D)
        for idx in rows.split(step):
            loss_sum, active = _batch_all_rows(q_emb[idx], r_pos, r_neg, pos[idx][:, is_pos],
                                               margin, distance)
            total, num_active = total + loss_sum, num_active + active
    num_triplets = (pos.sum(dim=1) * neg.sum(dim=1)).sum()
    return _reduce(total, num_triplets, num_active, reduction, reduce_counts)


def _batch_all_rows(q, r_pos, r_neg, keep, margin, distance):
    neg_sorted = pairwise_distance(q, r_neg, distance).sort(dim=1).values  # (c, N) ascending
    prefix = F.pad(neg_sorted.cumsum(dim=1), (1, 0))  # (c, N+1): sums of the j smallest
    thresh = pairwise_distance(q, r_pos, distance) + margin  # (c, P): d(a, p) + margin
    k = torch.searchsorted(neg_sorted.detach(), thresh.detach())  # (c, P): #{n: d_an < d_ap + m}
    per_pair = k.to(thresh.dtype) * thresh - prefix.gather(1, k)  # (c, P): sum_n hinge(a, p, n)
    zero = torch.zeros((), dtype=thresh.dtype, device=thresh.device)
    return torch.where(keep, per_pair, zero).sum(), torch.where(keep, k, 0).sum()


def _reduce(total, num_triplets, num_active, reduction, reduce_counts=None) -> TripletLossOutput:
    if reduce_counts is not None:
        num_triplets, num_active = reduce_counts(torch.stack([num_triplets, num_active])).unbind()
    denom = {"mean": num_triplets, "mean_positive": num_active, "sum": None}[reduction]
    loss = total if denom is None else total / denom.clamp_min(1).to(total.dtype)
    frac = num_active.double() / num_triplets.clamp_min(1).double()
    return TripletLossOutput(loss, num_triplets.detach(), num_active.detach(), frac.float())


def _check(q_emb, q_labels, r_emb, r_labels, distance, reduction) -> None:
    check_kind(distance)
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if q_emb.ndim != 2 or r_emb.ndim != 2 or q_emb.shape[1] != r_emb.shape[1]:
        raise DataError(f"expected q_emb (Q, D) and r_emb (R, D), got {tuple(q_emb.shape)} "
                        f"and {tuple(r_emb.shape)}")
    if q_labels.shape != (q_emb.shape[0],) or r_labels.shape != (r_emb.shape[0],):
        raise DataError(f"labels must be (Q,) and (R,) with Q = {q_emb.shape[0]}, R = "
                        f"{r_emb.shape[0]}; got {tuple(q_labels.shape)}, {tuple(r_labels.shape)}")


def combined_loss(audio_emb: torch.Tensor, visual_emb: torch.Tensor, labels: torch.Tensor, *,
                  ref_audio_emb: torch.Tensor | None = None,
                  ref_visual_emb: torch.Tensor | None = None,
                  ref_labels: torch.Tensor | None = None, self_index: torch.Tensor | None = None,
                  directions: Sequence[str] = ("a2v",), w_triplet: float = 1.0,
                  w_cca: float = 0.0, cca: Callable[..., torch.Tensor] | None = None,
                  cca_kwargs: Mapping | None = None, **triplet_kwargs) -> dict[str, torch.Tensor]:
    """Weighted sum of the triplet term and the cluster-CCA term, returned as a dict of named terms.

    audio_emb, visual_emb (B, D) and labels (B,) are the local paired batch (the model's forward
    output plus labels); ``ref_*`` (N, D), (N,) are the refs (the gathered global batch; default
    the local one). ``"triplet"`` is the mean of `triplet_loss` over ``directions`` ("a2v": audio
    anchors vs visual refs; "v2a": the reverse), with ``triplet_kwargs`` passed through.
    ``"cca"`` is ``cca(ref_audio, ref_labels, ref_visual, ref_labels, **cca_kwargs)`` (default
    `tnn.core.cca_loss.cluster_cca_loss`, imported only when used): a batch statistic, so it is taken
    on the refs (with an autograd all-gather every rank computes the same value and DDP's
    averaging yields the global-batch gradient). It is computed only when ``w_cca != 0``
    (else 0). Also returned, detached:
    ``triplet_<dir>``, ``num_triplets_<dir>``, ``num_active_<dir>``, ``frac_active_<dir>``.
    """
    check_directions(directions)
    ref_audio = audio_emb if ref_audio_emb is None else ref_audio_emb
    ref_visual = visual_emb if ref_visual_emb is None else ref_visual_emb
    ref_labels = labels if ref_labels is None else ref_labels
    sides = {"a2v": (audio_emb, ref_visual), "v2a": (visual_emb, ref_audio)}
    out: dict[str, torch.Tensor] = {}
    for d in directions:
        q, r = sides[d]
        res = triplet_loss(q, labels, r, ref_labels, self_index=self_index, **triplet_kwargs)
        out[f"triplet_{d}"] = res.loss
        out.update({f"{name}_{d}": getattr(res, name)
                    for name in ("num_triplets", "num_active", "frac_active")})
    triplet = torch.stack([out[f"triplet_{d}"] for d in directions]).mean()
    cca_term = triplet.new_zeros(())
    if w_cca != 0:
        cca_fn = cca if cca is not None else _default_cca()
        cca_term = cca_fn(ref_audio, ref_labels, ref_visual, ref_labels, **(cca_kwargs or {}))
    total = w_triplet * triplet + w_cca * cca_term
    out.update({f"triplet_{d}": out[f"triplet_{d}"].detach() for d in directions})
    return {"total": total, "triplet": triplet, "cca": cca_term, **out}


def _default_cca() -> Callable[..., torch.Tensor]:
    try:
        from tnn.core.cca_loss import cluster_cca_loss
    except ImportError as err:
        raise ConfigError("w_cca != 0 needs tnn.core.cca_loss.cluster_cca_loss or a `cca` "
                          "callable") from err
    return cluster_cca_loss


# --- tnn-label: class proxies shared by both branches ----------------------------------------

def proxy_logits(emb: torch.Tensor, proxies: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, k) unit rows x (C, k) proxies -> (B, C) logits s * cos(z, P_c) (P row-normalised)."""
    return scale * emb @ F.normalize(proxies, dim=1).T


def proxy_cross_entropy(audio_emb: torch.Tensor, audio_labels: torch.Tensor,
                        visual_emb: torch.Tensor, visual_labels: torch.Tensor, *,
                        proxies: torch.Tensor, scale: float) -> torch.Tensor:
    """1/2 [CE(s z_a P^T, y_a) + CE(s z_v P^T, y_v)], each a mean over its rows. It has the
    signature of `combined_loss`'s ``cca`` term, so it is taken on the refs (the global batch)."""
    ce_a = F.cross_entropy(proxy_logits(audio_emb, proxies, scale), audio_labels)
    ce_v = F.cross_entropy(proxy_logits(visual_emb, proxies, scale), visual_labels)
    return 0.5 * (ce_a + ce_v)


def proxy_loss_kwargs(proxies: torch.Tensor, scale: float, *, w_proxy: float = 1.0,
                      w_triplet: float = 1.0, margin: float = 0.2) -> dict:
    """The `combined_loss` keywords of the tnn-label loss: both directions of the cosine
    batch-all triplet loss (mean over positive triplets) plus ``w_proxy`` times
    `proxy_cross_entropy` in the slot of the batch-level term (`tnn.train.distributed`'s
    `global_batch_loss` takes the same keywords)."""
    return dict(directions=("a2v", "v2a"), w_triplet=w_triplet, w_cca=w_proxy,
                cca=proxy_cross_entropy, cca_kwargs={"proxies": proxies, "scale": scale},
                margin=margin, distance="cosine", miner="batch_all", reduction="mean_positive")


def proxy_loss(audio_emb: torch.Tensor, visual_emb: torch.Tensor, labels: torch.Tensor,
               proxies: torch.Tensor, scale: float, *, w_proxy: float = 1.0,
               w_triplet: float = 1.0, margin: float = 0.2,
               **refs) -> dict[str, torch.Tensor]:
    """The tnn-label loss of a batch of pairs (z_a, z_v unit rows (B, k), labels (B,)) with
    class proxies P (C, k) at inverse temperature s = ``scale``:

        L = w_proxy * 1/2 [CE(s z_a P^T, y) + CE(s z_v P^T, y)] + w_triplet * T(z_a, z_v, y)

    T the mean of both directions' cosine batch-all triplet losses (``margin``, mean over
    positive triplets). ``refs``: `combined_loss`'s ref_audio_emb, ref_visual_emb, ref_labels
    and self_index (local anchors against gathered refs; the CE is taken on the refs).
    Returns `combined_loss`'s terms, plus ``"proxy"`` (= ``"cca"``, the CE term)."""
    out = combined_loss(audio_emb, visual_emb, labels, **refs,
                        **proxy_loss_kwargs(proxies, scale, w_proxy=w_proxy,
                                            w_triplet=w_triplet, margin=margin))
    return {**out, "proxy": out["cca"]}
