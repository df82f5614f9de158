"""Class-balanced K-fold assignment and the validation split."""

import numpy as np
import pytest

from tnn.errors import ConfigError, DataError
from tnn.core.folds import assign_folds, split, validation_split


@pytest.mark.parametrize("k", [2, 5, 7])
def test_folds_are_class_balanced_and_deterministic(k):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=997)
    folds = assign_folds(labels, k, seed=3)
    assert folds.dtype == np.int8 and set(folds) == set(range(k))
    sizes = np.bincount(folds, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    for c in range(6):
        per_class = np.bincount(folds[labels == c], minlength=k)
        assert per_class.max() - per_class.min() <= 1
    assert np.array_equal(folds, assign_folds(labels, k, seed=3))
    assert not np.array_equal(folds, assign_folds(labels, k, seed=4))


def test_split_partitions_rows():
    folds = assign_folds(np.arange(50) % 5, 5, seed=0)
    train, test = split(folds, 2)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 50
    assert (folds[test] == 2).all()


def test_fold_errors():
    with pytest.raises(ConfigError, match="k must be in 2..127; got 1"):
        assign_folds(np.arange(10) % 2, 1)
    with pytest.raises(DataError, match="3 rows cannot be split into 5 folds"):
        assign_folds(np.array([0, 1, 0]), 5)


def test_validation_split_is_balanced_and_keeps_every_class():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 1)
    fit, val = validation_split(labels, 0.2, seed=0)
    assert np.bincount(labels[val], minlength=3).tolist() == [10, 6, 0]
    assert set(labels[fit]) == {0, 1, 2} and len(fit) + len(val) == len(labels)
    with pytest.raises(ConfigError, match=r"validation fraction must be in \(0, 1\); got 1.5"):
        validation_split(labels, 1.5, 0)
