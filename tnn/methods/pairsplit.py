"""Pairwise re-split of confused classes: the last, per-view step of tnn-label's posterior readout.

A view can be blind to one class pair while it separates the rest: the bundled fou view (Fourier
descriptor magnitudes, rotation invariant) cannot tell a 6 from a 9, and the kernel classifiers'
posteriors split the 6/9 mass at chance there, although a linear model still finds a weak
signal (6-vs-9 accuracy ~0.6). For each view, given its mixed posterior p (B, C):

1. the class pairs (i, j) most often confused on the validation split by that view's mixed
   posterior (argmax vs label, both directions counted; at least `min_confusions` rows, at most
   `max_pairs` pairs; `confused_pairs`);
2. per pair a binary L2 logistic regression g(x) = w'(x - mu) / sd + b on the raw features of
   the two classes' training rows, class i = 1 (`fit_binary`: min |w|^2 / (2 C) + sum logloss,
   intercept free, Newton on the features standardised by their mean mu and deviation sd);
3. the pair's mass is re-split: (p_i, p_j) <- (p_i + p_j) (r, 1 - r), r = sigmoid(t g(x))
   (`PairSplit`, applied by `tnn.methods.readout.MixPad` before the padding); the other
   classes keep their mass, so every row still sums to 1.

C (`strengths`) and t per view (`temps`, plus t = 0 = off, always tried) are the argmax of the
validation MAP of the two refined posteriors (`pick_split`, first on ties, and only when above
the unrefined MAP: otherwise the step switches itself off); the regressions are then refitted
on the whole training data at the chosen C (`refit_split`). Measurements: issue #15 notes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from tnn.data.pairs import Pairs
from tnn.errors import ConfigError
from tnn.methods.readout import posterior_map

Log = Callable[[str], None]
Pair = tuple[int, int]
Binary = tuple[np.ndarray, np.ndarray, float]
"""A fitted `fit_binary`: (mu (D,), w / sd (D,), b); g(x) = (x - mu) . (w / sd) + b."""


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """The re-split's grids; max_pairs = 0 turns it off."""

    max_pairs: int = 3
    """At most this many pairs per view, the most confused first."""
    min_confusions: int = 3
    """Validation rows a pair must lose (both directions) to be refined (3 of ~190 rows: lower
    thresholds refined noise on the near-ceiling pairs and lost dev MAP)."""
    temps: tuple[float, ...] = (0.5, 1.0, 2.0)
    """Sharpness t of r = sigmoid(t g(x)) tried per view (0 = off is always tried too)."""
    strengths: tuple[float, ...] = (0.1, 1.0)
    """C, the inverse L2 strength of the pair regressions, tried (one C for both views)."""

    def __post_init__(self) -> None:
        if self.max_pairs < 0 or self.min_confusions < 1:
            raise ConfigError(f"tnn_label.split: need max_pairs >= 0 and min_confusions >= 1, got "
                              f"{self.max_pairs} and {self.min_confusions}")
        for name in ("temps", "strengths"):
            grid = getattr(self, name)
            if not grid or any(not v > 0 for v in grid):
                raise ConfigError(f"tnn_label.split.{name} must be a non-empty list of numbers "
                                  f"> 0, got {grid!r}")


@dataclasses.dataclass(frozen=True)
class SplitChoice:
    """What `pick_split` chose: per view (audio, visual) its pairs and t (0 = off), and C."""

    pairs: tuple[list[Pair], list[Pair]]
    strength: float
    temps: tuple[float, float]


def confused_pairs(probs: np.ndarray, labels: np.ndarray, cfg: SplitConfig) -> list[Pair]:
    """The pairs (i < j) that argmax(probs) (B, C) confuses on >= min_confusions rows of
    `labels` (B,), both directions counted; the most confused first (ties: smaller pair first),
    at most max_pairs."""
    counts: dict[Pair, int] = {}
    for y, p in zip(labels.tolist(), probs.argmax(1).tolist()):
        if y != p:
            key = (min(y, p), max(y, p))
            counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [k for k, n in ranked[:cfg.max_pairs] if n >= cfg.min_confusions]


def fit_binary(x: np.ndarray, y: np.ndarray, strength: float, iters: int = 50) -> Binary:
    """L2 logistic regression of y (N,) in {0, 1} on x (N, D) standardised (constant features
    get sd 1): argmin over (w, b) of |w|^2 / (2 strength) + sum_n logloss(y_n, sigmoid(z_n w + b)),
    b not penalised; Newton steps (a 1e-9 ridge on the Hessian) until the largest step is below
    1e-8 or `iters` steps. Returns (mu, w / sd, b), the raw-feature form of g."""
    x = np.asarray(x, np.float64)
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 1e-9, sd, 1.0)
    xb = np.c_[(x - mu) / sd, np.ones(len(x))]  # (N, D + 1), the last column the intercept
    reg = np.r_[np.full(x.shape[1], 1.0 / strength), 0.0]
    w = np.zeros(xb.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, xb.T @ (p - y) + reg * w)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return mu, w[:-1] / sd, w[-1]


