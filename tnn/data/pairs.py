"""`Pairs`, the in-memory paired data every source yields, and its checks.

`Pairs` holds row-aligned arrays: `audio` float32 (N, Da >= 1), `visual` float32 (N, Dv >= 1),
`labels` int64 (N,) in 0..C-1, `clip_ids` str (N,) unique, optional `folds` int8 (N,). `make_pairs`
builds one from array-likes, converting dtypes; `validate` (run on every construction)
raises `DataError` naming the source, array and row at fault. numpy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tnn.errors import DataError


@dataclasses.dataclass(frozen=True, eq=False)
class Pairs:
    """Paired clips: row i of `audio` and row i of `visual` are the same clip."""

    audio: np.ndarray  # (N, Da) float32
    visual: np.ndarray  # (N, Dv) float32
    labels: np.ndarray  # (N,) int64 in 0..C-1
    clip_ids: np.ndarray  # (N,) str, unique
    class_names: tuple[str, ...]
    name: str = "pairs"
    folds: np.ndarray | None = None  # (N,) int8 fold ids fixed at write time (shards), or None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray, name: str | None = None) -> "Pairs":
        """Rows `index` (a boolean mask or integer indices), classes unchanged."""
        folds = None if self.folds is None else self.folds[index]
        return Pairs(self.audio[index], self.visual[index], self.labels[index],
                     self.clip_ids[index], self.class_names, name or self.name, folds)


def make_pairs(audio, visual, labels, clip_ids=None, class_names=None, name="pairs",
               folds=None) -> Pairs:
    """Build `Pairs` from array-likes, converting dtypes and checking everything.

    Labels must be integer-valued and >= 0. Without `class_names` the classes are the distinct
    label values (their names), remapped to 0..C-1, so C is at most the number of rows: a
    label of 10**12 allocates nothing.
    """
    audio = _matrix(audio, "audio", name)
    visual = _matrix(visual, "visual", name)
    labels = _labels(labels, name)
    if clip_ids is None:
        clip_ids = np.array([f"{name}-{i:07d}" for i in range(len(labels))])
    clip_ids = _strings(clip_ids, "clip_ids", name)
    if class_names is None:
        values, labels = np.unique(labels, return_inverse=True)
        class_names = [str(v) for v in values]
    class_names = tuple(_strings(class_names, "class_names", name).tolist())
    folds = None if folds is None else np.asarray(folds, dtype=np.int8)
    return Pairs(audio, visual, labels.astype(np.int64), clip_ids, class_names, name, folds)


def _strings(x, what: str, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1 and x.size == 0:
        return x.astype(str)
    if x.ndim != 1 or x.dtype.kind not in "iuUS" or x.dtype.hasobject:
        raise DataError(f"{name}: '{what}' must be a 1-D array of strings or integers; got "
                        f"dtype {x.dtype}, shape {x.shape}")
    return x.astype(str)


def _matrix(x, what: str, name: str) -> np.ndarray:
    try:
        x = np.asarray(x)
    except ValueError as err:  # ragged nested lists
        raise DataError(f"{name}: '{what}' is ragged (rows of different lengths): {err}") from None
    if x.dtype == object:
        raise DataError(f"{name}: '{what}' is ragged or not numeric (dtype object)")
    if x.ndim != 2:
        raise DataError(f"{name}: '{what}' must be a 2-D matrix (N, D); got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name}: '{what}' must be real numbers; got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise DataError(f"{name}: '{what}' has no features (shape {x.shape}); each row needs "
                        "at least one")
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(labels, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{name}: 'labels' must be 1-D (N,); got shape {labels.shape}")
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels)) | (np.abs(labels) > 2**53)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{name}: 'labels' must be integers; row {i} is {labels[i].item()!r}")
    elif labels.dtype.kind not in "iub":
        raise DataError(f"{name}: 'labels' must be integers; got dtype {labels.dtype}")
    elif labels.dtype == np.uint64 and len(labels) and labels.max() > np.iinfo(np.int64).max:
        i = int(np.argmax(labels))
        raise DataError(f"{name}: 'labels' row {i} is {labels[i]}, above the int64 range")
    labels = labels.astype(np.int64)
    if len(labels) and labels.min() < 0:
        i = int(np.argmin(labels))
        raise DataError(f"{name}: 'labels' must be >= 0; row {i} is {labels[i]}")
    return labels


def validate(p: Pairs) -> None:
    """Raise `DataError` naming the source, array and row when `p` breaks the contract."""
    n = len(p.labels)
    if n == 0:
        raise DataError(f"{p.name}: the data set is empty (0 rows)")
    named = [("audio", p.audio), ("visual", p.visual), ("clip_ids", p.clip_ids)]
    for what, arr in named + ([("folds", p.folds)] if p.folds is not None else []):
        if len(arr) != n:
            raise DataError(f"{p.name}: '{what}' has {len(arr)} rows but 'labels' has {n}")
    for what, arr in (("audio", p.audio), ("visual", p.visual)):
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise DataError(f"{p.name}: '{what}' has NaN or inf values (first at row {i}, "
                            f"clip {str(p.clip_ids[i])!r})")
    if p.labels.min() < 0:
        i = int(np.argmin(p.labels))
        raise DataError(f"{p.name}: 'labels' must be >= 0; row {i} is {p.labels[i]}")
    if p.labels.max() >= len(p.class_names):
        raise DataError(f"{p.name}: label {p.labels.max()} is out of range for "
                        f"{len(p.class_names)} classes")
    if len(np.unique(p.labels)) < 2:
        raise DataError(f"{p.name}: needs at least 2 classes; all {n} rows have label "
                        f"{p.labels[0]}")
    _check_unique(p.clip_ids, p.name)


def _check_unique(clip_ids: np.ndarray, name: str) -> None:
    uniq, first, counts = np.unique(clip_ids, return_index=True, return_counts=True)
    if len(uniq) != len(clip_ids):
        dup = uniq[counts > 1][0]
        rows = np.flatnonzero(clip_ids == dup)[:3].tolist()
        raise DataError(f"{name}: duplicate clip id {str(dup)!r} (rows {rows})")
