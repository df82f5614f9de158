"""Naive references for tnn.core.cca and tnn.core.cca_loss: direct formulas on data matrices,
explicit loops over classes and over same-class pairs, Cholesky whitening (tnn.core.cca whitens
with eigh)."""
import numpy as np


def solve_blocks(s11, s22, s12, k):
    """CCA from covariance blocks: T = L1^-1 S12 L2^-T (S = L L'), T = U D V',
    A = L1^-T U_k, B = L2^-T V_k. Returns (corrs (k,), A (Dx, k), B (Dy, k))."""
    l1, l2 = np.linalg.cholesky(s11), np.linalg.cholesky(s22)
    t = np.linalg.solve(l2, np.linalg.solve(l1, s12).T).T
    u, d, vt = np.linalg.svd(t)
    return d[:k], np.linalg.solve(l1.T, u[:, :k]), np.linalg.solve(l2.T, vt[:k].T)


def linear_cca(x, y, k, ridge=0.0):
    """Plain CCA: S11 = Xc'Xc/(m-1) + rI, S22 likewise, S12 = Xc'Yc/(m-1)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    m = x.shape[0]
    s11 = xc.T @ xc / (m - 1) + ridge * np.eye(x.shape[1])
    s22 = yc.T @ yc / (m - 1) + ridge * np.eye(y.shape[1])
    return solve_blocks(s11, s22, xc.T @ yc / (m - 1), k)


def same_class_pairs(x, y, labels):
    """Every cross-modal pair (x_i, y_j) with labels[i] == labels[j], by a double loop."""
    rows_x, rows_y = [], []
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            if labels[i] == labels[j]:
                rows_x.append(x[i])
                rows_y.append(y[j])
    return np.array(rows_x), np.array(rows_y)


def pair_cca(x, y, labels, k, ridge=0.0):
    """Rasiwasia's cluster-CCA: plain CCA of the enumerated same-class pairs."""
    px, py = same_class_pairs(x, y, labels)
    return linear_cca(px, py, k, ridge)


def blended_cca(x, y, labels, k, ridge, beta):
    """The authors' blend ("plain" covariances), class means by a loop over classes:
    S12 = beta Xc'Yc/(m-1) + (1-beta) sum_c n_c^2 mx_c my_c' / sum_c n_c^2."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    m = x.shape[0]
    cluster, weight = np.zeros((x.shape[1], y.shape[1])), 0.0
    for c in np.unique(labels):
        idx = labels == c
        n_c = idx.sum()
        cluster += n_c ** 2 * np.outer(xc[idx].mean(0), yc[idx].mean(0))
        weight += n_c ** 2
    s11 = xc.T @ xc / (m - 1) + ridge * np.eye(x.shape[1])
    s22 = yc.T @ yc / (m - 1) + ridge * np.eye(y.shape[1])
    s12 = beta * xc.T @ yc / (m - 1) + (1 - beta) * cluster / weight
    return solve_blocks(s11, s22, s12, k)


def align_signs(a, ref):
    """Flip each column of `a` to the sign that best matches the same column of `ref`."""
    return a * np.where((a * ref).sum(0) < 0, -1.0, 1.0)
