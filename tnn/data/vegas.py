"""Clip releases read clip by clip: VEGAS (two layouts, `vegas:DIR`); AVE is `tnn.data.ave`.

The authors' VEGAS release, as unpacked (detected by its four folders)::

    DIR/vgg/<clip_id>.npy            (T, 128) VGGish frames, uint8 (or float)
    DIR/inception/<clip_id>.npy      (T', 1024) Inception frames, uint8 (or float)
    DIR/VEGAS_classes/<clip_id>.npy  the clip's class: an integer scalar (or a one-hot vector)
    DIR/folds/<any name>             one file per fold, one clip id per line; the files in
                                     sorted name order are folds 0..K-1 (the release has 5)

The clips are those listed in `folds/` (in that order); their folds are stored in the `Pairs`
(`Pairs.folds`), so `jobs.crossval` with K folds runs the authors' split whatever `--seed`.

The plain layout (any features, our folds)::

    DIR/labels.csv          header `clip_id,label`; label an integer or a class name
    DIR/audio/<clip_id>.npy  (T, Da) frames, uint8 or float (or (Da,) pre-pooled)
    DIR/visual/<clip_id>.npy (T', Dv) frames, uint8 or float (or (Dv,))

Each clip is mean-pooled over time; uint8 frames are de-quantised as (x - 128) / 256 (the
authors' `uint8_to_float32`, the YouTube-8M convention). Widths are whatever the files hold,
equal for all clips. `ClipSet` holds ids, labels and folds and reads features only when asked,
one clip at a time: `load()` fills the pooled (N, D) matrices, `chunks()` streams them to
`tnn.data.write` (`jobs.make_shards`), so memory never holds more than one clip's frames.
A clip id that would name a file outside DIR (`../x`, `/abs`) is refused (`tnn.data.paths`).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tnn.core.folds import assign_folds
from tnn.errors import DataError
from tnn.data.pairs import Pairs, make_pairs
from tnn.data.npy import read_npy
from tnn.data.paths import check_name

AUTHORS_DIRS = ("vgg", "inception", "VEGAS_classes", "folds")


def pool_clip(frames: np.ndarray, where: str) -> np.ndarray:
    """De-quantise (uint8) and mean-pool one clip's (T, D) frames to a (D,) float32 vector."""
    frames = np.asarray(frames)
    if frames.ndim == 1:
        frames = frames[None, :]
    if frames.ndim != 2 or frames.shape[0] == 0:
        raise DataError(f"{where}: expected frames of shape (T, D) with T >= 1; got {frames.shape}")
    if frames.dtype == np.uint8:
        x = (frames.astype(np.float64) - 128.0) / 256.0
    elif np.issubdtype(frames.dtype, np.floating) or np.issubdtype(frames.dtype, np.integer):
        x = frames.astype(np.float64)
    else:
        raise DataError(f"{where}: frames must be uint8 or float; got dtype {frames.dtype}")
    return x.mean(axis=0).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class ClipSet:
    """A release's clips: ids, labels, class names, stored folds (or None); `read(a, b)` gives
    the pooled (audio, visual) float32 rows a..b-1, checked and named by clip and file."""

    name: str
    clip_ids: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    folds: np.ndarray | None
    read: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    block: int = 1  # rows `read` is asked for at once by `load`

    @property
    def n(self) -> int:
        return len(self.clip_ids)

    def fold_ids(self, k: int, seed: int) -> np.ndarray:
        """The stored folds if there are `k` of them, else `assign_folds(labels, k, seed)`."""
        if self.folds is not None and len(np.unique(self.folds)) == k:
            return self.folds
        return assign_folds(self.labels, k, seed)

    def load(self) -> Pairs:
        """Every clip pooled into `Pairs` (with the stored folds)."""
        out: list[np.ndarray] = []
        for a in range(0, self.n, self.block):
            audio, visual = self.read(a, min(a + self.block, self.n))
            if not out:
                out = [np.empty((self.n, audio.shape[1]), np.float32),
                       np.empty((self.n, visual.shape[1]), np.float32)]
            out[0][a:a + len(audio)], out[1][a:a + len(visual)] = audio, visual
        return make_pairs(out[0], out[1], self.labels, self.clip_ids, self.class_names,
                          self.name, self.folds)

    def chunks(self, k: int, seed: int, chunk_rows: int):
        """(class names, rows, iterator of (audio, visual, labels, clip_ids, folds) chunks of
        at most `chunk_rows` rows): what `tnn.data.write.chunks` returns, read lazily."""
        make_pairs(np.zeros((self.n, 1)), np.zeros((self.n, 1)), self.labels, self.clip_ids,
                   self.class_names, self.name)  # labels and ids checked before any write
        folds = self.fold_ids(k, seed)

        def rows() -> Iterator[tuple]:
            for a in range(0, self.n, chunk_rows):
                b = min(a + chunk_rows, self.n)
                yield (*self.read(a, b), self.labels[a:b], self.clip_ids[a:b], folds[a:b])
        return self.class_names, self.n, rows()


def clip_file(folder: Path, cid: str, where: Path) -> Path:
    """`folder/<cid>.npy`; a clip id that would leave `folder` (absolute, `..`) is refused
    naming `where`, the file the id came from (`tnn.data.paths`)."""
    return folder / (check_name(str(cid), str(where), "clip id") + ".npy")


def clip_npy(path: Path, cid: str, what: str) -> np.ndarray:
    """One clip's .npy (`tnn.data.npy.read_npy`: nothing unpickled, the header's size checked
    against the file before allocating); `DataError` naming the file and the clip."""
    if not path.is_file():
        raise DataError(f"{path}: missing {what} file for clip {cid!r}")
    return read_npy(path, f"{path}: clip {cid!r}")


