"""Pairwise distances between query rows and reference rows: the one distance module of tnn.

Sign convention: every function here returns a DISTANCE, smaller = more alike. Losses use
``d(a, p) - d(a, n) + margin``; retrieval ranks by similarity, i.e. ascending distance.

Kinds, for ``x`` of shape (N, D) and ``y`` of shape (M, D), result (N, M):
- ``"sqeuclidean"`` (the paper's loss): ``d(x_i, y_j) = |x_i - y_j|^2``, computed as
  ``|x_i|^2 + |y_j|^2 - 2 x_i.y_j`` so no (N, M, D) tensor is built, then clamped at 0 against
  round-off. No square root, so the gradient
  ``2 (x_i - y_j)`` is finite everywhere (the clamp zeroes it where round-off went negative).
- ``"cosine"``: ``d(x_i, y_j) = 1 - cos(x_i, y_j)`` in [0, 2]. Row norms are clamped at ``eps``:
  a zero row is at distance 1 from everything, with a finite gradient.
For both kinds, when ``y is x`` the diagonal is exactly 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tnn.errors import ConfigError, DataError

KINDS = ("sqeuclidean", "cosine")


def check_kind(kind: str) -> str:
    """Return ``kind`` or raise ConfigError naming the allowed values."""
    if kind not in KINDS:
        raise ConfigError(f"unknown distance {kind!r}; expected one of {KINDS}")
    return kind


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, kind: str = "sqeuclidean",
                      eps: float = 1e-12) -> torch.Tensor:
    """Distances between every row of ``x`` (N, D) and every row of ``y`` (M, D) -> (N, M)."""
    return _pairwise(x, y, check_kind(kind), eps, diag_offset=0 if y is x else None)


def pairwise_distance_chunked(x: torch.Tensor, y: torch.Tensor, kind: str = "sqeuclidean",
                              chunk_size: int = 1024, eps: float = 1e-12) -> torch.Tensor:
    """`pairwise_distance` (same values and gradients), ``chunk_size`` rows of x at a time.

    Bounds the temporaries of the normalisation and matmul; the (N, M) result is still built.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    check_kind(kind)
    same = y is x
    parts = [_pairwise(x[s:s + chunk_size], y, kind, eps, diag_offset=s if same else None)
             for s in range(0, x.shape[0], chunk_size)]
    return torch.cat(parts, dim=0) if parts else x.new_zeros((0, y.shape[0]))


def _pairwise(x: torch.Tensor, y: torch.Tensor, kind: str, eps: float,
              diag_offset: int | None) -> torch.Tensor:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DataError(f"expected x (N, D) and y (M, D), got {tuple(x.shape)}, {tuple(y.shape)}")
    if kind == "sqeuclidean":
        xx = x.pow(2).sum(dim=1, keepdim=True)  # (N, 1)
        yy = y.pow(2).sum(dim=1).unsqueeze(0)  # (1, M)
        dist = (xx + yy - 2.0 * (x @ y.T)).clamp_min(0.0)  # (N, M)
    else:
        dist = 1.0 - F.normalize(x, dim=1, eps=eps) @ F.normalize(y, dim=1, eps=eps).T  # (N, M)
    if diag_offset is not None:
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (N, 1)
        cols = torch.arange(y.shape[0], device=x.device).unsqueeze(0)  # (1, M)
        dist = torch.where(cols == rows + diag_offset, torch.zeros_like(dist), dist)  # (N, M)
    return dist
