"""The closed-form (cluster-)CCA stage: the linear methods cca / c-cca, and the input stages
of the TNN pipelines and the deep / kernel baselines.

`input_maps` fits the affine input stages on in-memory `Pairs` (standardisation, then
optionally the (cluster-)CCA projection); `input_maps_from_stats` the same from summed
statistics (one distributed pass, `tnn.ray.prepare`); `fit_linear` is cca (beta = 1) or
c-cca (beta < 1) as an `Encoder`.
"""

from __future__ import annotations

import dataclasses
import numpy as np
import torch
from torch import nn

from tnn.core.cca import CCAStats, fit_cca, standardized_stats
from tnn.core.encoder import Affine, Encoder, standardizer
from tnn.data.pairs import Pairs


@dataclasses.dataclass(frozen=True)
class CCAConfig:
    """Closed-form (cluster-)CCA: the first stage, and the linear baselines."""

    dim: int | None = None
    """Output dimension k; None = min(classes - 1, audio width, visual width), the largest
    that pure cluster-CCA supports (9 for 10 classes, the paper's 'k = number of classes' less
    the one direction that class means cannot span)."""
    ridge: float = 1e-3
    """Ridge r added to both within-view covariances (features are standardised first)."""
    beta: float = 0.2
    """Blend of pairwise (beta) and cluster (1 - beta) cross-covariance; 0.2 is the authors'."""
    standardize: bool = True
    """z-score each feature on the training part before fitting."""
    scale_by_corr: bool = False
    """Multiply each component by its canonical correlation."""


def cca_dim(cca: CCAConfig, num_classes: int, audio_dim: int, visual_dim: int) -> int:
    """The CCA dimension k: the configured one, or the default of `CCAConfig.dim`."""
    return cca.dim if cca.dim is not None else max(1, min(num_classes - 1, audio_dim, visual_dim))


def input_maps(fit: Pairs, cca: CCAConfig, project: bool, beta: float | None = None):
    """Affine input stages for both views: standardisation, then (if `project`) CCA."""
    a_std, v_std = standardizer(fit.audio, cca.standardize), standardizer(fit.visual, cca.standardize)
    if not project:
        return a_std, v_std
    with torch.no_grad():
        za, zv = a_std(torch.from_numpy(fit.audio)).double(), v_std(torch.from_numpy(fit.visual)).double()
    stats = CCAStats.from_arrays(za.numpy(), zv.numpy(), fit.labels, fit.num_classes)
    k = cca_dim(cca, fit.num_classes, fit.audio.shape[1], fit.visual.shape[1])
    proj = fit_cca(stats, k, ridge=cca.ridge, beta=cca.beta if beta is None else beta,
                   scale_by_corr=cca.scale_by_corr)
    return (nn.Sequential(a_std, Affine(proj.mean_x, proj.A)),
            nn.Sequential(v_std, Affine(proj.mean_y, proj.B)))


def input_maps_from_stats(stats: CCAStats, cca: CCAConfig, num_classes: int,
                          project: bool) -> tuple[nn.Module, nn.Module]:
    """`input_maps` from summed statistics (one distributed pass: `tnn.ray.prepare`): the
    standardiser, then (if `project`: the two-stage pipeline) the cluster-CCA projection fitted
    on the standardised statistics (`tnn.core.cca.standardized_stats`)."""
    (mx, sx), (my, sy), z = standardized_stats(stats, scale=cca.standardize)
    a_std, v_std = Affine(mx, np.diag(sx)), Affine(my, np.diag(sy))
    if not project:
        return a_std, v_std
    k = cca_dim(cca, num_classes, len(mx), len(my))
    proj = fit_cca(z, k, ridge=cca.ridge, beta=cca.beta, scale_by_corr=cca.scale_by_corr)
    return (nn.Sequential(a_std, Affine(proj.mean_x, proj.A)),
            nn.Sequential(v_std, Affine(proj.mean_y, proj.B)))


def fit_linear(train: Pairs, cca: CCAConfig, beta: float) -> Encoder:
    """Linear CCA (beta = 1) or cluster-CCA (beta < 1) as an `Encoder`."""
    a_in, v_in = input_maps(train, cca, project=True, beta=beta)
    return Encoder(a_in, v_in)
