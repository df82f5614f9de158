"""Label-space readout of tnn-label (`tnn.methods.label`): class posteriors as retrieval embeddings.

A posterior p (C,) over the classes is embedded as a unit row, differently on the two sides:

    audio side:   e_a = [p_a, sqrt(1 - |p_a|^2), 0]
    visual side:  e_v = [p_v, 0, sqrt(1 - |p_v|^2)]

so |e| = 1 and, across the sides, cos(e_a, e_v) = e_a . e_v = p_a . p_v = sum_c p_a(c) p_v(c),
the probability that the two items share a class when the two views are independent given it
(`pad_posterior`). Ranking by cosine is ranking by that probability.

Posteriors are mixed, p = sum_i w_i p_i (`MixPad`), among them:
- p_deep  = softmax(s * z @ normalize(P).T), z the network's unit embedding, P its class
  proxies, s the inverse temperature (`DeepProbs`);
- p_kernel = softmax(t * normalize(k(x)) @ normalize(M).T), k(x) the cluster-KCCA embedding and
  M the class centroids of both views' unit embeddings of the training rows (`KernelProbs`).

(and the kernel ridge classifier's of `tnn.methods.krr`). s, t and the weights w are picked on
a validation split (`pick_scale`; `pick_weights` over `weight_grid`, or `pick_mix` for two): the
value with the highest mean of a->v and v->a MAP, the first one on ties. The mixture may then
be refined per view by a pairwise re-split of its most confused classes (`MixPad.split`,
`tnn.methods.pairsplit`).
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tnn.core.metrics import cross_modal_scores
from tnn.data.pairs import Pairs
from tnn.methods.kcca import KCCAConfig, fit_kcca
from tnn.methods.linear import CCAConfig

Log = Callable[[str], None]


def pad_posterior(p: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C) probabilities -> unit rows [p, r, 0] (side 0, audio) or [p, 0, r] (side 1,
    visual), r = sqrt(1 - |p|^2): across the two sides the dot product is p_a . p_v."""
    rest = (1 - (p * p).sum(1, keepdim=True)).clamp_min(0).sqrt()
    zero = torch.zeros_like(rest)
    return torch.cat([p, rest, zero] if side == 0 else [p, zero, rest], dim=1)


