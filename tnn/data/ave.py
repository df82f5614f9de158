"""AVE (Tian et al., ECCV 2018) as released: HDF5 feature files, read clip block by clip block.

`ave:DIR` reads the release's files, as its code loads them (dataset `avadataset` in each)::

    DIR/audio_feature.h5    avadataset (N, 10, 128)        VGGish, one row per second
    DIR/visual_feature.h5   avadataset (N, 10, 7, 7, 512)  VGG-19 pool5 maps per second
                            (or (N, 10, 512), the globally pooled variant)
    DIR/labels.h5           avadataset (N, 10, C + 1)      one-hot per second, last column
                                                           = background
    DIR/train_order.h5, val_order.h5, test_order.h5        dataset `order`: row numbers
    DIR/Annotations.txt     optional: `Category&VideoID&Quality&StartTime&EndTime` per row
                            (header line allowed): clip ids and class names

A clip's features are the mean over its seconds (and the 7 x 7 positions): 128-d audio,
512-d visual (uint8 files are de-quantised as in `tnn.data.vegas`). Its label is the event
class of most of its annotated seconds (background ignored; AVE has one event class per
clip); a clip without any event second is refused. The split becomes stored folds:
train = fold 0, val = fold 1, test = fold 2 (`jobs.crossval --folds 3` rotates over them,
`jobs.train --folds 3 --test-fold 2` holds out AVE's test set; with another K the protocol
deals its own class-balanced folds). Without the order files there are no stored folds.
Rows are read `BLOCK` clips at a time, so memory does not grow with N. h5py is imported
inside the functions that need it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tnn.data.vegas import ClipSet
from tnn.errors import DataError

KEY, ORDER_KEY = "avadataset", "order"
FILES = {"audio": "audio_feature.h5", "visual": "visual_feature.h5", "labels": "labels.h5"}
SPLITS = ("train_order.h5", "val_order.h5", "test_order.h5")  # folds 0, 1, 2
ANNOTATIONS = "Annotations.txt"
BLOCK = 32  # clips per read: 32 x 10 x 7 x 7 x 512 float32 = 32 MB of visual maps


def _dataset(path: Path, key: str = KEY):
    """(open h5py.File, its dataset `key`), with one-line errors naming the file."""
    import h5py
    if not path.is_file():
        raise DataError(f"{path}: missing; an AVE directory needs {', '.join(FILES.values())}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    if key not in f or not hasattr(f[key], "shape"):
        names = sorted(f.keys())
        f.close()
        raise DataError(f"{path}: no dataset {key!r}; found {names}")
    return f, f[key]


def _read_all(path: Path, key: str = KEY) -> np.ndarray:
    f, ds = _dataset(path, key)
    with f:
        try:
            return ds[()]
        except OSError as err:
            raise DataError(f"{path}: dataset {key!r} is unreadable ({err})") from None


def clip_labels(onehot: np.ndarray, ids: np.ndarray, where: Path) -> np.ndarray:
    """(N, T, C + 1) per-second labels -> (N,) the clip's most frequent event class."""
    if onehot.ndim != 3 or onehot.shape[2] < 3:
        raise DataError(f"{where}: expected per-second labels (N, T, classes + 1); got shape "
                        f"{onehot.shape}")
    events = np.nan_to_num(onehot[:, :, :-1].astype(np.float64)).sum(axis=1)  # (N, C)
    empty = np.flatnonzero(events.max(axis=1) <= 0)
    if len(empty):
        i = int(empty[0])
        raise DataError(f"{where}: clip {str(ids[i])!r} (row {i}) has no event second (all "
                        f"{onehot.shape[1]} seconds are background)")
    return events.argmax(axis=1)


def read_annotations(path: Path, n: int) -> tuple[np.ndarray, list[str]] | None:
    """(clip ids, categories) from Annotations.txt, or None without the file."""
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if lines and lines[0].lower().startswith("category&"):
        lines = lines[1:]
    rows = [ln.split("&") for ln in lines]
    bad = next((i for i, r in enumerate(rows) if len(r) < 2 or not r[1].strip()), None)
    if bad is not None:
        raise DataError(f"{path}: line {bad + 1} is not Category&VideoID&...: {lines[bad]!r}")
    if len(rows) != n:
        raise DataError(f"{path}: {len(rows)} clips, but the feature files hold {n}")
    return np.array([r[1].strip() for r in rows]), [r[0].strip() for r in rows]


