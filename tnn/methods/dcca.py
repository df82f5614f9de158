"""Deep CCA and deep cluster-CCA (methods dcca, c-dcca).

DCCA (Andrew et al., ICML 2013): one MLP per view trained to maximise the sum of the top-k
canonical correlations of its outputs on each batch, then linear CCA of the outputs as the
final projection. C-DCCA (the authors' baseline): the same with the correlations of the
beta-blended cluster cross-covariance and linear cluster-CCA (beta) on the outputs. Both use
`tnn.core.cca_loss.cluster_cca_loss` (beta = 1 for DCCA, where it equals `dcca_loss`).

Model selection, on a class-balanced validation split of the training fold only: after each
epoch the projection is fitted on the fit part's outputs and the validation MAP is measured;
training stops after `patience` epochs without improvement and the best epoch's weights are
kept. The final projection is then fitted on the outputs of the whole training fold.

Defaults: the paper's architectures (DCCA: input BatchNorm, 3 x Dense(100, sigmoid), dropout 0.1,
Dense(k); C-DCCA: input BatchNorm, Dense 20-20-k, sigmoid throughout) with Adam, lr 1e-2, batch
200, at most 60 epochs. The paper's RMSprop 1e-4 for 50 epochs (`optimizer=rmsprop lr=1e-4
epochs=50`) left both at the random-network level on the bundled data (validation MAP about
0.23 vs 0.72 for DCCA, 0.27 vs 0.82 for C-DCCA; validation splits of three training folds,
test folds unused).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from torch import nn

from tnn.core.cca import CCAStats, fit_cca
from tnn.core.cca_loss import cluster_cca_loss
from tnn.core.encoder import Affine, Encoder
from tnn.core.folds import validation_split
from tnn.core.metrics import cross_modal_scores
from tnn.core.model import ACTIVATIONS, BranchConfig, TwoBranchNet
from tnn.data.pairs import Pairs
from tnn.errors import ConfigError
from tnn.methods.linear import cca_dim, input_maps
from tnn.methods.loop import fit_epochs, new_state, restore_best

OPTIMIZERS = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam}


@dataclasses.dataclass(frozen=True)
class DCCAConfig:
    """Per-view MLP (input BatchNorm, Dense + activation + dropout per hidden width, Dense(out))
    and its training."""

    hidden: tuple[int, ...] = (100, 100, 100)
    """Hidden widths (paper DCCA: 3 x 100; C-DCCA: 20, 20)."""
    activation: str = "sigmoid"
    """Hidden activation (paper: sigmoid)."""
    dropout: float = 0.1
    """Dropout after each hidden activation."""
    head_activation: bool = False
    """Activation (and dropout) after the output layer too (C-DCCA's Dense(10) sigmoid)."""
    out_dim: int | None = None
    """Network output width; None = CCAConfig.dim (the loss uses the top CCAConfig.dim corrs)."""
    optimizer: str = "adam"
    """adam, or rmsprop (paper). See the module docstring for the paper's settings."""
    lr: float = 1e-2
    """Learning rate (paper: RMSprop 1e-4, which barely moves these nets in 50 epochs here)."""
    batch_size: int = 200
    """Rows per batch (paper: 200); the loss needs batches well above out_dim."""
    epochs: int = 60
    """Maximum epochs (paper: 50)."""
    patience: int = 10
    """Stop after this many epochs without a better validation MAP."""
    val_fraction: float = 0.15
    """Validation part of the training fold for early stopping."""
    ridge: float | None = None
    """Ridge of the batch covariances in the loss; None = CCAConfig.ridge."""
    seed: int = 0
    """Seed of the weights, batches and validation split."""

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden) if isinstance(self.hidden, (list, tuple)) else None
        if hidden is None or not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ConfigError(f"dcca.hidden must be a sequence of positive ints, "
                              f"got {self.hidden!r}")
        object.__setattr__(self, "hidden", hidden)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"dcca.activation must be one of {tuple(ACTIVATIONS)}, "
                              f"got {self.activation!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"dcca.optimizer must be one of {tuple(OPTIMIZERS)}, "
                              f"got {self.optimizer!r}")
        if not (0 <= self.dropout < 1 and self.lr > 0 and 0 < self.val_fraction < 1):
            raise ConfigError(f"dcca: need dropout in [0, 1), lr > 0, val_fraction in (0, 1); got "
                              f"{self.dropout}, {self.lr}, {self.val_fraction}")
        if self.out_dim is not None and (not isinstance(self.out_dim, int) or self.out_dim < 1):
            raise ConfigError(f"dcca.out_dim must be a positive int or None, got {self.out_dim!r}")
        if self.batch_size < 4 or self.epochs < 0 or self.patience < 1:
            raise ConfigError(f"dcca: need batch_size >= 4, epochs >= 0, patience >= 1; got "
                              f"{self.batch_size}, {self.epochs}, {self.patience}")
        if self.ridge is not None and not self.ridge >= 0:
            raise ConfigError(f"dcca.ridge must be >= 0 or None, got {self.ridge!r}")

    def branch(self, k: int) -> BranchConfig:
        out = self.out_dim or k
        if out < k:
            raise ConfigError(f"dcca.out_dim={out} is below the CCA dimension {k}")
        return BranchConfig(hidden=self.hidden, out_dim=out, activation=self.activation,
                            dropout=self.dropout, input_norm="batchnorm",
                            head_activation=self.head_activation, final="none")


