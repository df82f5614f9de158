"""tnn-label: a triplet network with class proxies, read out in label space and mixed with
cluster-KCCA's posterior; every choice made on a validation split of the training data.

1. Network (`ProxyNet`): one wide_bn branch per view (input BatchNorm, Dense 512-512 + BatchNorm
   + ReLU + dropout 0.5, Dense(k), L2), k = cca.dim or classes - 1, on the standardised raw
   features, plus one learnable proxy P_c per class in the common space, shared by both
   branches. Loss on a batch of pairs (z_a, z_v unit rows, y labels):

       L = w_proxy * 1/2 [CE(s z_a P^T, y) + CE(s z_v P^T, y)] + w_triplet * T(z_a, z_v, y)

   with P row-normalised, s = `scale` (cosine softmax) and T the cross-modal batch-all cosine
   triplet loss of tnn-e2e (both directions, margin 0.2, mean over positive triplets). Adam
   (lr 1e-3, weight decay 1e-4), cosine LR decay to 0 over `epochs` epochs (per batch), early
   stopping on the validation MAP of the posterior readout at scale s, through
   `tnn.methods.loop.fit_epochs` (best epoch restored).
2. Readout (`tnn.methods.readout`): each item is embedded as its class posterior, padded so
   that cos(e_a, e_v) = p_a . p_v; p = w p_deep + (1 - w) p_kernel, p_deep the softmax over the
   proxies at scale s * t, p_kernel the softmax over cosines of the cluster-KCCA embedding to
   the class centroids at scale t'. t (`temps`), t' (`kernel_scales`) and w (`mix_grid`) are
   the argmax of validation MAP; with `fallback`, plain cluster-KCCA is returned instead when
   its validation MAP is higher than the mixture's.
3. Once chosen, the kernel part (if w < 1, or the fallback) is refitted on the whole training
   data; the network keeps its fit-part training.

The validation split (`val_fraction`, class-balanced, seed `seed`) is carved from the training
data given to `fit_label`; the test fold is never seen. Measurements: docs (issue #15 notes).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tnn.core.encoder import Encoder
from tnn.core.folds import validation_split
from tnn.core.losses import combined_loss
from tnn.core.model import BranchConfig, TwoBranchNet
from tnn.data.pairs import Pairs
from tnn.errors import ConfigError
from tnn.methods.kcca import KCCAConfig, fit_kcca
from tnn.methods.linear import CCAConfig, input_maps
from tnn.methods.loop import fit_epochs, new_state, restore_best
from tnn.methods.readout import (DeepProbs, MixPad, kernel_probs, map_of, pad_posterior,
                                 path_embed, pick_mix, pick_scale, probs_of)
from tnn.methods.tnn import check_finite, e2e_dim

Log = Callable[[str], None]
LR_SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """tnn-label's settings; the defaults are its one configuration for every data set."""

    hidden: tuple[int, ...] = (512, 512)
    dropout: float = 0.5
    out_dim: int | None = None
    """Common-space width of the network; None = cca.dim, else classes - 1 (as tnn-e2e)."""
    scale: float = 16.0
    """s: inverse temperature of the proxy cross-entropy (and of the early-stopping readout)."""
    w_proxy: float = 1.0
    w_triplet: float = 1.0
    margin: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    """cosine: decay to 0 over `epochs` epochs, stepped per batch; constant."""
    batch_size: int = 256
    epochs: int = 40
    patience: int = 20
    temps: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    """Readout scales s * t of the network's posterior tried on validation."""
    kernel_scales: tuple[float, ...] = (5.0, 10.0, 20.0)
    """Inverse temperatures of the cluster-KCCA centroid posterior tried on validation."""
    mix_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    """Weights w of the network's posterior (1 - w: the kernel one) tried on validation."""
    fallback: bool = True
    """Return plain cluster-KCCA when it scores higher on validation than the mixture."""
    val_fraction: float = 0.15
    seed: int = 0
    """Seed of the validation split, the weights and the batch order."""
    cca: CCAConfig = dataclasses.field(default_factory=CCAConfig)
    """Standardisation, and cluster-KCCA's k, ridge and beta."""
    kcca: KCCAConfig = dataclasses.field(default_factory=KCCAConfig)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"tnn_label.lr_schedule must be one of {LR_SCHEDULES}, "
                              f"got {self.lr_schedule!r}")
        if self.epochs < 0 or self.batch_size < 2 or self.lr <= 0 or self.scale <= 0:
            raise ConfigError(f"tnn_label: need epochs >= 0, batch_size >= 2, lr > 0, scale > 0; "
                              f"got epochs={self.epochs}, batch_size={self.batch_size}, "
                              f"lr={self.lr}, scale={self.scale}")
        for name in ("temps", "kernel_scales", "mix_grid"):
            grid = getattr(self, name)
            if not grid or any(not v >= 0 for v in grid) or (name != "mix_grid" and min(grid) <= 0):
                raise ConfigError(f"tnn_label.{name} must be a non-empty list of numbers > 0 "
                                  f"(mix_grid: >= 0), got {grid!r}")
        if max(self.mix_grid) > 1:
            raise ConfigError(f"tnn_label.mix_grid weights must lie in [0, 1], got {self.mix_grid!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"tnn_label.val_fraction must lie in (0, 1), got {self.val_fraction!r}")


def label_default() -> LabelConfig:
    """tnn-label's default, chosen on dev splits of the training folds (issue #15 notes)."""
    return LabelConfig()


class ProxyNet(nn.Module):
    """Two branches into a k-d unit sphere plus `num_classes` shared class proxies."""

    def __init__(self, da: int, dv: int, num_classes: int, cfg: LabelConfig) -> None:
        super().__init__()
        out = cfg.out_dim or e2e_dim(cfg.cca, num_classes)
        branch = BranchConfig(hidden=tuple(cfg.hidden), out_dim=out, activation="relu",
                              dropout=cfg.dropout, norm="batchnorm", input_norm="batchnorm",
                              head_activation=False, final="l2")
        self.net = TwoBranchNet(da, dv, branch, branch, shared=False)
        self.proxies = nn.Parameter(F.normalize(torch.randn(num_classes, out), dim=1))

    def forward(self, xa: torch.Tensor, xv: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(xa, xv)


def proxy_logits(emb: torch.Tensor, proxies: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, k) unit rows x (C, k) proxies -> (B, C) logits s * cos(z, P_c)."""
    return scale * emb @ F.normalize(proxies, dim=1).T


def batch_loss(net: ProxyNet, xa: torch.Tensor, xv: torch.Tensor, labels: torch.Tensor,
               cfg: LabelConfig) -> torch.Tensor:
    """L = w_proxy * (CE_a + CE_v) / 2 + w_triplet * T (module docstring)."""
    out = net(xa, xv)
    ce = 0.5 * sum(F.cross_entropy(proxy_logits(out[k], net.proxies, cfg.scale), labels)
                   for k in ("audio_emb", "visual_emb"))
    total = cfg.w_proxy * ce
    if cfg.w_triplet:
        trip = combined_loss(out["audio_emb"], out["visual_emb"], labels,
                             directions=("a2v", "v2a"), margin=cfg.margin, distance="cosine",
                             miner="batch_all", reduction="mean_positive")["triplet"]
        total = total + cfg.w_triplet * trip
    return total


@torch.no_grad()
def posterior_rows(net: ProxyNet, xa: torch.Tensor, xv: torch.Tensor,
                   scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The padded posteriors softmax(scale * z P^T) of both views (eval mode, then back to
    train mode): the readout early stopping scores."""
    net.eval()
    out = net(xa, xv)
    net.train()
    a, v = (torch.softmax(proxy_logits(out[k], net.proxies, scale), dim=1)
            for k in ("audio_emb", "visual_emb"))
    return pad_posterior(a, 0).numpy(), pad_posterior(v, 1).numpy()


def train_proxy_net(fit: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                    val: tuple[torch.Tensor, torch.Tensor, np.ndarray], num_classes: int,
                    cfg: LabelConfig, log: Log) -> ProxyNet:
    """Train a `ProxyNet` on fit = (xa, xv, labels) (standardised inputs) with early stopping on
    val = (xa, xv, labels) (`fit_epochs`); returns it with its best epoch's weights, in eval mode."""
    (xa, xv, y), (va, vv, vy) = fit, val
    torch.manual_seed(cfg.seed)
    net = ProxyNet(xa.shape[1], xv.shape[1], num_classes, cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = max(1, len(y) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.epochs * n_batches)) \
        if cfg.lr_schedule == "cosine" else None
    gen = torch.Generator().manual_seed(cfg.seed)

    def one_epoch(epoch: int) -> dict:
        net.train()
        perm, total = torch.randperm(len(y), generator=gen), 0.0
        for b in range(n_batches):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            loss = batch_loss(net, xa[idx], xv[idx], y[idx], cfg)
            check_finite(epoch, b + 1, loss=loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) / n_batches
        return {"total": total}

    def report(state: dict, h: dict) -> None:
        log(f"  epoch {h['epoch']:3d}  loss {h['total']:.4f}  val MAP {h['val_map']:.4f}")

    state = fit_epochs(net, one_epoch, lambda: map_of(*posterior_rows(net, va, vv, cfg.scale), vy),
                       epochs=cfg.epochs, patience=cfg.patience, state=new_state(net),
                       on_epoch=report)
    restore_best(state, net)
    log(f"  tnn-label net: best val MAP {state['best']:.4f} at epoch {state['best_epoch']} "
        f"(ran {state['epoch']})")
    return net.eval()


def deep_probs(fit: Pairs, val: Pairs, cfg: LabelConfig, log: Log) -> tuple[DeepProbs, DeepProbs]:
    """Standardisers fitted on `fit`, the trained network, and its (audio, visual) posterior
    modules with the readout scale s * t picked on `val`."""
    a_std, v_std = input_maps(fit, cfg.cca, project=False)
    with torch.no_grad():
        t = lambda m, x: m(torch.from_numpy(x))  # noqa: E731
        xa, xv, va, vv = (t(a_std, fit.audio), t(v_std, fit.visual),
                          t(a_std, val.audio), t(v_std, val.visual))
    net = train_proxy_net((xa, xv, torch.from_numpy(fit.labels)), (va, vv, val.labels),
                          fit.num_classes, cfg, log)
    da = DeepProbs(a_std, net.net.audio_branch, net.proxies, cfg.scale)
    dv = DeepProbs(v_std, net.net.visual_branch, net.proxies, cfg.scale)
    pick_scale(da, dv, [cfg.scale * t for t in cfg.temps], val, "deep", log)
    return da, dv


def fit_label(train: Pairs, cfg: LabelConfig, log: Log = print) -> Encoder:
    """tnn-label on `train` (module docstring): the posterior-mixture encoder, or plain
    cluster-KCCA refitted on `train` when that wins on the validation split."""
    fit_idx, val_idx = validation_split(train.labels, cfg.val_fraction, cfg.seed)
    fit, val = train.subset(fit_idx), train.subset(val_idx)
    da, dv = deep_probs(fit, val, cfg, log)
    ka, kv = kernel_probs(fit, cfg.kcca, cfg.cca, log)
    k_scale = pick_scale(ka, kv, cfg.kernel_scales, val, "kernel", log)
    w, mixed = pick_mix((probs_of(da, val.audio), probs_of(dv, val.visual)),
                        (probs_of(ka, val.audio), probs_of(kv, val.visual)),
                        val.labels, cfg.mix_grid, log)
    if cfg.fallback:
        plain = map_of(path_embed(ka.path, val.audio), path_embed(kv.path, val.visual), val.labels)
        log(f"  plain cluster-KCCA val MAP {plain:.4f}")
        if plain > mixed:
            return fit_kcca(train, cfg.kcca, cfg.cca, cfg.cca.beta, log)
    if w < 1:
        ka, kv = kernel_probs(train, cfg.kcca, cfg.cca, log)  # refit on the whole training data
        ka.scale = kv.scale = k_scale
    return Encoder(MixPad([da, ka], [w, 1 - w], 0), MixPad([dv, kv], [w, 1 - w], 1), None,
                   train.audio.shape[1], train.visual.shape[1])
