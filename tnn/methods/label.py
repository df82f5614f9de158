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
   that cos(e_a, e_v) = p_a . p_v; p = sum_i w_i p_i over the `components`:
   - deep:   softmax over the proxies at scale s * t (`DeepProbs`);
   - kernel: softmax over cosines of the cluster-KCCA embedding to the class centroids at
     scale t' (`KernelProbs`);
   - krr:    softmax(t'' * s(x)) of a per-view RBF kernel ridge classifier onto one-hot labels
     (`tnn.methods.krr`; its input scaling, bandwidth, ridge and t'' picked on validation).
   t (`temps`), t' (`kernel_scales`) and the weights w (every tuple of `mix_grid` levels, one
   per component, summing to 1) are the argmax of validation MAP.
3. Pairwise re-split (`tnn.methods.pairsplit`, `split`): per view, the class pairs its mixed
   posterior confuses most on validation get their mass p_i + p_j re-split by a binary
   logistic regression on the raw features; C and a sharpness per view (0 = off) chosen on
   validation MAP. With `fallback`, plain cluster-KCCA is returned instead when its
   validation MAP is higher than the (re-split) mixture's.
4. Once chosen, the closed-form parts with w > 0 (kernel, krr, the re-split's regressions; and
   the fallback) are refitted on the whole training data at the chosen settings; the network
   keeps its fit-part training.

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
from tnn.core import losses
from tnn.core.model import BranchConfig, TwoBranchNet
from tnn.data.pairs import Pairs
from tnn.errors import ConfigError
from tnn.methods.kcca import KCCAConfig, fit_kcca
from tnn.methods.krr import KRRConfig, krr_probs, pick_krr
from tnn.methods.linear import CCAConfig, input_maps
from tnn.methods.loop import fit_epochs, new_state, restore_best
from tnn.methods.pairsplit import SplitConfig, mixture_split, refit_split
from tnn.methods.readout import (DeepProbs, MixPad, kernel_probs, map_of, pad_posterior,
                                 path_embed, pick_scale, pick_weights, probs_of, weight_grid)
from tnn.methods.tnn import check_finite, e2e_dim

Log = Callable[[str], None]
LR_SCHEDULES = ("cosine", "constant")
COMPONENTS = ("deep", "kernel", "krr")


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
    """Weight levels: every tuple of levels (0 always allowed), one per component, that sums
    to 1 is tried on validation (readout.weight_grid)."""
    components: tuple[str, ...] = COMPONENTS
    """The posteriors mixed, of deep (the network), kernel (cluster-KCCA centroids) and krr
    (kernel ridge classifier), in this order."""
    krr: KRRConfig = dataclasses.field(default_factory=KRRConfig)
    """The kernel ridge classifier's grids (bandwidth scale, ridge, scale)."""
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    """The pairwise re-split of each view's most confused class pairs (max_pairs 0: off)."""
    fallback: bool = True
    """Return plain cluster-KCCA when it scores higher on validation than the (re-split)
    mixture."""
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
        if not self.components or len(set(self.components)) < len(self.components) \
                or not set(self.components) <= set(COMPONENTS):
            raise ConfigError(f"tnn_label.components must be distinct names of {COMPONENTS}, "
                              f"got {self.components!r}")
        if not weight_grid(self.mix_grid, len(self.components)):
            raise ConfigError(f"tnn_label.mix_grid {self.mix_grid!r}: no tuple of levels, one per "
                              f"component of {self.components!r}, sums to 1")
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
    """(B, k) unit rows x (C, k) proxies -> (B, C) logits s * cos(z, P_c)
    (`tnn.core.losses.proxy_logits`)."""
    return losses.proxy_logits(emb, proxies, scale)


def batch_loss(net: ProxyNet, xa: torch.Tensor, xv: torch.Tensor, labels: torch.Tensor,
               cfg: LabelConfig) -> torch.Tensor:
    """L = w_proxy * (CE_a + CE_v) / 2 + w_triplet * T (module docstring): the framework-free
    `tnn.core.losses.proxy_loss`, whose global-batch form under DDP is
    `tnn.train.proxy.global_proxy_loss`."""
    out = net(xa, xv)
    return losses.proxy_loss(out["audio_emb"], out["visual_emb"], labels, net.proxies, cfg.scale,
                             w_proxy=cfg.w_proxy, w_triplet=cfg.w_triplet,
                             margin=cfg.margin)["total"]


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


def val_parts(fit: Pairs, val: Pairs, cfg: LabelConfig, log: Log) -> dict:
    """Each component fitted on `fit`, its scale picked on `val`: {name: (audio, visual
    posterior modules, setting to refit with)}."""
    parts = {}
    if "deep" in cfg.components:
        parts["deep"] = (*deep_probs(fit, val, cfg, log), None)
    if "kernel" in cfg.components or cfg.fallback:
        ka, kv = kernel_probs(fit, cfg.kcca, cfg.cca, log)
        parts["kernel"] = (ka, kv, pick_scale(ka, kv, cfg.kernel_scales, val, "kernel", log))
    if "krr" in cfg.components:
        setting, ra, rv = pick_krr(fit, val, cfg.krr, log)
        parts["krr"] = (ra, rv, setting)
    return parts


def refit(name: str, part: tuple, train: Pairs, cfg: LabelConfig, log: Log) -> tuple:
    """A chosen component for the final encoder: the network as trained on the fit part; the
    closed-form ones refitted on the whole training data at their picked settings."""
    a, v, setting = part
    if name == "kernel":
        a, v = kernel_probs(train, cfg.kcca, cfg.cca, log)
        a.scale = v.scale = setting
    elif name == "krr":
        a, v = krr_probs(train, cfg.krr, setting)
    return a, v


def fit_label(train: Pairs, cfg: LabelConfig, log: Log = print) -> Encoder:
    """tnn-label on `train` (module docstring): the posterior-mixture encoder, or plain
    cluster-KCCA refitted on `train` when that wins on the validation split."""
    fit_idx, val_idx = validation_split(train.labels, cfg.val_fraction, cfg.seed)
    fit, val = train.subset(fit_idx), train.subset(val_idx)
    parts = val_parts(fit, val, cfg, log)
    probs = [(probs_of(parts[c][0], val.audio), probs_of(parts[c][1], val.visual))
             for c in cfg.components]
    weights, mixed = pick_weights(probs, val.labels, cfg.mix_grid, cfg.components, log)
    choice, mixed = mixture_split(probs, weights, fit, val, mixed, cfg.split, log)
    if cfg.fallback:
        ka, kv, _ = parts["kernel"]
        plain = map_of(path_embed(ka.path, val.audio), path_embed(kv.path, val.visual), val.labels)
        log(f"  plain cluster-KCCA val MAP {plain:.4f}")
        if plain > mixed:
            return fit_kcca(train, cfg.kcca, cfg.cca, cfg.cca.beta, log)
    chosen = [(refit(c, parts[c], train, cfg, log), w)
              for c, w in zip(cfg.components, weights) if w > 0]
    ws = [w for _, w in chosen]
    sa, sv = refit_split(choice, train.audio, train.visual, train.labels, train.num_classes)
    return Encoder(MixPad([m[0] for m, _ in chosen], ws, 0, sa),
                   MixPad([m[1] for m, _ in chosen], ws, 1, sv),
                   None, train.audio.shape[1], train.visual.shape[1])
