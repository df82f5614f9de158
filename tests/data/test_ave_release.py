"""`ave:DIR`: AVE's HDF5 release (features, per-second labels, order files, annotations) read
block by block; clip labels from the seconds, the split as stored folds, one-line refusals."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from tnn.data import ave
from tnn.data.sources import load_source
from tnn.data.write import write
from tnn.errors import DataError

CATEGORIES = ["Church bell", "Male speech, man speaking", "Bark", "Race car, auto racing"]
EVENTS = 28  # AVE's event classes; column 28 of labels.h5 is background


def write_ave_release(root: Path, n: int = 36, channels: int = 512, seed: int = 0) -> dict:
    """AVE's files: avadataset (N, 10, 128) / (N, 10, 7, 7, channels) / (N, 10, 29) one-hot
    per second, {train,val,test}_order.h5 and Annotations.txt (with its header line).
    Clip i has class (i % 4) * 7 (sparse indices, as in AVE's 28) during seconds [s, e)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    kind = np.arange(n) % len(CATEGORIES)
    cls = kind * 7
    start, end = rng.integers(0, 4, n), rng.integers(6, 11, n)
    onehot = np.zeros((n, 10, EVENTS + 1), np.float32)
    onehot[:, :, EVENTS] = 1
    for i in range(n):
        onehot[i, start[i]:end[i], EVENTS] = 0
        onehot[i, start[i]:end[i], cls[i]] = 1
    audio = (rng.normal(size=(len(CATEGORIES), 1, 128))[kind] +
             rng.normal(0, 0.5, (n, 10, 128))).astype(np.float32)
    visual = (rng.normal(size=(len(CATEGORIES), 1, 1, 1, channels))[kind] +
              rng.normal(0, 0.5, (n, 10, 7, 7, channels))).astype(np.float32)
    for name, data in (("audio_feature.h5", audio), ("visual_feature.h5", visual),
                       ("labels.h5", onehot)):
        with h5py.File(root / name, "w") as f:
            f.create_dataset("avadataset", data=data)
    rank = np.argsort(np.argsort(kind + rng.random(n), kind="stable"))  # shuffled per class
    within = rank - np.searchsorted(np.sort(kind), kind)  # 0.. within the clip's class
    part = np.where(within < 5, 0, np.where(within < 7, 1, 2))  # per class 5 / 2 / rest
    split = {name: rng.permutation(np.flatnonzero(part == k)) for k, name in
             enumerate(("train_order.h5", "val_order.h5", "test_order.h5"))}
    for name, rows in split.items():
        with h5py.File(root / name, "w") as f:
            f.create_dataset("order", data=rows)
    ids = [f"vid{i:03d}-{rng.integers(1e6):06d}" for i in range(n)]
    (root / "Annotations.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\n" + "".join(
        f"{CATEGORIES[kind[i]]}&{ids[i]}&good&{start[i]}&{end[i]}\n" for i in range(n)))
    folds = np.zeros(n, int)
    for k, name in enumerate(("train_order.h5", "val_order.h5", "test_order.h5")):
        folds[split[name]] = k
    return {"ids": np.array(ids), "labels": cls, "folds": folds, "audio": audio,
            "visual": visual}


def test_ave_release_labels_from_seconds_split_as_folds_and_pooling(tmp_path):
    want = write_ave_release(tmp_path / "a", channels=512)
    p = load_source(f"ave:{tmp_path / 'a'}")
    assert p.audio.shape == (36, 128) and p.visual.shape == (36, 512)
    assert p.num_classes == EVENTS and np.array_equal(p.labels, want["labels"])
    assert p.class_names[7] == CATEGORIES[1] and p.class_names[1] == "1"
    assert list(p.clip_ids) == list(want["ids"]) and np.array_equal(p.folds, want["folds"])
    np.testing.assert_allclose(p.visual[5], want["visual"][5].mean(axis=(0, 1, 2)), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(p.audio[5], want["audio"][5].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_ave_crossval_end_to_end_on_their_split(tmp_path, capsys):
    from jobs import crossval
    write_ave_release(tmp_path / "a", channels=16)
    out = tmp_path / "r.json"
    assert crossval.main(["--data", f"ave:{tmp_path / 'a'}", "--methods", "c-cca",
                          "--folds", "3", "--dim", "3", "--json", str(out),
                          "--set", "mlflow.enabled=false"]) == 0
    res = json.loads(out.read_text())
    assert res["data"].startswith("ave:") and res["folds"] == 3
    assert np.mean(res["methods"]["c-cca"]["a2v_map_folds"]) > 0.5
    assert "crossval: best c-cca" in capsys.readouterr().out


def test_ave_make_shards_and_reading_stays_block_sized(tmp_path, monkeypatch):
    want = write_ave_release(tmp_path / "a", n=80, channels=512)  # 80 MB of visual maps
    monkeypatch.setattr(ave, "BLOCK", 8)
    clips = ave.open_ave(tmp_path / "a")
    tracemalloc.start()
    try:
        clips.load()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    block = 8 * 10 * 49 * 512 * 4  # one block of float32 maps: 8 MB
    assert peak < 3 * block < want["visual"].nbytes / 3, (peak, block)
    from jobs import make_shards
    assert make_shards.main(["--source", f"ave:{tmp_path / 'a'}", "--out", str(tmp_path / "s"),
                             "--folds", "3", "--chunk-rows", "16",
                             "--rows-per-shard", "40"]) == 0
    back = load_source(str(tmp_path / "s"))
    assert back.n == 80 and np.array_equal(back.folds, want["folds"])
    man = write(f"ave:{tmp_path / 'a'}", str(tmp_path / "s5"), folds=5, seed=1,
                log=lambda *a, **k: None)  # 5 folds: the protocol's own, not the split
    assert man.rows == 80 and len(np.unique(load_source(str(tmp_path / "s5")).folds)) == 5


def _h5(path: Path, key: str, data) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=data)


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "visual_feature.h5").write_bytes(b"not hdf5"),
     r"visual_feature.h5: not a readable HDF5 file"),
    (lambda r: _h5(r / "audio_feature.h5", "feats", np.zeros((36, 10, 128))),
     r"audio_feature.h5: no dataset 'avadataset'; found \['feats'\]"),
    (lambda r: _h5(r / "audio_feature.h5", "avadataset", np.zeros((35, 10, 128))),
     r"audio_feature.h5: 35 clips, but labels.h5 has 36"),
    (lambda r: _h5(r / "labels.h5", "avadataset", np.eye(29)[np.full((36, 10), 28)]),
     r"labels.h5: clip 'vid000-\d+' \(row 0\) has no event second"),
    (lambda r: _h5(r / "test_order.h5", "order", np.array([0, 1])),
     r"test_order.h5: row \d+ is in more than one split"),
    (lambda r: (r / "val_order.h5").unlink(), r"has some AVE order files but not val_order.h5"),
    (lambda r: _h5(r / "audio_feature.h5", "avadataset",
                   np.where(np.arange(36)[:, None, None] == 3, np.nan, np.zeros((36, 10, 128)))),
     r"audio_feature.h5: clip 'vid003-\d+' \(row 3\) has NaN or inf audio values"),
])
def test_ave_bad_release_one_line_naming_clip_and_file(tmp_path, capsys, damage, message):
    from jobs import crossval
    write_ave_release(tmp_path / "a", channels=8)
    damage(tmp_path / "a")
    with pytest.raises(DataError, match=message):
        load_source(f"ave:{tmp_path / 'a'}")
    assert crossval.main(["--data", f"ave:{tmp_path / 'a'}", "--methods", "cca"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crossval: error: ") and "\n" not in err
