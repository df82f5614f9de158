"""Exact regularised kernel (cluster-)CCA on full kernel matrices, the dual form of Hardoon,
Szedmak & Shawe-Taylor (Neural Comput. 16, 2004, sec. 3.3), by a non-symmetric eigenproblem.

max_{a,b} a'Kx Q Ky b / sqrt(a'(Kx^2 + kappa Kx)a . b'(Ky^2 + kappa Ky)b), Kx, Ky centred
(H K H), Q = beta I + (1 - beta)(n-1)/Np E, E_ij = 1[label_i == label_j], Np = sum_c n_c^2
(beta = 1: Hardoon's KCCA). Stationarity gives Q Ky b = rho (Kx + kappa I) a and
Q Kx a = rho (Ky + kappa I) b, so a is an eigenvector of
M = (Kx + kappa I)^-1 Q Ky (Ky + kappa I)^-1 Q Kx with eigenvalue rho^2.
kappa = ridge (n - 1) matches tnn.core.cca's S11 = Xc'Xc/(n-1) + ridge I in feature space; a is
normalised so that a'(Kx^2 + kappa Kx)a / (n-1) = 1 (unit-variance projections).
"""
import numpy as np


def rbf(gamma):
    def k(x, z):
        d2 = (x * x).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * x @ z.T
        return np.exp(-gamma * np.maximum(d2, 0.0))
    return k


def linear(x, z):
    return x @ z.T


def centred(k_train, k_test):
    """H K H and the test rows k(x_t, X) centred in the same feature space."""
    n = len(k_train)
    h = np.eye(n) - 1.0 / n
    kt = k_test - k_test.mean(1, keepdims=True) - k_train.mean(0)[None, :] + k_train.mean()
    return h @ k_train @ h, kt


def kcca(x, y, labels, k, ridge, beta, kx, ky, x_test, y_test):
    """Returns (corrs (k,), audio projections of x_test (t, k), visual of y_test (t, k))."""
    n = len(x)
    kxx, kxt = centred(kx(x, x), kx(x_test, x))
    kyy, kyt = centred(ky(y, y), ky(y_test, y))
    same = (labels[:, None] == labels[None, :]).astype(float)
    q = beta * np.eye(n) + (1 - beta) * (n - 1) / (np.bincount(labels) ** 2).sum() * same
    kappa = ridge * (n - 1)
    m = np.linalg.solve(kxx + kappa * np.eye(n), q @ kyy) @ np.linalg.solve(
        kyy + kappa * np.eye(n), q @ kxx)
    w, v = np.linalg.eig(m)
    order = np.argsort(-w.real)[:k]
    assert np.abs(w[order].imag).max() < 1e-8 * max(1.0, w.real.max())
    rho, a = np.sqrt(w[order].real), v[:, order].real
    a = a / np.sqrt(np.einsum("ik,ij,jk->k", a, kxx @ kxx + kappa * kxx, a) / (n - 1))
    b = np.linalg.solve(kyy + kappa * np.eye(n), q @ kxx @ a) / rho
    return rho, kxt @ a, kyt @ b
