"""Differentiable (cluster-)CCA correlation loss of one batch.

Built from the same statistics and blocks as the closed form (`tnn.core.cca.covariance_blocks`),
so the loss of a batch equals -(sum of the top-k corrs) of `tnn.core.cca.fit_cca` on that batch.
beta = 1 is the DCCA objective (Andrew et al., "Deep Canonical Correlation Analysis", ICML
2013); beta < 1 adds the cluster cross-covariance of Rasiwasia et al. (AISTATS 2014), as in the
authors' C-DCCA baseline.
"""
from __future__ import annotations

import torch

from tnn.core.cca import CCAStats, covariance_blocks
from tnn.core.cca_checks import COVARIANCES
from tnn.errors import ConfigError, DataError


def batch_stats(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, num_classes: int,
                per_class_moments: bool = False) -> CCAStats:
    """`CCAStats` of one batch as tensors: x (B, Dx), y (B, Dy), labels (B,) in [0, C)."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).to(x.dtype)  # (B, C)
    cxx = cyy = None
    if per_class_moments:
        cxx = torch.einsum("bc,bi,bj->cij", onehot, x, x)
        cyy = torch.einsum("bc,bi,bj->cij", onehot, y, y)
    return CCAStats(x.shape[0], x.sum(0), y.sum(0), x.T @ x, y.T @ y, x.T @ y,
                    onehot.sum(0), onehot.T @ x, onehot.T @ y, cxx, cyy)


def whitened_cross(s11: torch.Tensor, s22: torch.Tensor, s12: torch.Tensor) -> torch.Tensor:
    """T = L1^-1 S12 L2^-T with S = L L' (Cholesky). Same singular values as
    S11^-1/2 S12 S22^-1/2, but its gradient has no 1/(l_i - l_j) terms, unlike eigh's."""
    l1, l2 = torch.linalg.cholesky(s11), torch.linalg.cholesky(s22)
    t = torch.linalg.solve_triangular(l1, s12, upper=False)
    return torch.linalg.solve_triangular(l2, t.T, upper=False).T


def cluster_cca_loss(x_emb: torch.Tensor, x_labels: torch.Tensor, y_emb: torch.Tensor,
                     y_labels: torch.Tensor | None = None, *, k: int, ridge: float = 1e-4,
                     beta: float = 0.2, num_classes: int | None = None,
                     covariance: str = "plain") -> torch.Tensor:
    """-(sum of the top-k canonical correlations) of the blended S12; minimum -k.

    x_emb (B, Dx) audio and y_emb (B, Dy) visual embeddings of paired rows; x_labels (B,) int.
    y_labels, if given, must equal x_labels (one label per clip). num_classes=None takes the
    classes present in the batch. S11, S22, S12 as in `tnn.core.cca.covariance_blocks`; the
    correlations are the singular values of T = S11^-1/2 S12 S22^-1/2.

    Computed in float64 (the matrices are only D x D) and returned in x_emb's dtype. Gradient:
    d(sum s_i)/dT = U_k V_k', finite even for repeated or zero singular values (e.g. beta = 0
    and a batch lacking classes), where it is a subgradient. Singleton classes are allowed here.
    """
    labels, num_classes = _batch_labels(x_emb, x_labels, y_emb, y_labels, num_classes)
    _check_config(k, ridge, beta, covariance, x_emb.shape[1], y_emb.shape[1], num_classes)
    x, y = _centred64(x_emb), _centred64(y_emb)
    stats = batch_stats(x, y, labels, num_classes, per_class_moments=covariance == "pairs")
    _, _, s11, s22, s12 = covariance_blocks(stats, beta=beta, ridge=ridge, covariance=covariance)
    try:
        t = whitened_cross(s11, s22, s12)
    except torch.linalg.LinAlgError as err:
        raise DataError(f"batch covariance is singular (batch {x_emb.shape[0]}, dims "
                        f"{x_emb.shape[1]}/{y_emb.shape[1]}, ridge={ridge}): use ridge > 0") from err
    return -torch.linalg.svdvals(t)[:k].sum().to(x_emb.dtype)


def dcca_loss(x_emb: torch.Tensor, y_emb: torch.Tensor, *, k: int,
              ridge: float = 1e-4) -> torch.Tensor:
    """Plain CCA loss (beta = 1), the DCCA objective: -(sum of top-k corrs of x_emb, y_emb)."""
    labels = torch.zeros(x_emb.shape[0], dtype=torch.long, device=x_emb.device)
    return cluster_cca_loss(x_emb, labels, y_emb, k=k, ridge=ridge, beta=1.0, num_classes=1)


def _centred64(a: torch.Tensor) -> torch.Tensor:
    # The blocks are shift invariant; centring first avoids cancellation in X'X - m mx mx'.
    a = a.to(torch.float64)
    return a - a.mean(0).detach()


def _batch_labels(x_emb, x_labels, y_emb, y_labels, num_classes):
    if x_emb.ndim != 2 or y_emb.ndim != 2 or x_emb.shape[0] != y_emb.shape[0]:
        raise DataError(f"x_emb {tuple(x_emb.shape)} and y_emb {tuple(y_emb.shape)} must be "
                        "(B, D) matrices with paired rows")
    if x_labels.shape != (x_emb.shape[0],):
        raise DataError(f"x_labels have shape {tuple(x_labels.shape)}, expected ({x_emb.shape[0]},)")
    if y_labels is not None and (y_labels.shape != x_labels.shape
                                 or not torch.equal(y_labels, x_labels)):
        raise DataError("y_labels differ from x_labels; rows are paired clips with one label each")
    if x_emb.shape[0] < 2:
        raise DataError(f"CCA loss needs a batch of at least 2 rows, got {x_emb.shape[0]}")
    if num_classes is None:
        classes, labels = torch.unique(x_labels, return_inverse=True)
        return labels, classes.numel()
    return x_labels.long(), num_classes


def _check_config(k, ridge, beta, covariance, dx, dy, num_classes):
    if covariance not in COVARIANCES:
        raise ConfigError(f"covariance={covariance!r} is not one of {COVARIANCES}")
    if covariance == "pairs" and beta != 0:
        raise ConfigError(f"covariance='pairs' needs beta=0, got beta={beta}")
    if not ridge >= 0 or not 0 <= beta <= 1:
        raise ConfigError(f"need ridge >= 0 and beta in [0, 1], got ridge={ridge}, beta={beta}")
    bound, why = min(dx, dy), f"min(Dx={dx}, Dy={dy})"
    if beta == 0 and num_classes - 1 < bound:
        bound, why = num_classes - 1, f"min(Dx={dx}, Dy={dy}, classes-1={num_classes - 1})"
    if not 1 <= k <= bound:
        raise ConfigError(f"k={k} must be in [1, {why}]" + (
            ": with beta=0 the cross-covariance of class means has rank <= classes-1"
            if beta == 0 else ""))