class DeepProbs(nn.Module):
    """x -> softmax(scale * branch(stage(x)) @ normalize(proxies).T), (B, C); the branch's
    output rows are unit vectors, so the logits are scaled cosines to the class proxies."""

    def __init__(self, stage: nn.Module, branch: nn.Module, proxies: torch.Tensor,
                 scale: float) -> None:
        super().__init__()
        self.stage, self.branch, self.scale = stage, branch, scale
        self.register_buffer("proxies", F.normalize(proxies.detach(), dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scale * self.branch(self.stage(x)) @ self.proxies.T, dim=1)


class KernelProbs(nn.Module):
    """x -> softmax(scale * normalize(path(x)) @ normalize(centroids).T), (B, C): the
    cluster-KCCA embedding read out against the class centroids."""

    def __init__(self, path: nn.Module, centroids: np.ndarray, scale: float) -> None:
        super().__init__()
        self.path, self.scale = path, scale
        self.register_buffer("centroids",
                             F.normalize(torch.as_tensor(centroids, dtype=torch.float32), dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scale * F.normalize(self.path(x), dim=1) @ self.centroids.T, dim=1)


class MixPad(nn.Module):
    """x -> pad_posterior(sum_i w_i p_i(x), side): the mixed posterior as a unit row whose
    cosine with the other side's is P(same class). Components with w_i = 0 are dropped here
    (never evaluated nor saved); the other weights are the buffer `mix` (C,), so the state_dict
    holds them and an exported program reads them like any other constant. `split` (optional,
    `tnn.methods.pairsplit.PairSplit`) refines the mixed posterior, (p, x) -> p, before the
    padding."""

    def __init__(self, probs: Sequence[nn.Module], weights: Sequence[float], side: int,
                 split: nn.Module | None = None) -> None:
        super().__init__()
        self.split = split
        if len(probs) != len(weights) or not any(w > 0 for w in weights):
            raise ValueError(f"MixPad needs one weight per component and one > 0, got "
                             f"{len(probs)} components and weights {list(weights)}")
        keep = [i for i, w in enumerate(weights) if w > 0]
        self.probs, self.side = nn.ModuleList([probs[i] for i in keep]), side
        self.register_buffer("mix", torch.tensor([float(weights[i]) for i in keep]))

    @property
    def weights(self) -> list[float]:
        """The kept components' weights, as floats."""
        return self.mix.tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = sum(self.mix[i].to(x.dtype) * m(x) for i, m in enumerate(self.probs))
        if self.split is not None:
            p = self.split(p, x)
        return pad_posterior(p, self.side)


def map_of(a_emb: np.ndarray, v_emb: np.ndarray, labels: np.ndarray) -> float:
    """Mean of a->v and v->a MAP of two embeddings compared by cosine."""
    s = cross_modal_scores(a_emb, v_emb, labels)
    return 0.5 * (s["a2v_map"] + s["v2a_map"])


def posterior_map(pa: np.ndarray, pv: np.ndarray, labels: np.ndarray) -> float:
    """`map_of` the padded posteriors: ranking by p_a . p_v."""
    pad = lambda p, side: pad_posterior(torch.from_numpy(p), side).numpy()  # noqa: E731
    return map_of(pad(pa, 0), pad(pv, 1), labels)


@torch.no_grad()
def probs_of(mod: nn.Module, x: np.ndarray) -> np.ndarray:
    """`mod` (in eval mode) on the rows of `x`."""
    mod.eval()
    return mod(torch.from_numpy(x)).numpy()


@torch.no_grad()
def path_embed(path: nn.Module, x: np.ndarray) -> np.ndarray:
    """Unit rows normalize(path(x)) (the plain cluster-KCCA embedding)."""
    path.eval()
    return F.normalize(path(torch.from_numpy(x)), dim=1).numpy()


def kernel_probs(train: Pairs, kcfg: KCCAConfig, cca: CCAConfig,
                 log: Log) -> tuple[KernelProbs, KernelProbs]:
    """Cluster-KCCA (beta = cca.beta) fitted on `train` and its class centroids
    M_c = mean of the unit embeddings of class c's rows of both views; returns the (audio,
    visual) `KernelProbs` at scale 1 (`pick_scale` sets it)."""
    ck = fit_kcca(train, kcfg, cca, cca.beta, log)
    za, zv = ck.embed_audio(train.audio), ck.embed_visual(train.visual)
    cent = np.stack([np.r_[za[train.labels == c], zv[train.labels == c]].mean(0)
                     for c in range(train.num_classes)])
    return KernelProbs(ck.audio_in, cent, 1.0), KernelProbs(ck.visual_in, cent, 1.0)


def pick_scale(a_mod: nn.Module, v_mod: nn.Module, scales: Sequence[float], val: Pairs,
               what: str, log: Log) -> float:
    """argmax over `scales` of the validation `posterior_map` (first on ties); sets both
    modules' `.scale` to it and returns it."""
    scores = {}
    for s in scales:
        a_mod.scale = v_mod.scale = s
        scores[s] = posterior_map(probs_of(a_mod, val.audio), probs_of(v_mod, val.visual),
                                  val.labels)
    best = max(scores, key=scores.get)
    a_mod.scale = v_mod.scale = best
    log(f"  {what} scale val MAP " + " ".join(f"{k:g}:{v:.4f}" for k, v in scores.items()))
    return best


def pick_mix(deep: tuple[np.ndarray, np.ndarray], kernel: tuple[np.ndarray, np.ndarray],
             labels: np.ndarray, grid: Sequence[float], log: Log) -> tuple[float, float]:
    """argmax over w in `grid` of the validation `posterior_map` of w p_deep + (1 - w) p_kernel
    (first on ties): (w, its validation MAP). deep/kernel: (audio, visual) posteriors."""
    scores = {w: posterior_map(w * deep[0] + (1 - w) * kernel[0],
                               w * deep[1] + (1 - w) * kernel[1], labels) for w in grid}
    w = max(scores, key=scores.get)
    log("  mix val MAP " + " ".join(f"{k:g}:{v:.4f}" for k, v in scores.items()))
    return w, scores[w]


def weight_grid(levels: Sequence[float], n: int) -> list[tuple[float, ...]]:
    """The weight tuples tried for n components: with one, (1,); with two, (w, 1 - w) for each
    w in `levels` (`pick_mix`'s grid); with more, every tuple of levels (0 always allowed) that
    sums to 1 (to 1e-9), in lexicographic order of the sorted levels."""
    if n == 1:
        return [(1.0,)]
    if n == 2:
        return [(w, 1 - w) for w in levels]
    lv = sorted(set(levels) | {0.0})
    return [w for w in itertools.product(lv, repeat=n) if abs(sum(w) - 1) < 1e-9]


def pick_weights(probs: Sequence[tuple[np.ndarray, np.ndarray]], labels: np.ndarray,
                 levels: Sequence[float], names: Sequence[str], log: Log) -> tuple[tuple, float]:
    """argmax over `weight_grid(levels, len(probs))` of the validation `posterior_map` of the
    mixture sum_i w_i p_i (first on ties): (weights, its validation MAP). probs: per component
    its (audio, visual) posteriors on the validation rows. With two components it is `pick_mix`
    (same scores, same log line)."""
    if len(probs) == 2:
        w, score = pick_mix(probs[0], probs[1], labels, levels, log)
        return (w, 1 - w), score

    def mixed(w, side):
        return sum(wi * p[side] for wi, p in zip(w, probs) if wi > 0)
    scores = {w: posterior_map(mixed(w, 0), mixed(w, 1), labels)
              for w in weight_grid(levels, len(probs))}
    w = max(scores, key=scores.get)
    log(f"  mix val MAP ({'/'.join(names)}) "
        + " ".join(f"{'/'.join(f'{x:g}' for x in k)}:{v:.4f}" for k, v in scores.items()))
    return w, scores[w]
