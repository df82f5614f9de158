"""Checks of closed-form CCA inputs and settings (`tnn.core.cca`): each raises `ConfigError`
(settings) or `DataError` (data) naming the setting, field or row at fault.
"""
from __future__ import annotations

from dataclasses import fields

import numpy as np

from tnn.errors import ConfigError, DataError

COVARIANCES = ("plain", "pairs")


def check_config(k, ridge, beta, covariance):
    """k a positive int, ridge >= 0, beta in [0, 1], a known covariance (pairs: beta = 0)."""
    if covariance not in COVARIANCES:
        raise ConfigError(f"covariance={covariance!r} is not one of {COVARIANCES}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k={k!r} must be a positive integer")
    if not (ridge >= 0 and 0 <= beta <= 1):
        raise ConfigError(f"need ridge >= 0 and beta in [0, 1], got ridge={ridge}, beta={beta}")
    if covariance == "pairs" and beta != 0:
        raise ConfigError(f"covariance='pairs' is the CCA of the same-class pair set and needs "
                          f"beta=0, got beta={beta}")


def check_stats(stats, k, beta, covariance):
    """Finite statistics of >= 2 rows that support k components under beta / covariance."""
    for f in fields(stats):
        value = getattr(stats, f.name)
        if value is not None and not np.all(np.isfinite(value)):
            raise DataError(f"CCA statistics field {f.name!r} contains NaN or inf")
    if stats.n < 2:
        raise DataError(f"CCA needs at least 2 rows, the statistics hold n={stats.n:g}")
    if covariance == "pairs" and stats.class_xx is None:
        raise ConfigError("covariance='pairs' needs per-class second moments: build the stats "
                          "with CCAStats.from_arrays(..., per_class_moments=True)")
    limits = {"Dx": stats.sum_x.shape[0], "Dy": stats.sum_y.shape[0]}
    if beta < 1:
        present = check_classes(stats.class_n, beta)
        if beta == 0:
            limits["classes-1"] = present - 1
    if k > min(limits.values()):
        why = ", ".join(f"{key}={value}" for key, value in limits.items())
        raise ConfigError(f"k={k} exceeds min({why})" + (
            ": with beta=0 the cross-covariance is built from the class means and has rank "
            "at most classes-1, so further components are arbitrary" if beta == 0 else ""))


def check_classes(class_n, beta) -> int:
    """Number of non-empty classes. Cluster modes need >= 2, none of them a singleton (its class
    mean is one sample, almost always a labelling error); empty classes (absent from a fold) are
    ignored."""
    present = np.flatnonzero(class_n > 0)
    if present.size < 2:
        raise DataError(f"cluster-CCA (beta={beta} < 1) needs at least 2 classes with items, "
                        f"got {present.size} (class_n={class_n.astype(int).tolist()})")
    single = np.flatnonzero(class_n == 1)
    if single.size:
        raise DataError(f"class {int(single[0])} has 1 item; cluster-CCA (beta={beta} < 1) "
                        "needs >= 2 items in every class present: drop or relabel it")
    return present.size


def check_labels(labels, m, num_classes):
    """(int64 labels (m,) in [0, num_classes), num_classes); None = one class."""
    if labels is None:
        return np.zeros(m, dtype=np.int64), num_classes or 1
    labels = np.asarray(labels)
    if labels.shape != (m,):
        raise DataError(f"labels have shape {labels.shape}, expected ({m},)")
    if m and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {labels.dtype}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if m else 1
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"label {labels[bad[0]]} at row {bad[0]} is outside [0, {num_classes})")
    return labels.astype(np.int64), num_classes


def float_arrays(cls, d: dict) -> dict:
    """float64 arrays of the dataclass fields in d; optional (None-default) fields may be absent."""
    missing = [f.name for f in fields(cls) if f.name not in d and f.default is not None]
    if missing:
        raise DataError(f"{cls.__name__} dict lacks keys {missing}")
    return {f.name: np.asarray(d[f.name], dtype=np.float64) for f in fields(cls) if f.name in d}


def as_matrix(a, name, dim=None) -> np.ndarray:
    """A finite float64 (rows, dim) matrix."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim):
        want = f"(rows, {dim})" if dim is not None else "(rows, dim)"
        raise DataError(f"{name} has shape {a.shape}, expected {want}")
    bad = np.flatnonzero(~np.isfinite(a).all(1))
    if bad.size:
        raise DataError(f"{name} contains NaN or inf at row {bad[0]}")
    return a
