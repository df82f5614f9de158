"""Class-balanced K-fold assignment, deterministic from a seed.

Within each class the rows are shuffled by `default_rng([seed, class])` and dealt to folds
round-robin, starting where the previous class stopped, so every fold gets floor or ceil of
each class's share and the fold sizes differ by at most one overall.
"""

from __future__ import annotations

import numpy as np

from tnn.errors import ConfigError, DataError


def assign_folds(labels: np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """Return an int8 (N,) array of fold ids 0..k-1, class-balanced."""
    labels = np.asarray(labels)
    if not 2 <= k <= 127:
        raise ConfigError(f"folds: k must be in 2..127; got {k}")
    if len(labels) < k:
        raise DataError(f"folds: {len(labels)} rows cannot be split into {k} folds")
    folds = np.empty(len(labels), dtype=np.int8)
    offset = 0
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rows = rows[np.random.default_rng([seed, int(c)]).permutation(len(rows))]
        folds[rows] = (offset + np.arange(len(rows))) % k
        offset = (offset + len(rows)) % k
    return folds


def check_trainable(labels: np.ndarray, clip_ids: np.ndarray, class_names, name: str) -> None:
    """Refuse a data set to be trained and cross-validated on when a class has a single clip:
    it can never be a positive for another clip (its class has no other member in any fold),
    and cluster-CCA's class mean of one clip is that clip. Galleries to be embedded may hold
    singletons; this check belongs to training, not to the shard writer."""
    counts = np.bincount(labels, minlength=len(class_names))
    single = np.flatnonzero(counts == 1)
    if single.size:
        c = int(single[0])
        clip = str(clip_ids[np.flatnonzero(labels == c)[0]])
        raise DataError(f"{name}: class {str(class_names[c])!r} has a single clip ({clip!r}); "
                        "training needs at least 2 clips per class: add clips or drop the class")


def split(folds: np.ndarray, test_fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_index, test_index) for one fold as the test set."""
    test = folds == test_fold
    return np.flatnonzero(~test), np.flatnonzero(test)


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Carve a class-balanced validation part out of a training fold.

    Returns (fit_index, val_index) into `labels`. Every class keeps at least one row for
    fitting; a class with a single row goes entirely to fitting.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1); got {fraction}")
    rng = np.random.default_rng([seed, 7919])
    val = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        take = min(int(round(fraction * len(rows))), len(rows) - 1)
        val.append(rows[:take])
    val = np.sort(np.concatenate(val))
    mask = np.zeros(len(labels), dtype=bool)
    mask[val] = True
    return np.flatnonzero(~mask), val
