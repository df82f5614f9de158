"""The clip releases every job and `jobs.make_shards` read clip by clip: `vegas:DIR` (either
VEGAS layout, `tnn.data.vegas`) and `ave:DIR` (the AVE HDF5 release, `tnn.data.ave`)."""

from __future__ import annotations

from tnn.data.ave import open_ave
from tnn.data.vegas import ClipSet, open_clip_dir

KINDS = ("vegas", "ave")


def open_release(spec: str) -> ClipSet:
    """`vegas:DIR` or `ave:DIR` as a `ClipSet` (ids, labels, folds; features read lazily)."""
    kind, _, arg = spec.partition(":")
    return open_ave(arg) if kind == "ave" else open_clip_dir(arg)