class ProjectedNet(nn.Module):
    """A `TwoBranchNet` followed by a fixed linear (cluster-)CCA projection per view."""

    def __init__(self, net: TwoBranchNet, proj_a: Affine, proj_v: Affine) -> None:
        super().__init__()
        self.net, self.proj_a, self.proj_v = net, proj_a, proj_v

    def encode_audio(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_a(self.net.encode_audio(x))  # (B, Da) -> (B, k)

    def encode_visual(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_v(self.net.encode_visual(x))


def correlation_loss(za, zv, labels, *, k: int, ridge: float, beta: float, num_classes: int):
    """The training objective, -(sum of the top-k corrs) of the batch's blended S12: C-DCCA's
    loss; at beta = 1 the labels drop out and it equals DCCA's `dcca_loss` (tested)."""
    return cluster_cca_loss(za, labels, zv, k=k, ridge=ridge, beta=beta, num_classes=num_classes)


@torch.no_grad()
def outputs(net: TwoBranchNet, xa: torch.Tensor, xv: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    net.eval()
    return net.encode_audio(xa).double().numpy(), net.encode_visual(xv).double().numpy()


def projection(net, xa, xv, labels, num_classes, cca, beta):
    """Linear (cluster-)CCA of the network outputs: (Affine audio, Affine visual)."""
    oa, ov = outputs(net, xa, xv)
    p = fit_cca(CCAStats.from_arrays(oa, ov, labels, num_classes), cca.dim, ridge=cca.ridge,
                beta=beta, scale_by_corr=cca.scale_by_corr)
    return Affine(p.mean_x, p.A), Affine(p.mean_y, p.B)


def fit_deep(train: Pairs, dcfg: DCCAConfig, cca, beta: float,
             log: Callable[[str], None] = print) -> Encoder:
    """dcca (beta = 1) or c-dcca (beta < 1) as an `Encoder`: standardise, MLPs, (cluster-)CCA."""
    k = cca_dim(cca, train.num_classes, train.audio.shape[1], train.visual.shape[1])
    cca = dataclasses.replace(cca, dim=k)
    torch.manual_seed(dcfg.seed)
    fit_idx, val_idx = validation_split(train.labels, dcfg.val_fraction, dcfg.seed)
    a_std, v_std = input_maps(train.subset(fit_idx), cca, project=False)
    with torch.no_grad():
        xa, xv = a_std(torch.from_numpy(train.audio)), v_std(torch.from_numpy(train.visual))
    net = TwoBranchNet(xa.shape[1], xv.shape[1], dcfg.branch(cca.dim), shared=False)
    train_net(net, xa, xv, torch.from_numpy(train.labels), fit_idx, val_idx, train.num_classes,
              dcfg, cca, beta, log)
    proj = projection(net, xa, xv, train.labels, train.num_classes, cca, beta)
    return Encoder(a_std, v_std, ProjectedNet(net, *proj), train.audio.shape[1],
                   train.visual.shape[1])


def train_net(net, xa, xv, labels, fit_idx, val_idx, num_classes, dcfg, cca, beta, log) -> list:
    """Optimise the correlation loss on fit_idx; keep the weights with the best validation MAP
    (`tnn.methods.loop.fit_epochs`)."""
    opt = OPTIMIZERS[dcfg.optimizer](net.parameters(), lr=dcfg.lr)
    gen = torch.Generator().manual_seed(dcfg.seed)
    kw = dict(k=cca.dim, ridge=cca.ridge if dcfg.ridge is None else dcfg.ridge, beta=beta,
              num_classes=num_classes)
    fit_idx = torch.as_tensor(fit_idx)
    state = fit_epochs(
        net, lambda epoch: {"loss": run_epoch(net, opt, xa, xv, labels, fit_idx,
                                              dcfg.batch_size, gen, kw)},
        lambda: validation_map(net, xa, xv, labels.numpy(), fit_idx.numpy(), val_idx,
                               num_classes, cca, beta),
        epochs=dcfg.epochs, patience=dcfg.patience, state=new_state(net))
    restore_best(state, net)
    log(f"  {'c-' if beta < 1 else ''}dcca: {len(state['history'])} epochs, best "
        f"{state['best_epoch']} (val MAP {state['best']:.4f})")
    return state["history"]


def run_epoch(net, opt, xa, xv, labels, rows, batch_size, gen, kw) -> float:
    """One pass over shuffled batches of `rows`; a short last batch is dropped if others exist."""
    net.train()
    perm = rows[torch.randperm(len(rows), generator=gen)]
    n_batches, total = max(1, len(perm) // batch_size), 0.0
    for b in range(n_batches):
        idx = perm[b * batch_size:(b + 1) * batch_size]
        out = net(xa[idx], xv[idx])
        loss = correlation_loss(out["audio_emb"], out["visual_emb"], labels[idx], **kw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) / n_batches
    return total


def validation_map(net, xa, xv, labels, fit_idx, val_idx, num_classes, cca, beta) -> float:
    """Mean of both directions' MAP on val_idx, projection fitted on fit_idx's outputs."""
    pa, pv = projection(net, xa[fit_idx], xv[fit_idx], labels[fit_idx], num_classes, cca, beta)
    with torch.no_grad():
        oa, ov = net.encode_audio(xa[val_idx]), net.encode_visual(xv[val_idx])
        s = cross_modal_scores(pa(oa).numpy(), pv(ov).numpy(), labels[val_idx], n_levels=0)
    return 0.5 * (s["a2v_map"] + s["v2a_map"])