class PairSplit(nn.Module):
    """(p (B, C), x (B, D) raw rows) -> p with each pair k's mass re-split by
    r_k = sigmoid(scale * g_k(x)), in pair order. The pairs (as one-hot rows `e_i`, `e_j`) and
    the regressions (`mu`, `weight` (K, D), `bias` (K,)) are buffers; `scale` is structure."""

    def __init__(self, pairs: Sequence[Pair], models: Sequence[Binary], num_classes: int,
                 scale: float) -> None:
        super().__init__()
        eye = torch.eye(num_classes)
        self.scale = scale
        self.register_buffer("e_i", eye[[i for i, _ in pairs]])  # (K, C)
        self.register_buffer("e_j", eye[[j for _, j in pairs]])  # (K, C)
        self.register_buffer("mu", _stacked(models, 0))  # (K, D)
        self.register_buffer("weight", _stacked(models, 1))  # (K, D)
        self.register_buffer("bias", torch.as_tensor([float(m[2]) for m in models]))  # (K,)

    def forward(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g = ((x[:, None, :] - self.mu) * self.weight).sum(2) + self.bias  # (B, K)
        r = torch.sigmoid(self.scale * g)
        for k in range(self.e_i.shape[0]):
            e_i, e_j = self.e_i[k], self.e_j[k]
            mass = p @ (e_i + e_j)  # (B,)
            p = p * (1 - e_i - e_j) \
                + (mass * r[:, k])[:, None] * e_i + (mass * (1 - r[:, k]))[:, None] * e_j
        return p


def _stacked(models: Sequence[Binary], k: int) -> torch.Tensor:
    """Part k of every model, stacked (K, D), float32."""
    return torch.as_tensor(np.stack([m[k] for m in models]), dtype=torch.float32)


def split_models(x: np.ndarray, labels: np.ndarray, pairs: Sequence[Pair],
                 strength: float) -> list[Binary]:
    """One `fit_binary` per pair (i, j) on the rows of x labelled i or j (class i = 1)."""
    out = []
    for i, j in pairs:
        rows = (labels == i) | (labels == j)
        out.append(fit_binary(x[rows], (labels[rows] == i).astype(np.float64), strength))
    return out


@torch.no_grad()
def apply_split(mod: PairSplit | None, t: float, p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`mod` at scale t on posteriors p and raw rows x (t = 0 or no module: p unchanged)."""
    if mod is None or t == 0:
        return p
    mod.scale = t
    return mod(torch.from_numpy(np.asarray(p, np.float32)),
               torch.from_numpy(np.asarray(x, np.float32))).numpy()


def pick_split(mixed_val: Sequence[np.ndarray], fit: Pairs, val: Pairs, base: float,
               cfg: SplitConfig, log: Log) -> tuple[SplitChoice | None, float]:
    """The re-split chosen on validation: (choice, its validation MAP), or (None, base) when no
    setting beats `base`, the unrefined MAP. mixed_val: the (audio, visual) mixed posteriors of
    the `val` rows; the regressions are fitted on `fit` (raw rows). The argmax runs over C in
    `strengths`, then t_a, then t_v in (0, *temps) (first on ties)."""
    pairs = [confused_pairs(mixed_val[s], val.labels, cfg) for s in (0, 1)]
    if not any(pairs):
        return None, base
    best, score, temps = None, base, (0.0, *cfg.temps)
    for c in cfg.strengths:
        mods = [PairSplit(pairs[s], split_models(x, fit.labels, pairs[s], c), fit.num_classes, 1.0)
                if pairs[s] else None for s, x in ((0, fit.audio), (1, fit.visual))]
        refined = [{t: apply_split(mods[s], t, mixed_val[s], x) for t in temps}
                   for s, x in ((0, val.audio), (1, val.visual))]
        for ta in temps:
            for tv in temps:
                m = posterior_map(refined[0][ta], refined[1][tv], val.labels)
                if m > score:
                    best, score = SplitChoice((pairs[0], pairs[1]), c, (ta, tv)), m
    picked = "off" if best is None else \
        f"C {best.strength:g} t {best.temps[0]:g}/{best.temps[1]:g}"
    log(f"  pair split: pairs {pairs[0]} / {pairs[1]}, {picked}, val MAP {score:.4f} "
        f"(was {base:.4f})")
    return best, score


def mixture_split(probs: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float],
                  fit: Pairs, val: Pairs, base: float, cfg: SplitConfig,
                  log: Log) -> tuple[SplitChoice | None, float]:
    """`pick_split` on the mixture sum_i w_i p_i of the components' (audio, visual) validation
    posteriors `probs` (the terms with w_i > 0, in order); (None, base) when max_pairs is 0."""
    if not cfg.max_pairs:
        return None, base
    mixed_val = [sum(w * p[s] for w, p in zip(weights, probs) if w > 0) for s in (0, 1)]
    return pick_split(mixed_val, fit, val, base, cfg, log)


def refit_split(choice: SplitChoice | None, audio: np.ndarray, visual: np.ndarray,
                labels: np.ndarray, num_classes: int) -> tuple[PairSplit | None, PairSplit | None]:
    """The chosen re-split of each view refitted on the raw rows (audio, visual, labels) of the
    whole training data at the chosen C; None for a view where it is off (or no choice)."""
    if choice is None:
        return None, None
    return tuple(PairSplit(choice.pairs[s], split_models(x, labels, choice.pairs[s],
                                                         choice.strength),
                           num_classes, choice.temps[s])
                 if choice.pairs[s] and choice.temps[s] > 0 else None
                 for s, x in ((0, audio), (1, visual)))
