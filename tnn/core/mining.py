"""Cross-modal triplet mining: index triplets ``(a_idx, p_idx, n_idx)``, computed without gradients.

Anchors are query rows (e.g. audio); positives and negatives are ref rows (e.g. visual). A
triplet is valid when ``r_labels[p] == q_labels[a] != r_labels[n]``. The clip's own pair (audio i,
visual i) is a valid positive; it is dropped only with ``exclude_self_pair=True`` (the authors'
choice), where ``self_index[a]`` is the ref row paired with query a: default ``arange`` when Q == R
(the same batch in the same order), required otherwise (local queries vs gathered global refs).
Distances come from `tnn.core.distances` (smaller = closer).

Every miner has the signature ``miner(q_labels, r_labels, exclude_self_pair, q_emb, r_emb, margin,
*, self_index, distance, ...)`` and returns three int64 (T,) tensors (T may be 0), ordered
lexicographically in (a, p, n). ``chunk_size`` anchors are processed at a time to bound memory.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from tnn.core.distances import pairwise_distance
from tnn.errors import ConfigError, DataError

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
DIRECTIONS = ("a2v", "v2a")
_MAX_ELEMENTS = 1 << 24  # (anchors, R, R) mask elements per chunk


def pair_masks(q_labels: torch.Tensor, r_labels: torch.Tensor, exclude_self_pair: bool = False,
               self_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (Q, R) masks of the positive and the negative ref rows of each query row."""
    if q_labels.ndim != 1 or r_labels.ndim != 1:
        raise DataError(f"labels must be 1-d, got {tuple(q_labels.shape)}, {tuple(r_labels.shape)}")
    same = q_labels.unsqueeze(1) == r_labels.unsqueeze(0)  # (Q, R)
    pos = same.clone()  # (Q, R)
    if exclude_self_pair:
        own = resolve_self_index(len(q_labels), len(r_labels), self_index, q_labels.device)
        pos[torch.arange(len(q_labels), device=pos.device), own] = False
    return pos, ~same


def resolve_self_index(num_q: int, num_r: int, self_index: torch.Tensor | None,
                       device: torch.device | None = None) -> torch.Tensor:
    """Ref row of each query's own pair, (Q,) int64; ``arange(Q)`` when Q == R and none is given."""
    if self_index is None:
        if num_q != num_r:
            raise ConfigError(f"exclude_self_pair with {num_q} queries and {num_r} refs needs "
                              "self_index (the ref row of each query's own pair)")
        return torch.arange(num_q, device=device)
    self_index = torch.as_tensor(self_index, device=device).long()
    if self_index.shape != (num_q,):
        raise DataError(f"self_index must have shape ({num_q},), got {tuple(self_index.shape)}")
    if num_q and (self_index.min() < 0 or self_index.max() >= num_r):
        raise DataError(f"self_index values must lie in [0, {num_r}), got "
                        f"[{int(self_index.min())}, {int(self_index.max())}]")
    return self_index