def class_names(labels: np.ndarray, categories: list[str] | None, c: int,
                where: Path) -> tuple[str, ...]:
    """Names of the C event classes from the annotations (a class index with two categories
    means misaligned files); str(index) for classes without clips or annotations."""
    names = [str(i) for i in range(c)]
    if categories is None:
        return tuple(names)
    seen: dict[int, tuple[str, int]] = {}
    for row, (lab, cat) in enumerate(zip(labels.tolist(), categories)):
        if lab in seen and seen[lab][0] != cat:
            raise DataError(f"{where}: row {row} ({cat!r}) and row {seen[lab][1]} "
                            f"({seen[lab][0]!r}) have the same label {lab} in {FILES['labels']}")
        seen.setdefault(lab, (cat, row))
        names[lab] = cat
    return tuple(names)


def read_split(root: Path, n: int) -> np.ndarray | None:
    """Fold of every row from the three order files (train 0, val 1, test 2), or None."""
    present = [(root / s).is_file() for s in SPLITS]
    if not any(present):
        return None
    if not all(present):
        missing = [s for s, p in zip(SPLITS, present) if not p]
        raise DataError(f"{root}: has some AVE order files but not {', '.join(missing)}")
    folds = np.full(n, -1, np.int8)
    for k, name in enumerate(SPLITS):
        order = np.asarray(_read_all(root / name, ORDER_KEY)).ravel()
        if order.dtype.kind not in "iu" or (len(order) and (order.min() < 0 or
                                                             order.max() >= n)):
            raise DataError(f"{root / name}: 'order' must hold row numbers in 0..{n - 1}")
        twice = order[folds[order] != -1] if len(order) else order
        if len(twice) or len(np.unique(order)) != len(order):
            row = int(twice[0]) if len(twice) else int(order[np.argmax(np.bincount(order))])
            raise DataError(f"{root / name}: row {row} is in more than one split")
        folds[order] = k
    if (folds < 0).any():
        raise DataError(f"{root}: row {int(np.argmax(folds < 0))} is in none of "
                        f"{', '.join(SPLITS)}")
    return folds


def _pool(block: np.ndarray, what: str, ids: np.ndarray, a: int, where: Path) -> np.ndarray:
    """(B, T, ..., D) -> (B, D) float32: de-quantise uint8, mean over every axis but the
    first and the last; NaN/inf refused naming the clip."""
    if block.dtype.kind not in "iuf":
        raise DataError(f"{where}: {what} features must be numbers; got dtype {block.dtype}")
    x = block.reshape(len(block), -1, block.shape[-1]).mean(axis=1, dtype=np.float64)  # no copy
    if block.dtype == np.uint8:
        x = (x - 128.0) / 256.0  # affine: de-quantising the mean = the mean de-quantised
    pooled = x.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(pooled).all(axis=1))
    if len(bad):
        i = a + int(bad[0])
        raise DataError(f"{where}: clip {str(ids[i])!r} (row {i}) has NaN or inf {what} values")
    return pooled


def open_ave(path: str | Path) -> ClipSet:
    """The AVE release in `path` as a `ClipSet` (labels, ids, split read; features lazily)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"ave: directory not found: {root}")
    shapes = {}
    for what, name in FILES.items():
        f, ds = _dataset(root / name)
        with f:
            shapes[what] = ds.shape
            if len(ds.shape) < 2:
                raise DataError(f"{root / name}: expected (N, ...) per-clip rows; got shape "
                                f"{ds.shape}")
    n = shapes["labels"][0]
    for what in ("audio", "visual"):
        if shapes[what][0] != n:
            raise DataError(f"{root / FILES[what]}: {shapes[what][0]} clips, but "
                            f"{FILES['labels']} has {n}")
    notes = read_annotations(root / ANNOTATIONS, n)
    ids = notes[0] if notes else np.array([f"ave-{i:05d}" for i in range(n)])
    onehot = _read_all(root / FILES["labels"])
    labels = clip_labels(onehot, ids, root / FILES["labels"])
    names = class_names(labels, notes[1] if notes else None, onehot.shape[2] - 1,
                        root / ANNOTATIONS)
    return ClipSet(f"ave:{root}", ids, labels, names, read_split(root, n),
                   _reader(root, ids), block=BLOCK)


def _reader(root: Path, ids: np.ndarray):
    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for what in ("audio", "visual"):
            parts = []
            f, ds = _dataset(root / FILES[what])
            with f:
                for s in range(a, b, BLOCK):
                    try:
                        block = ds[s:min(s + BLOCK, b)]
                    except OSError as err:
                        raise DataError(f"{root / FILES[what]}: clips {str(ids[s])!r}.. (rows "
                                        f"{s}..) are unreadable ({err})") from None
                    parts.append(_pool(block, what, ids, s, root / FILES[what]))
            out.append(np.concatenate(parts))
        return out[0], out[1]
    return read


def from_ave(path: str | Path):
    """`ave:DIR` as `Pairs` (pooled features, clip labels, the split as stored folds)."""
    return open_ave(path).load()
