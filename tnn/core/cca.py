"""Closed-form CCA and cluster-CCA from additive sufficient statistics.

Cluster-CCA (Rasiwasia et al., "Cluster Canonical Correlation Analysis", AISTATS 2014) is CCA on
all same-class cross-modal pairs (x_i, y_j), label_i == label_j. It needs only sums over rows:
`CCAStats` is accumulated per shard, added (`a + b`, `sum(parts)`, `merge`) and solved once.

Two covariance conventions (`covariance=`):
- "plain" (default, the authors' code): S11 = Xc'Xc/(m-1) + rI, S22 likewise,
  P = Xc'Yc/(m-1), C = sum_c n_c^2 mx_c my_c' / sum_c n_c^2, S12 = beta P + (1-beta) C.
- "pairs" (beta = 0 only): the exact CCA of the enumerated pair set. Every x_i is weighted by
  n_c(i), means and covariances are pair-weighted and normalised by Np - 1, Np = sum_c n_c^2.
  It needs per-class second moments (`per_class_moments=True`).
With balanced classes the two share canonical directions and corr_pairs = m/(m-1) corr_plain
when the "plain" ridge is r (Np-1) / (n_c (m-1)); with unbalanced classes they differ.
The checks of the inputs and settings (naming the field, row or setting at fault) are
`tnn.core.cca_checks`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from tnn.core.cca_checks import (
    as_matrix,
    check_config,
    check_labels,
    check_stats,
    float_arrays,
)
from tnn.errors import DataError
_EIG_FLOOR = 1e-12  # relative to the largest eigenvalue, guards S^-1/2 when ridge = 0


@dataclass
class CCAStats:
    """Additive statistics of paired rows x (m, Dx), y (m, Dy) with labels (m,) in [0, C).

    n: m; sum_x (Dx,); sum_y (Dy,); xx = X'X (Dx, Dx); yy = Y'Y (Dy, Dy); xy = X'Y (Dx, Dy);
    class_n (C,); class_sum_x (C, Dx); class_sum_y (C, Dy); optional class_xx = X_c'X_c
    (C, Dx, Dx) and class_yy (C, Dy, Dy), needed only by covariance="pairs": they cost
    8 C (Dx^2 + Dy^2) bytes, e.g. 84 MB for C = 10, Dy = 1024. Fields are raw (uncentred)
    float64 numpy arrays; the torch loss fills the same fields with tensors.
    """

    n: float
    sum_x: np.ndarray
    sum_y: np.ndarray
    xx: np.ndarray
    yy: np.ndarray
    xy: np.ndarray
    class_n: np.ndarray
    class_sum_x: np.ndarray
    class_sum_y: np.ndarray
    class_xx: np.ndarray | None = None
    class_yy: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, x, y, labels=None, num_classes=None, *, per_class_moments=False):
        """Statistics of one shard. labels=None puts every row in class 0 (plain CCA only).

        Pass the global `num_classes` when shards are added later, so their shapes agree.
        """
        x, y = as_matrix(x, "x"), as_matrix(y, "y")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; rows must be paired")
        labels, num_classes = check_labels(labels, x.shape[0], num_classes)
        onehot = np.zeros((x.shape[0], num_classes))
        onehot[np.arange(x.shape[0]), labels] = 1.0
        cxx = cyy = None
        if per_class_moments:
            cxx = np.stack([x[labels == c].T @ x[labels == c] for c in range(num_classes)])
            cyy = np.stack([y[labels == c].T @ y[labels == c] for c in range(num_classes)])
        return cls(float(x.shape[0]), x.sum(0), y.sum(0), x.T @ x, y.T @ y, x.T @ y,
                   onehot.sum(0), onehot.T @ x, onehot.T @ y, cxx, cyy)

    def __add__(self, other):
        if isinstance(other, int) and other == 0:
            return self
        if not isinstance(other, CCAStats):
            return NotImplemented
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if (a is None) != (b is None):
                raise DataError(f"cannot add stats with and without {f.name}: build every "
                                "shard with the same per_class_moments")
            if a is not None and np.shape(a) != np.shape(b):
                raise DataError(f"cannot add stats: {f.name} has shape {tuple(np.shape(a))} vs "
                                f"{tuple(np.shape(b))} (same num_classes and dims on every shard?)")
            out[f.name] = None if a is None else a + b
        return CCAStats(**out)

    __radd__ = __add__

    @classmethod
    def merge(cls, parts):
        """Sum of a non-empty sequence of shard statistics."""
        parts = list(parts)
        if not parts:
            raise DataError("CCAStats.merge got no shards")
        return sum(parts[1:], parts[0])

    def to_dict(self) -> dict:
        """Plain numpy arrays (class_xx/class_yy only when present), e.g. for Ray."""
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "CCAStats":
        kw = float_arrays(cls, d)
        return cls(**{**kw, "n": float(kw["n"])})


@dataclass
class CCAProjection:
    """Fitted projection: audio (x - mean_x) @ A (Dx, k), visual (y - mean_y) @ B (Dy, k).

    corrs (k,) are the canonical correlations, descending.
    """

    mean_x: np.ndarray
    mean_y: np.ndarray
    A: np.ndarray
    B: np.ndarray
    corrs: np.ndarray

    def transform_audio(self, x) -> np.ndarray:
        return (as_matrix(x, "audio", self.mean_x.shape[0]) - self.mean_x) @ self.A

    def transform_visual(self, y) -> np.ndarray:
        return (as_matrix(y, "visual", self.mean_y.shape[0]) - self.mean_y) @ self.B

    def to_dict(self) -> dict:
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "CCAProjection":
        return cls(**float_arrays(cls, d))


def covariance_blocks(stats: CCAStats, *, beta: float, ridge: float, covariance: str = "plain"):
    """(mean_x, mean_y, S11, S22, S12) from statistics; works on numpy arrays and torch tensors.

    "plain": S11 = (X'X - m mx mx')/(m-1) + rI, P = (X'Y - m mx my')/(m-1),
    C = sum_c (Sx_c - n_c mx)(Sy_c - n_c my)' / sum_c n_c^2  (= sum_c n_c^2 mx_c my_c' / Np),
    S12 = beta P + (1-beta) C. "pairs": see module docstring (beta is ignored, must be 0).
    """
    if covariance == "pairs":
        return _pair_blocks(stats, ridge)
    n = stats.n
    mx, my = stats.sum_x / n, stats.sum_y / n
    s11 = (stats.xx - n * _outer(mx, mx)) / (n - 1) + ridge * _eye(stats.xx)
    s22 = (stats.yy - n * _outer(my, my)) / (n - 1) + ridge * _eye(stats.yy)
    pairwise = (stats.xy - n * _outer(mx, my)) / (n - 1)
    cx = stats.class_sum_x - stats.class_n[:, None] * mx[None, :]  # (C, Dx): n_c mx_c
    cy = stats.class_sum_y - stats.class_n[:, None] * my[None, :]
    cluster = cx.T @ cy / (stats.class_n ** 2).sum()
    return mx, my, s11, s22, beta * pairwise + (1 - beta) * cluster


def _pair_blocks(stats: CCAStats, ridge: float):
    """Moments of the enumerated pairs: sum over pairs of x_i x_i' = sum_c n_c X_c'X_c."""
    w = stats.class_n
    npairs = (w ** 2).sum()
    mx, my = w @ stats.class_sum_x / npairs, w @ stats.class_sum_y / npairs
    pxx = (w[:, None, None] * stats.class_xx).sum(0)
    pyy = (w[:, None, None] * stats.class_yy).sum(0)
    s11 = (pxx - npairs * _outer(mx, mx)) / (npairs - 1) + ridge * _eye(pxx)
    s22 = (pyy - npairs * _outer(my, my)) / (npairs - 1) + ridge * _eye(pyy)
    s12 = (stats.class_sum_x.T @ stats.class_sum_y - npairs * _outer(mx, my)) / (npairs - 1)
    return mx, my, s11, s22, s12


def inv_sqrt(s: np.ndarray) -> np.ndarray:
    """S^-1/2 = V diag(w^-1/2) V' of a symmetric matrix, eigenvalues clipped at a small floor."""
    w, v = np.linalg.eigh(s)
    w = np.maximum(w, _EIG_FLOOR * max(w[-1], np.finfo(float).tiny))
    return (v * w ** -0.5) @ v.T