@torch.no_grad()
def mine_from_distances(miner: str, dist: torch.Tensor | None, pos: torch.Tensor,
                        neg: torch.Tensor, margin: float | None = None, *,
                        only_violating: bool = False, negatives: str = "all",
                        chunk_size: int | None = None) -> Triplets:
    """Mine from (Q, R) distances and (Q, R) masks; ``dist`` may be None for plain batch-all."""
    if miner not in MINERS:
        raise ConfigError(f"unknown miner {miner!r}; expected one of {tuple(MINERS)}")
    if negatives not in ("all", "one"):
        raise ConfigError(f"negatives must be 'all' or 'one', got {negatives!r}")
    if dist is None and (miner != "batch_all" or only_violating):
        raise ConfigError(f"miner {miner!r} needs distances")
    if margin is None and (miner == "semi_hard" or only_violating):
        raise ConfigError(f"miner {miner!r} needs a margin")
    if miner == "batch_hard":
        p = torch.where(pos, dist, -torch.inf).argmax(dim=1)  # (Q,) farthest positive
        n = torch.where(neg, dist, torch.inf).argmin(dim=1)  # (Q,) closest negative
        a = (pos.any(dim=1) & neg.any(dim=1)).nonzero().squeeze(1)  # (T,)
        return a, p[a], n[a]
    step = chunk_size or max(1, _MAX_ELEMENTS // max(1, pos.shape[1] ** 2))
    parts = [_chunk(None if dist is None else dist[s:s + step], pos[s:s + step], neg[s:s + step],
                    margin, miner == "semi_hard", only_violating,
                    miner == "semi_hard" and negatives == "one", s)
             for s in range(0, pos.shape[0], step)]
    if not parts:
        return tuple(torch.zeros(0, dtype=torch.long, device=pos.device) for _ in range(3))
    return tuple(torch.cat([part[i] for part in parts]) for i in range(3))  # type: ignore


def _chunk(dist, pos, neg, margin, semi, only_violating, one_per_pair, offset) -> Triplets:
    keep = pos.unsqueeze(2) & neg.unsqueeze(1)  # (c, R, R) over (a, p, n)
    if dist is not None:
        d_ap, d_an = dist.unsqueeze(2), dist.unsqueeze(1)  # (c, R, 1), (c, 1, R)
        if semi:
            keep &= (d_an > d_ap) & (d_an < d_ap + margin)  # (c, R, R)
        elif only_violating:
            keep &= d_ap - d_an + margin > 0  # (c, R, R)
    if one_per_pair:
        n_best = torch.where(keep, d_an, torch.inf).argmin(dim=2)  # (c, R) closest in the band
        a, p = keep.any(dim=2).nonzero(as_tuple=True)  # (T,), (T,)
        return a + offset, p, n_best[a, p]
    a, p, n = keep.nonzero(as_tuple=True)  # (T,) each
    return a + offset, p, n


def _mine(miner, q_labels, r_labels, exclude_self_pair, q_emb, r_emb, margin, self_index,
          distance, **options) -> Triplets:
    if q_emb is None or r_emb is None:
        raise ConfigError(f"miner {miner!r} needs q_emb and r_emb")
    if len(q_emb) != len(q_labels) or len(r_emb) != len(r_labels):
        raise DataError(f"embeddings and labels disagree: q {len(q_emb)} vs {len(q_labels)}, "
                        f"r {len(r_emb)} vs {len(r_labels)} rows")
    pos, neg = pair_masks(q_labels, r_labels, exclude_self_pair, self_index)
    dist = pairwise_distance(q_emb.detach(), r_emb.detach(), distance)  # (Q, R)
    return mine_from_distances(miner, dist, pos, neg, margin, **options)


@torch.no_grad()
def batch_all(q_labels, r_labels, exclude_self_pair=False, q_emb=None, r_emb=None, margin=None,
              only_violating=False, *, self_index=None, distance="sqeuclidean",
              chunk_size=None) -> Triplets:
    """Every valid (a, p, n); with ``only_violating`` only those with ``d_ap - d_an + margin > 0``.

    Labels suffice unless ``only_violating``. There are O(Q R^2) triplets: for large batches use
    the fused `tnn.core.losses.batch_all_triplet_loss`, which never lists them.
    """
    if only_violating:
        return _mine("batch_all", q_labels, r_labels, exclude_self_pair, q_emb, r_emb, margin,
                     self_index, distance, only_violating=True, chunk_size=chunk_size)
    pos, neg = pair_masks(q_labels, r_labels, exclude_self_pair, self_index)
    return mine_from_distances("batch_all", None, pos, neg, chunk_size=chunk_size)


@torch.no_grad()
def semi_hard(q_labels, r_labels, exclude_self_pair=False, q_emb=None, r_emb=None, margin=None,
              *, self_index=None, distance="sqeuclidean", negatives="all",
              chunk_size=None) -> Triplets:
    """FaceNet semi-hard: negatives with ``d_ap < d_an < d_ap + margin``, per valid (a, p).

    ``negatives="all"`` keeps every such n; ``"one"`` the closest one (first index on ties).
    Pairs without a semi-hard negative give no triplet.
    """
    return _mine("semi_hard", q_labels, r_labels, exclude_self_pair, q_emb, r_emb, margin,
                 self_index, distance, negatives=negatives, chunk_size=chunk_size)


@torch.no_grad()
def batch_hard(q_labels, r_labels, exclude_self_pair=False, q_emb=None, r_emb=None, margin=None,
               *, self_index=None, distance="sqeuclidean") -> Triplets:
    """Per anchor the farthest positive and the closest negative (Hermans et al., 2017).

    First index on ties; anchors lacking a positive or a negative give no triplet. ``margin`` is
    unused (accepted so that all miners share one signature).
    """
    return _mine("batch_hard", q_labels, r_labels, exclude_self_pair, q_emb, r_emb, margin,
                 self_index, distance)


MINERS: dict[str, Callable[..., Triplets]] = {
    "batch_all": batch_all, "semi_hard": semi_hard, "batch_hard": batch_hard}


def mine(miner: str | Callable[..., Triplets], audio_emb: torch.Tensor, visual_emb: torch.Tensor,
         labels: torch.Tensor, directions: Sequence[str] = ("a2v",), *,
         visual_labels: torch.Tensor | None = None, **kwargs) -> dict[str, Triplets]:
    """Triplets per direction: ``"a2v"`` anchors audio rows on visual refs, ``"v2a"`` the reverse.

    ``labels`` label the audio rows, and the visual rows unless ``visual_labels`` is given;
    ``kwargs`` go to the miner (``exclude_self_pair``, ``margin``, ``self_index``, ...).
    """
    fn = MINERS.get(miner) if isinstance(miner, str) else miner
    if fn is None:
        raise ConfigError(f"unknown miner {miner!r}; expected one of {tuple(MINERS)}")
    check_directions(directions)
    v_labels = labels if visual_labels is None else visual_labels
    sides = {"a2v": (labels, v_labels, audio_emb, visual_emb),
             "v2a": (v_labels, labels, visual_emb, audio_emb)}
    out = {}
    for d in directions:
        q_labels, r_labels, q_emb, r_emb = sides[d]
        out[d] = fn(q_labels, r_labels, q_emb=q_emb, r_emb=r_emb, **kwargs)
    return out


def check_directions(directions: Sequence[str]) -> None:
    """Raise ConfigError unless ``directions`` is a non-empty subset of ("a2v", "v2a")."""
    if isinstance(directions, str) or not directions or len(set(directions)) != len(directions) \
            or any(d not in DIRECTIONS for d in directions):
        raise ConfigError(f"directions must be distinct values of {DIRECTIONS}, got {directions!r}")
