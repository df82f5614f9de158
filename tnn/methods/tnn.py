"""The paper's method: the two TNN pipelines, fitted in one process on in-memory `Pairs`.

- `tnn-c-cca` (two-stage, as the authors' code): standardise, fit cluster-CCA (dim k, beta)
  on the training part, project, train the triplet network on the k-d projections.
- `tnn-e2e` (as the abstract describes): both branches on the standardised raw features,
  trained with the triplet loss plus the differentiable cluster-CCA loss; output width k.

Model selection uses a class-balanced validation split carved from the training fold, never
the test fold. The two-stage pipeline keeps its first stage alone when that scores higher on
the validation split, so it does not end below its own cluster-CCA there.

The closed-form first stage and input stages are `tnn.methods.linear`; the epoch loop with
early stopping is `tnn.methods.loop.fit_epochs` (shared with DCCA and the Ray Train worker,
which also reuses `build_net`, `loss_kwargs` and `check_finite` from here).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch
from torch import nn

from tnn.core.encoder import Encoder, Ensemble
from tnn.core.folds import validation_split
from tnn.core.losses import combined_loss
from tnn.core.metrics import cross_modal_scores
from tnn.core.model import PRESETS, TwoBranchNet
from tnn.data.pairs import Pairs
from tnn.errors import ConfigError, NumericalError
from tnn.methods.linear import CCAConfig, input_maps
from tnn.methods.loop import fit_epochs, new_state, restore_best

PIPELINES = ("two-stage", "e2e")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One-process training of the triplet network (the distributed loop reuses it)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    margin: float = 0.5
    distance: str = "sqeuclidean"
    """Triplet distance: sqeuclidean (paper) or cosine."""
    miner: str = "batch_all"
    reduction: str = "mean_positive"
    directions: tuple[str, ...] = ("a2v", "v2a")
    exclude_self_pair: bool = False
    w_triplet: float = 1.0
    w_cca: float = 0.0
    """Weight of the differentiable cluster-CCA loss (uses the CCAConfig's dim/ridge/beta)."""
    val_fraction: float = 0.15
    patience: int = 15
    """Stop after this many epochs without a better validation MAP."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 2 or self.lr <= 0 or self.margin < 0:
            raise ConfigError(f"train: need epochs >= 0, batch_size >= 2, lr > 0, margin >= 0; got "
                              f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}, "
                              f"margin={self.margin}")


@dataclasses.dataclass(frozen=True)
class TNNConfig:
    pipeline: str = "two-stage"
    """two-stage (tnn-c-cca) or e2e (tnn-e2e)."""
    preset: str = "paper"
    """Branch preset from `tnn.core.model.PRESETS`; its out_dim is replaced by cca.dim for e2e."""
    shared: bool | None = None
    """One network for both modalities; None = share when the input widths are equal."""
    hidden: tuple[int, ...] | None = None
    """Hidden widths replacing the preset's (None keeps the preset's)."""
    dropout: float | None = None
    """Dropout replacing the preset's (None keeps the preset's)."""
    ensemble: int = 1
    """Train this many networks from different seeds and average their unit embeddings."""
    cca: CCAConfig = dataclasses.field(default_factory=CCAConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ConfigError(f"pipeline must be one of {PIPELINES}; got {self.pipeline!r}")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown model preset {self.preset!r}; known: {', '.join(PRESETS)}")


def validation_map(encoder: Encoder, val: Pairs) -> float:
    """Mean of a->v and v->a MAP on `val` (cosine similarity in the common space)."""
    s = cross_modal_scores(encoder.embed_audio(val.audio), encoder.embed_visual(val.visual),
                           val.labels)
    return 0.5 * (s["a2v_map"] + s["v2a_map"])


def fit_tnn(train: Pairs, cfg: TNNConfig, log: Callable[[str], None] = print) -> tuple[Encoder, list]:
    """Fit one TNN pipeline on `train`; returns the selected encoder and per-epoch history.

    With `ensemble` > 1 the members differ only in their seed (initialisation, batch order).
    """
    fit_idx, val_idx = validation_split(train.labels, cfg.train.val_fraction, cfg.train.seed)
    fit, val = train.subset(fit_idx), train.subset(val_idx)
    two_stage = cfg.pipeline == "two-stage"
    a_in, v_in = input_maps(fit, cfg.cca, project=two_stage)
    dims = (fit.audio.shape[1], fit.visual.shape[1])
    nets, history = [], []
    for member in range(cfg.ensemble):
        member_cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + 1000 * member))
        torch.manual_seed(member_cfg.train.seed)
        net = build_net(member_cfg, a_in, v_in, fit)
        history += [{"member": member, **h} for h in
                    train_network(Encoder(a_in, v_in, net, *dims), fit, val, member_cfg, log)]
        nets.append(net)
    encoder = Encoder(a_in, v_in, nets[0] if len(nets) == 1 else Ensemble(nets), *dims)
    if two_stage:
        first = Encoder(a_in, v_in, None, *dims)
        first_map, final_map = validation_map(first, val), validation_map(encoder, val)
        if first_map >= final_map:
            log(f"  first stage alone scores higher on validation ({first_map:.4f} >= "
                f"{final_map:.4f}): keeping cluster-CCA")
            return first, history
    return encoder, history


def build_net(cfg: TNNConfig, a_in: nn.Module, v_in: nn.Module, fit: Pairs) -> TwoBranchNet:
    """The branch MLPs on top of the input stages' widths."""
    with torch.no_grad():
        da = a_in(torch.from_numpy(fit.audio[:1])).shape[1]
        dv = v_in(torch.from_numpy(fit.visual[:1])).shape[1]
    branch = PRESETS[cfg.preset]
    if cfg.pipeline == "e2e":
        branch = dataclasses.replace(branch, out_dim=e2e_dim(cfg.cca, fit.num_classes))
    if cfg.hidden is not None:
        branch = dataclasses.replace(branch, hidden=tuple(cfg.hidden))
    if cfg.dropout is not None:
        branch = dataclasses.replace(branch, dropout=cfg.dropout)
    shared = (da == dv) if cfg.shared is None else cfg.shared
    return TwoBranchNet(da, dv, branch, branch, shared=shared)


