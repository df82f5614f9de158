"""Data sources: every source yields the same in-memory `Pairs` (`tnn.data.pairs`).

- `uci_mfeat(audio_view, visual_view)`: the bundled UCI Multiple Features (2,000 digits,
  10 classes, six views; see `tnn/_data/NOTICE.md`). Default pairing `fou` -> `pix`.
- `from_npz(path)`: keys `audio`, `visual`, `labels`, optional `clip_ids`, `class_names`.
- `from_clip_dir(path)`: the VEGAS/AVE release format, see `tnn.data.vegas`.
- `synthetic(n, ...)`: VEGAS-shaped data whose classes are separable only non-linearly,
  see `tnn.data.synthetic`.
- a shard set (`s3://...` or a directory with a manifest): `tnn.data.reader.read_pairs`.
- `load_source(spec)` parses the source strings the jobs accept.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from tnn.data.npy import read_npz
from tnn.data.pairs import Pairs, make_pairs
from tnn.errors import DataError, TnnError

UCI_VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")


def uci_mfeat(audio_view: str = "fou", visual_view: str = "pix") -> Pairs:
    """The bundled UCI Multiple Features, two of its six views as 'audio' and 'visual'."""
    for view in (audio_view, visual_view):
        if view not in UCI_VIEWS:
            raise DataError(f"uci-mfeat: unknown view {view!r}; choose from {', '.join(UCI_VIEWS)}")
    with resources.files("tnn").joinpath("_data/uci_mfeat.npz").open("rb") as f:
        z = np.load(f)
        audio, visual, labels = z[audio_view], z[visual_view], z["labels"]
    ids = np.array([f"mfeat-{i:04d}" for i in range(len(labels))])
    return make_pairs(audio, visual, labels, ids, [str(d) for d in range(10)],
                      f"uci-mfeat:{audio_view},{visual_view}")


def from_npz(path: str | Path) -> Pairs:
    """Load `audio`, `visual`, `labels` (and optional `clip_ids`, `class_names`) from an npz:
    `tnn.data.npy.read_npz` (no pickles, headers checked against the file's size)."""
    path = Path(path)
    z, found = read_npz(path, ("audio", "visual", "labels", "clip_ids", "class_names"))
    missing = [k for k in ("audio", "visual", "labels") if k not in z]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}; found {found}")
    return make_pairs(z["audio"], z["visual"], z["labels"], z.get("clip_ids"),
                      z.get("class_names"), str(path))


def load_source(spec: str) -> Pairs:
    """Parse a source string into `Pairs`.

    `uci-mfeat`, `uci-mfeat:VIEW_A,VIEW_B`, `npz:PATH` (or a path ending in .npz),
    `vegas:DIR`, `synthetic:N` or `synthetic:n=N,seed=S,noise=X,...`, or a shard URI
    (`s3://...` or a local directory with `_manifest.json`, read by `tnn.data.reader`).
    """
    kind, _, arg = spec.partition(":")
    if kind == "uci-mfeat":
        views = arg.split(",") if arg else ["fou", "pix"]
        if len(views) != 2:
            raise DataError(f"uci-mfeat: expected two views like 'uci-mfeat:fou,pix'; got {spec!r}")
        return uci_mfeat(*views)
    if kind == "npz" or spec.endswith(".npz"):
        return from_npz(arg if kind == "npz" else spec)
    if kind == "vegas":
        from tnn.data.vegas import from_clip_dir
        return from_clip_dir(arg)
    if kind == "ave":  # the AVE release's HDF5 files, tnn.data.ave
        from tnn.data.ave import from_ave; return from_ave(arg)  # noqa: E702
    if kind == "synthetic":
        from tnn.data.synthetic import parse_spec, synthetic
        return synthetic(**parse_spec(arg))
    if is_shard_uri(spec):
        from pyarrow import ArrowException  # pyarrow (lazily), only for shard sets

        from tnn.data.reader import read_pairs
        try:
            return read_pairs(spec)
        except TnnError:
            raise
        except (OSError, ValueError, ArrowException) as err:  # a corrupt page names no file
            raise DataError(f"{spec}: cannot read the shard set ({err})") from None
    raise DataError(f"unknown data source {spec!r}: expected uci-mfeat[:A,B], npz:PATH, "
                    "vegas:DIR, synthetic:N or a shard URI (s3://... or a directory)")


def is_shard_uri(spec: str) -> bool:
    """True for `s3://...` URIs and local directories that hold a shard manifest."""
    return spec.startswith("s3://") or (Path(spec) / "_manifest.json").is_file()