def fit_cca(stats: CCAStats, k: int, ridge: float = 1e-4, beta: float = 0.2,
            scale_by_corr: bool = False, covariance: str = "plain") -> CCAProjection:
    """Solve (cluster-)CCA: T = S11^-1/2 S12 S22^-1/2 = U D V', A = S11^-1/2 U_k, B = S22^-1/2 V_k.

    beta = 1 is plain CCA, beta = 0 Rasiwasia's cluster-CCA, 0.2 the authors' blend.
    scale_by_corr multiplies component i by corrs[i]. Float64 numpy throughout.
    """
    check_config(k, ridge, beta, covariance)
    check_stats(stats, k, beta, covariance)
    mx, my, s11, s22, s12 = covariance_blocks(stats, beta=beta, ridge=ridge, covariance=covariance)
    w1, w2 = inv_sqrt(s11), inv_sqrt(s22)
    u, d, vt = np.linalg.svd(w1 @ s12 @ w2)
    a, b = w1 @ u[:, :k], w2 @ vt[:k].T
    # Fix the SVD's joint sign freedom: the largest |entry| of each column of A is positive.
    sign = np.where(a[np.abs(a).argmax(0), np.arange(k)] < 0, -1.0, 1.0)
    a, b, corrs = a * sign, b * sign, d[:k].copy()
    if scale_by_corr:
        a, b = a * corrs, b * corrs
    return CCAProjection(np.asarray(mx), np.asarray(my), a, b, corrs)


