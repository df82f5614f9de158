"""tnn-label's loss over the global batch under DDP (`tnn.core.losses.proxy_loss`).

The loss is `combined_loss` with the class-proxy cross-entropy in the slot of the batch-level
term (`tnn.core.losses.proxy_loss_kwargs`), so `tnn.train.distributed.global_batch_loss`
carries it unchanged: this rank's anchors against the gathered refs for the cross-modal triplet
term (both directions, global normalisers), and the cross-entropy over the whole gathered batch
on every rank. The gathered rows carry gradients (`tnn.train.distributed.gather`), so each
rank's embeddings receive the gradient of the global-batch CE; the proxies (C, k) are a
parameter of the DDP-wrapped network, used on every rank alike, and DDP's averaging gives
their single-process gradient. No collective beyond `global_batch_loss`'s.
"""

from __future__ import annotations

import torch

from tnn.core.losses import proxy_loss_kwargs
from tnn.train import distributed as tdist


def global_proxy_loss(audio_emb: torch.Tensor, visual_emb: torch.Tensor, labels: torch.Tensor,
                      proxies: torch.Tensor, scale: float, *, w_proxy: float = 1.0,
                      w_triplet: float = 1.0, margin: float = 0.2,
                      rows: int | None = None) -> dict[str, torch.Tensor]:
    """`tnn.core.losses.proxy_loss` of the global batch from this rank's rows (b, k), (b,).

    Every value equals the single-process value on the concatenated global batch, on every
    rank; ``"total"`` back-propagates this rank's share, so that after DDP's averaging the
    gradients are those of one process on the global batch (`global_batch_loss`). ``rows``:
    the agreed local batch (saves the shape check). One process: exactly `proxy_loss`.
    """
    out = tdist.global_batch_loss(audio_emb, visual_emb, labels, rows=rows,
                                  **proxy_loss_kwargs(proxies, scale, w_proxy=w_proxy,
                                                      w_triplet=w_triplet, margin=margin))
    return {**out, "proxy": out["cca"]}