def e2e_dim(cca: CCAConfig, num_classes: int) -> int:
    """Output width of the end-to-end network: the CCA dimension (default classes - 1, >= 2)."""
    return cca.dim if cca.dim is not None else max(2, num_classes - 1)


def net_out_dim(cfg: TNNConfig, num_classes: int) -> int:
    """The CCA loss's k: the e2e output width, or cca.dim (else the preset's width) for two-stage."""
    return e2e_dim(cfg.cca, num_classes) if cfg.pipeline == "e2e" else \
        (cfg.cca.dim or PRESETS[cfg.preset].out_dim)


def loss_kwargs(cfg: TNNConfig, num_classes: int, out_dim: int | None = None) -> dict:
    """Keyword arguments of `combined_loss` from the config (shared with the distributed loop).

    The CCA term's k is the network's output width (at most classes - 1 when beta = 0).
    """
    t = cfg.train
    k = out_dim if out_dim is not None else (cfg.cca.dim or max(1, num_classes - 1))
    if cfg.cca.beta == 0:
        k = min(k, num_classes - 1)
    return dict(directions=t.directions, w_triplet=t.w_triplet, w_cca=t.w_cca, margin=t.margin,
                distance=t.distance, miner=t.miner, reduction=t.reduction,
                exclude_self_pair=t.exclude_self_pair,
                cca_kwargs=dict(k=k, ridge=cfg.cca.ridge, beta=cfg.cca.beta,
                                num_classes=num_classes))


def train_network(encoder: Encoder, fit: Pairs, val: Pairs, cfg: TNNConfig,
                  log: Callable[[str], None] = print) -> list[dict]:
    """Adam on the network's parameters with early stopping on validation MAP
    (`tnn.methods.loop.fit_epochs`); restores the best."""
    t, net = cfg.train, encoder.net
    opt = torch.optim.Adam(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    with torch.no_grad():
        xa, xv = encoder.audio_in(torch.from_numpy(fit.audio)), encoder.visual_in(torch.from_numpy(fit.visual))
    labels = torch.from_numpy(fit.labels)
    kwargs = loss_kwargs(cfg, fit.num_classes, net_out_dim(cfg, fit.num_classes))
    gen = torch.Generator().manual_seed(t.seed)
    start = [0.0]

    def one_epoch(epoch: int) -> dict:
        start[0] = time.perf_counter()
        return run_epoch(net, opt, xa, xv, labels, t.batch_size, gen, kwargs, epoch=epoch)

    def validate() -> dict:
        val_map = validation_map(encoder, val)
        return {"val_map": val_map, "samples_per_s": len(labels) / (time.perf_counter() - start[0])}

    def report(state: dict, h: dict) -> None:
        log(f"  epoch {h['epoch']:3d}  loss {h['total']:.4f}  val MAP {h['val_map']:.4f}  "
            f"{h['samples_per_s']:.0f} samples/s")

    state = fit_epochs(net, one_epoch, validate, epochs=t.epochs, patience=t.patience,
                       state=new_state(net), on_epoch=report)
    restore_best(state, net)
    return state["history"]


def run_epoch(net, opt, xa, xv, labels, batch_size, gen, kwargs, epoch: int = 0) -> dict:
    """One pass over shuffled batches (the last partial batch is dropped when there are others).
    `epoch` only names where training diverged (`check_finite`)."""
    net.train()
    perm = torch.randperm(len(labels), generator=gen)
    n_batches = max(1, len(perm) // batch_size)
    sums: dict[str, float] = {}
    for b in range(n_batches):
        idx = perm[b * batch_size:(b + 1) * batch_size]
        out = net(xa[idx], xv[idx])
        check_finite(epoch, b + 1, **out)
        terms = combined_loss(out["audio_emb"], out["visual_emb"], labels[idx], **kwargs)
        check_finite(epoch, b + 1, loss=terms["total"])
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        for key in ("total", "triplet", "cca"):
            sums[key] = sums.get(key, 0.0) + float(terms[key].detach()) / n_batches
    check_finite(epoch, n_batches, **dict(net.named_parameters()))
    return sums


def check_finite(epoch: int, step: int, **tensors: torch.Tensor) -> None:
    """Stop a diverged run before it takes another step (or writes another checkpoint): raise
    `NumericalError` naming the epoch, the step (1-based within the epoch) and the first
    tensor with NaN or inf values."""
    for name, x in tensors.items():
        if not bool(torch.isfinite(x.detach()).all()):
            raise NumericalError(f"training diverged at epoch {epoch}, step {step}: {name} has "
                                 "NaN or inf values (a lower tnn.train.lr may help)")