def fit_cluster_cca(stats: CCAStats, k: int, ridge: float = 1e-4, beta: float = 0.2, **kw):
    """Cluster-CCA, the authors' blend beta = 0.2 by default (beta = 0: Rasiwasia's)."""
    return fit_cca(stats, k, ridge=ridge, beta=beta, **kw)


def fit_linear_cca(stats: CCAStats, k: int, ridge: float = 1e-4, **kw) -> CCAProjection:
    """Plain CCA (beta = 1); labels are ignored."""
    return fit_cca(stats, k, ridge=ridge, beta=1.0, **kw)


def standardized_stats(stats: CCAStats, scale: bool = True, eps: float = 1e-6):
    """Means m, scales s and the statistics of the rows z = (x - m) s, all from raw `stats`.

    m = sum_x / n, s = 1 / (population std), constant features 1 (`tnn.core.encoder.standardizer`;
    scale=False: s = 1). With sum_x = n m: Z'Z = S (X'X - n m m') S, Z'W = S (X'Y - n m m_y')
    S_y, sum_z = (sum_x - n m) s (zero up to rounding), class sums (Sx_c - n_c m) s. Float64.
    """
    n = stats.n
    mx, my = stats.sum_x / n, stats.sum_y / n

    def inv_std(sq, m):
        std = np.sqrt(np.maximum(np.diag(sq) / n - m * m, 0.0))
        return 1.0 / np.where(std > eps, std, 1.0) if scale else np.ones_like(m)

    sx, sy = inv_std(stats.xx, mx), inv_std(stats.yy, my)
    cov = lambda xy, a, b, sa, sb: sa[:, None] * (xy - n * np.outer(a, b)) * sb  # noqa: E731
    z = CCAStats(n, (stats.sum_x - n * mx) * sx, (stats.sum_y - n * my) * sy,
                 cov(stats.xx, mx, mx, sx, sx), cov(stats.yy, my, my, sy, sy),
                 cov(stats.xy, mx, my, sx, sy), stats.class_n,
                 (stats.class_sum_x - stats.class_n[:, None] * mx) * sx,
                 (stats.class_sum_y - stats.class_n[:, None] * my) * sy)
    return (mx, sx), (my, sy), z


def _outer(a, b):
    return a[:, None] * b[None, :]


def _eye(like):
    if isinstance(like, np.ndarray):
        return np.eye(like.shape[0])
    import torch  # only reached with tensors, i.e. from tnn.core.cca_loss
    return torch.eye(like.shape[0], dtype=like.dtype, device=like.device)
