"""Kernel ridge classifier posteriors: a closed-form, per-view component of tnn-label's mixture.

For one view, on scaled inputs x (per-feature z-scores, or, with scaling "global", the rows
centred and divided by one scale for the whole view, which keeps the view's own geometry, the
relative sizes of its features): Nystrom RBF features phi(x) = k(x, L) W (the map of
`tnn.methods.kcca`: m seeded landmark rows L of the training rows, W W' = pinv(K_LL), sigma =
`bandwidth_scale` times the median pairwise distance), then ridge regression onto the one-hot
labels Y (n, C) of the training rows:

    B = (Phi_c' Phi_c / n + r I)^-1 Phi_c' Y_c / n,    s(x) = (phi(x) - mean phi) B + mean Y

(Phi_c, Y_c centred), read out as the posterior softmax(t * s(x)) (`KRRProbs`). Each view is
fitted alone on its own labels: unlike cluster-KCCA there is no coupling across the views, so
the component is a second, differently biased opinion of each item's class. The scaling, the
bandwidth scale, the ridge r and the inverse temperature t (a `KRRSetting`) are the argmax of
the validation MAP of the padded posteriors (`pick_krr`); the kernel is evaluated once per
scaling and bandwidth, each ridge is one (m x m) solve. Cost O(n m (D + m)) per view, scaling
and bandwidth. Measurements: docs/results/issue15.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from tnn.core.encoder import Affine, standardizer
from tnn.data.pairs import Pairs
from tnn.errors import ConfigError
from tnn.methods.kcca import KCCAConfig, kernel_map, nystrom_whitener
from tnn.methods.readout import posterior_map

Log = Callable[[str], None]
SCALINGS = ("feature", "global")


@dataclasses.dataclass(frozen=True)
class KRRConfig:
    """Grids of the kernel ridge classifier component, searched on validation."""

    bandwidth_scales: tuple[float, ...] = (0.5, 1.0)
    """Multipliers of the median pairwise distance (the RBF sigma) tried."""
    ridges: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    """Ridges r on the feature covariance (its trace is <= 1 for an RBF kernel) tried."""
    scales: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
    """Inverse temperatures t of the posterior softmax(t * s(x)) tried (80 and 160 added +0.003
    mean dev MAP over 14 view pairs to the grid ending at 40; 320 changed nothing)."""
    scalings: tuple[str, ...] = SCALINGS
    """Input scalings tried: "feature" z-scores each feature; "global" centres the rows and
    divides them by one scale per view (the root mean square of the centred entries). On dev
    splits of 15 view pairs, picking between the two on validation gave +0.0033 mean MAP
    (+0.012 to +0.018 on the fou pairs, where z-scoring inflates the noisy high-order Fourier
    coefficients) over "feature" alone."""
    rank: int = 1000
    """Landmarks m per view (at most the training rows)."""
    seed: int = 0
    """Seed of the landmark and median samples."""

    def __post_init__(self) -> None:
        for name in ("bandwidth_scales", "ridges", "scales"):
            grid = getattr(self, name)
            if not grid or any(not v > 0 for v in grid):
                raise ConfigError(f"tnn_label.krr.{name} must be a non-empty list of numbers > 0, "
                                  f"got {grid!r}")
        if not self.scalings or len(set(self.scalings)) < len(self.scalings) \
                or not set(self.scalings) <= set(SCALINGS):
            raise ConfigError(f"tnn_label.krr.scalings must be distinct names of {SCALINGS}, "
                              f"got {self.scalings!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"tnn_label.krr.rank must be a positive integer, got {self.rank!r}")


class KRRSetting(NamedTuple):
    """One point of the grid: what `pick_krr` returns and `krr_probs` refits with."""

    bandwidth_scale: float
    ridge: float
    scale: float
    scaling: str = "feature"


def global_scaler(x: np.ndarray, eps: float = 1e-12) -> Affine:
    """x -> (x - mean) / c, c the root mean square of the centred entries of `x` (1 when they
    are all 0): one scale for the whole view, fitted on `x`."""
    x = np.asarray(x, np.float64)
    c = float(np.sqrt(((x - x.mean(0)) ** 2).mean()))
    return Affine(x.mean(0), np.eye(x.shape[1]) / (c if c > eps else 1.0))


class KRRProbs(nn.Module):
    """x -> softmax(scale * (path(x) + bias)), (B, C); path = standardise, kernel map,
    Affine(mean kernel row, W B), so path(x) + bias = s(x)."""

    def __init__(self, path: nn.Module, bias: np.ndarray, scale: float) -> None:
        super().__init__()
        self.path, self.scale = path, scale
        self.register_buffer("bias", torch.as_tensor(np.asarray(bias, np.float32)))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.path(x) + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scale * self.scores(x), dim=1)


@dataclasses.dataclass
class ViewFeatures:
    """One view at one bandwidth: its standardiser, kernel map, Nystrom whitener W, the kernel
    rows K (n, m) of the training rows and their mean; `solve` fits any ridge on them."""

    std: nn.Module
    kmap: nn.Module
    whiten: np.ndarray
    k_rows: np.ndarray

    def solve(self, labels: np.ndarray, num_classes: int, ridge: float) -> KRRProbs:
        """The ridge regression onto one-hot `labels` (module docstring), at scale 1."""
        y = np.eye(num_classes)[labels]
        k_mean, y_mean = self.k_rows.mean(0), y.mean(0)
        phi = (self.k_rows - k_mean) @ self.whiten
        cov = phi.T @ phi / len(y) + ridge * np.eye(phi.shape[1])
        b = np.linalg.solve(cov, phi.T @ (y - y_mean) / len(y))
        return KRRProbs(nn.Sequential(self.std, self.kmap, Affine(k_mean, self.whiten @ b)),
                        y_mean, 1.0)


def view_features(x: np.ndarray, cfg: KRRConfig, bandwidth_scale: float,
                  scaling: str = "feature") -> ViewFeatures:
    """Scale `x` (one view's training rows; `scaling` as in `KRRConfig.scalings`), draw the
    landmarks (seeded), build the kernel at `bandwidth_scale` (median heuristic on the same
    seeded sample)."""
    std = standardizer(x) if scaling == "feature" else global_scaler(x)
    with torch.no_grad():
        z = std(torch.from_numpy(x)).double().numpy()
    rng = np.random.default_rng(cfg.seed)
    idx = np.sort(rng.choice(len(z), min(cfg.rank, len(z)), replace=False))
    kmap = kernel_map(z, z[idx], KCCAConfig(bandwidth_scale=bandwidth_scale), rng)
    whiten = nystrom_whitener(kmap.kernel64(kmap.landmarks).numpy(), KCCAConfig().eig_floor)
    return ViewFeatures(std, kmap, whiten, kmap.kernel64(torch.as_tensor(z)).numpy())


def krr_probs(train: Pairs, cfg: KRRConfig, setting: KRRSetting) -> tuple[KRRProbs, KRRProbs]:
    """The (audio, visual) kernel ridge posteriors fitted on `train` (raw rows) at `setting`."""
    mods = [view_features(x, cfg, setting.bandwidth_scale, setting.scaling)
            .solve(train.labels, train.num_classes, setting.ridge)
            for x in (train.audio, train.visual)]
    for m in mods:
        m.scale = setting.scale
    return mods[0], mods[1]


def softmax_rows(s: np.ndarray, t: float) -> np.ndarray:
    """softmax(t * s) of each row."""
    z = t * s
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def pick_krr(fit: Pairs, val: Pairs, cfg: KRRConfig,
             log: Log) -> tuple[KRRSetting, KRRProbs, KRRProbs]:
    """Fitted on `fit` (raw rows) at every (scaling, bandwidth scale, ridge), scored with every
    scale t by the validation `posterior_map`; the best (first on ties): (its `KRRSetting`,
    audio, visual modules)."""
    best, tried = None, 0
    for scaling, bw in [(sc, bw) for sc in cfg.scalings for bw in cfg.bandwidth_scales]:
        feats = [view_features(x, cfg, bw, scaling) for x in (fit.audio, fit.visual)]
        for ridge in cfg.ridges:
            mods = [f.solve(fit.labels, fit.num_classes, ridge) for f in feats]
            with torch.no_grad():
                s = [m.eval().scores(torch.from_numpy(x)).numpy()
                     for m, x in zip(mods, (val.audio, val.visual))]
            for t in cfg.scales:
                score = posterior_map(softmax_rows(s[0], t), softmax_rows(s[1], t), val.labels)
                tried += 1
                if best is None or score > best[0]:
                    best = (score, KRRSetting(bw, ridge, t, scaling), mods)
    score, key, mods = best
    for m in mods:
        m.scale = key.scale
    log(f"  krr val MAP {score:.4f} at {key.scaling} scaling, bandwidth scale "
        f"{key.bandwidth_scale:g}, ridge {key.ridge:g}, scale {key.scale:g} (best of {tried})")
    return key, mods[0], mods[1]