def _feature_reader(root: Path, audio: str, visual: str, ids: np.ndarray, where: Path):
    """`read(a, b)` of a folder-per-modality layout: one .npy per clip and modality."""
    paths = [(clip_file(root / audio, c, where), clip_file(root / visual, c, where))
             for c in ids]
    first: list[tuple[int, str]] = []  # (width, clip) of the first clip, per modality

    def one(path: Path, cid: str, m: int) -> np.ndarray:
        row = pool_clip(clip_npy(path, cid, "feature"), str(path))
        if not np.isfinite(row).all():
            raise DataError(f"{path}: clip {cid!r} has NaN or inf values")
        if len(first) <= m:
            first.append((row.shape[0], cid))
        elif row.shape[0] != first[m][0]:
            raise DataError(f"{path}: width {row.shape[0]} differs from {first[m][0]} of "
                            f"{first[m][1]!r}")
        return row

    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        rows = [(one(pa, str(ids[i]), 0), one(pv, str(ids[i]), 1))
                for i, (pa, pv) in zip(range(a, b), paths[a:b])]
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
    return read


def read_labels_csv(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Return (clip_ids, labels 0..C-1, class_names) from `labels.csv`."""
    if not path.is_file():
        raise DataError(f"{path}: missing; a clip directory needs labels.csv (clip_id,label)")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({err})") from None
    if not rows or not {"clip_id", "label"} <= set(rows[0]):
        raise DataError(f"{path}: needs a header row with columns clip_id,label")
    for line, r in enumerate(rows, start=2):  # a short row has None for its missing fields
        if not r["clip_id"] or not (r["label"] or "").strip():
            raise DataError(f"{path}: row {line} ({r['clip_id'] or ''!r}) has no clip_id or label")
    ids, raw = [r["clip_id"] for r in rows], [r["label"].strip() for r in rows]
    if all(v.isdigit() for v in raw):  # integer labels: classes are the values present (C <= N)
        values = sorted({int(v) for v in raw})
        index = {v: i for i, v in enumerate(values)}
        return ids, np.array([index[int(v)] for v in raw]), [str(v) for v in values]
    names = sorted(set(raw))
    index = {n: i for i, n in enumerate(names)}
    return ids, np.array([index[v] for v in raw]), names


def read_folds(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(clip ids, fold of each) from the fold files of `folder`, in sorted name order."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not 2 <= len(files) <= 127:
        raise DataError(f"{folder}: expected 2..127 fold files (the release has 5); found "
                        f"{len(files)}")
    ids: list[str] = []
    fold: list[int] = []
    seen: dict[str, Path] = {}
    for k, path in enumerate(files):
        try:
            lines = [ln.strip() for ln in path.read_text().splitlines()]
        except (UnicodeDecodeError, OSError) as err:
            raise DataError(f"{path}: not a text file of clip ids ({err})") from None
        for cid in filter(None, lines):
            if cid in seen:
                raise DataError(f"{path}: clip {cid!r} is also in fold file {seen[cid]}")
            seen[cid] = path
            ids.append(cid)
            fold.append(k)
    if not ids:
        raise DataError(f"{folder}: the fold files list no clips")
    return np.array(ids), np.array(fold, np.int8)


def _class_of(path: Path, cid: str) -> int:
    """A clip's class from its VEGAS_classes file: an integer scalar or a one-hot vector."""
    y = clip_npy(path, cid, "label").ravel()
    if y.dtype.kind not in "iufb" or len(y) == 0:
        raise DataError(f"{path}: clip {cid!r}: label must be a number; got {y.dtype} {y.shape}")
    if len(y) == 1:
        value = float(y[0])
        if not (np.isfinite(value) and value == round(value) and value >= 0):
            raise DataError(f"{path}: clip {cid!r}: label must be an integer >= 0; got {value}")
        return int(value)
    if np.sort(y)[-2] == y.max():  # a one-hot (or score) vector needs one largest entry
        raise DataError(f"{path}: clip {cid!r}: label vector {y.tolist()[:12]} has no single "
                        "largest entry")
    return int(np.argmax(y))


def authors_clips(root: Path) -> ClipSet:
    """The authors' VEGAS layout (see the module docstring) as a `ClipSet`."""
    ids, folds = read_folds(root / "folds")
    labels = np.array([_class_of(clip_file(root / "VEGAS_classes", c, root / "folds"), str(c))
                       for c in ids])
    names = tuple(str(c) for c in range(int(labels.max()) + 1))
    return ClipSet(f"vegas:{root}", ids, labels, names, folds,
                   _feature_reader(root, "vgg", "inception", ids, root / "folds"))


def open_clip_dir(path: str | Path) -> ClipSet:
    """A VEGAS clip directory, either layout, as a `ClipSet` (no features read yet)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"vegas: directory not found: {root}")
    present = [d for d in AUTHORS_DIRS if (root / d).is_dir()]
    if present and not (root / "labels.csv").is_file():
        missing = [d for d in AUTHORS_DIRS if d not in present]
        if missing:
            raise DataError(f"{root}: the authors' VEGAS layout needs folders "
                            f"{', '.join(AUTHORS_DIRS)}; missing {', '.join(missing)}")
        return authors_clips(root)
    ids, labels, names = read_labels_csv(root / "labels.csv")
    ids_arr = np.array(ids)
    return ClipSet(f"vegas:{root}", ids_arr, labels, tuple(names), None,
                   _feature_reader(root, "audio", "visual", ids_arr, root / "labels.csv"))


def from_clip_dir(path: str | Path) -> Pairs:
    """Load a VEGAS clip directory (either layout) into `Pairs` (pooled, de-quantised)."""
    return open_clip_dir(path).load()
