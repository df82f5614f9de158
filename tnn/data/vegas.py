"""The VEGAS/AVE release format: per-clip feature arrays over time.

Layout of a clip directory (what `vegas:DIR` reads)::

    DIR/labels.csv          header `clip_id,label`; label an integer or a class name
    DIR/audio/<clip_id>.npy  (T, 128) VGGish frames, uint8 or float (or (128,) pre-pooled)
    DIR/visual/<clip_id>.npy (T', 1024) Inception frames, uint8 or float (or (1024,))

Each clip is mean-pooled over time; uint8 frames are de-quantised as (x - 128) / 256 first
(the YouTube-8M convention the paper uses). Widths are whatever the files hold, equal for
all clips; 128 / 1024 is VEGAS's.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tnn.errors import DataError
from tnn.data.pairs import Pairs, make_pairs


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


def read_labels_csv(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Return (clip_ids, labels 0..C-1, class_names) from `labels.csv`."""
    if not path.is_file():
        raise DataError(f"{path}: missing; a clip directory needs labels.csv (clip_id,label)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"clip_id", "label"} <= set(rows[0]):
        raise DataError(f"{path}: needs a header row with columns clip_id,label")
    ids, raw = [r["clip_id"] for r in rows], [r["label"].strip() for r in rows]
    if all(v.lstrip("-").isdigit() for v in raw):
        labels = np.array([int(v) for v in raw])
        return ids, labels, [str(c) for c in range(max(labels.max() + 1, 0))]
    names = sorted(set(raw))
    index = {n: i for i, n in enumerate(names)}
    return ids, np.array([index[v] for v in raw]), names


def from_clip_dir(path: str | Path) -> Pairs:
    """Load a VEGAS/AVE-style clip directory into `Pairs` (pooled, de-quantised)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"vegas: directory not found: {root}")
    ids, labels, names = read_labels_csv(root / "labels.csv")
    audio = _stack(root / "audio", ids)
    visual = _stack(root / "visual", ids)
    return make_pairs(audio, visual, labels, np.array(ids), names, f"vegas:{root}")


def _stack(folder: Path, ids: list[str]) -> np.ndarray:
    rows = []
    for cid in ids:
        f = folder / f"{cid}.npy"
        if not f.is_file():
            raise DataError(f"{f}: missing feature file for clip {cid!r}")
        rows.append(pool_clip(np.load(f, allow_pickle=False), str(f)))
    widths = {r.shape[0] for r in rows}
    if len(widths) > 1:
        first = rows[0].shape[0]
        bad = next(i for i, r in enumerate(rows) if r.shape[0] != first)
        raise DataError(f"{folder / (ids[bad] + '.npy')}: width {rows[bad].shape[0]} differs "
                        f"from {first} of {ids[0]!r}")
    return np.stack(rows)
