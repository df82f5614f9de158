"""The data split of a TNN run (`TrainJobConfig`), without Ray: which clips fit, validate, test.

The split is `fit_tnn`'s: the test fold, then a class-balanced validation split carved from the
training folds (`tnn.core.folds`). `split_in_memory` applies it to an in-memory source
(`tnn.tracking.evaluation` finds a run's test fold with it); `split_ids` to a shard set's index
(`tnn.data.reader.shard_index`), for `tnn.ray.prepare` to read the parts through Ray Data.
"""

from __future__ import annotations

import numpy as np

from tnn.core.folds import assign_folds, split, validation_split
from tnn.data.pairs import Pairs
from tnn.data.sources import load_source
from tnn.train.config import TrainJobConfig, network_config


def train_test(cfg: TrainJobConfig) -> tuple[Pairs, Pairs]:
    """(training folds, test fold) of an in-memory source, as `jobs.crossval` splits it: what
    a single-process fit (`fit_tnn`, `fit_label`) of the same run would be given."""
    pairs = load_source(cfg.data)
    if cfg.subset and cfg.subset < pairs.n:
        pairs = pairs.subset(validation_split(pairs.labels, cfg.subset / pairs.n, cfg.seed)[1])
    folds = pairs.folds if pairs.folds is not None and len(np.unique(pairs.folds)) == cfg.folds \
        else assign_folds(pairs.labels, cfg.folds, cfg.seed)
    tr, te = split(folds, cfg.test_fold)
    return pairs.subset(tr), pairs.subset(te)


def split_in_memory(cfg: TrainJobConfig) -> tuple[Pairs, Pairs, Pairs]:
    """(fit, val, test) exactly as `jobs.crossval` + `fit_tnn` (or `fit_label`) split an
    in-memory source."""
    train, test = train_test(cfg)
    t = network_config(cfg).tnn.train  # tnn-label: its own validation split
    fit_idx, val_idx = validation_split(train.labels, t.val_fraction, t.seed)
    return train.subset(fit_idx), train.subset(val_idx), test


def split_ids(cfg: TrainJobConfig, ids: np.ndarray, labels: np.ndarray,
              folds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fit, val, test) clip ids of a shard set's index (ids, labels, folds in manifest order):
    the split of `read_pairs` + `fit_tnn`, after the class-balanced `subset` if set."""
    if cfg.subset and cfg.subset < len(ids):
        keep = validation_split(labels, cfg.subset / len(ids), cfg.seed)[1]
        ids, labels, folds = ids[keep], labels[keep], folds[keep]
    tr, te = split(folds, cfg.test_fold)
    t = network_config(cfg).tnn.train  # tnn-label: its own validation split
    fit_idx, val_idx = validation_split(labels[tr], t.val_fraction, t.seed)
    return ids[tr][fit_idx], ids[tr][val_idx], ids[te]
