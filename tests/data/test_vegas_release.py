"""`vegas:DIR` in the authors' layout (vgg/, inception/, VEGAS_classes/, folds/): pooling as the
authors do, their folds stored and used, streaming, refusals naming the clip and file."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tnn.data import shards
from tnn.data.sources import load_source
from tnn.data.releases import open_release
from tnn.data.vegas import open_clip_dir
from tnn.data.write import write
from tnn.errors import DataError

CLASSES = 4


def write_vegas_release(root: Path, n: int = 40, frames=(2, 6), seed: int = 0,
                        onehot: bool = False, widths=(128, 1024)) -> dict:
    """The authors' release layout: per-clip uint8 .npy features (VGGish 128-d, Inception
    1024-d unless `widths`), per-clip class files and five fold files of clip ids
    (class-balanced, fold of clip i = (i // CLASSES) % 5)."""
    da, dv = widths
    rng = np.random.default_rng(seed)
    for d in ("vgg", "inception", "VEGAS_classes", "folds"):
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = [f"class{i % CLASSES}_video_{i:05d}" for i in range(n)]
    labels = np.arange(n) % CLASSES
    folds = (np.arange(n) // CLASSES) % 5
    centres_a = rng.normal(0, 30, size=(CLASSES, da))
    centres_v = rng.normal(0, 30, size=(CLASSES, dv))
    for cid, y in zip(ids, labels):
        t_a, t_v = rng.integers(*frames, size=2)
        a = np.clip(128 + centres_a[y] + rng.normal(0, 20, (t_a, da)), 0, 255).astype(np.uint8)
        v = np.clip(128 + centres_v[y] + rng.normal(0, 20, (t_v, dv)), 0, 255).astype(np.uint8)
        np.save(root / "vgg" / f"{cid}.npy", a)
        np.save(root / "inception" / f"{cid}.npy", v)
        np.save(root / "VEGAS_classes" / f"{cid}.npy",
                np.eye(CLASSES)[y] if onehot else np.int64(y))
    for k in range(5):  # named like the release's, listed out of order on purpose
        (root / "folds" / f"fold{k}.txt").write_text(
            "\n".join(c for c, f in zip(ids, folds) if f == k) + "\n")
    return {"ids": np.array(ids), "labels": labels, "folds": folds}


def test_vegas_authors_layout_pools_dequantises_and_stores_their_folds(tmp_path):
    want = write_vegas_release(tmp_path / "v", onehot=True)
    p = load_source(f"vegas:{tmp_path / 'v'}")
    assert p.audio.shape == (40, 128) and p.visual.shape == (40, 1024)
    order = np.argsort(want["folds"], kind="stable")  # clips in fold-file order
    assert list(p.clip_ids) == list(want["ids"][order])
    assert np.array_equal(p.labels, want["labels"][order])
    assert np.array_equal(p.folds, want["folds"][order])
    raw = np.load(tmp_path / "v" / "inception" / f"{p.clip_ids[7]}.npy")
    authors = (np.float32(raw.mean(axis=0)) - 128.0) / 256.0  # their uint8_to_float32(mean)
    np.testing.assert_allclose(p.visual[7], authors, rtol=1e-5, atol=1e-6)


def test_vegas_crossval_runs_the_authors_folds_whatever_the_seed(tmp_path, capsys):
    from jobs import crossval
    write_vegas_release(tmp_path / "v", widths=(16, 24))  # narrow: CCA fits in milliseconds
    results = []
    for seed in (0, 7):
        out = tmp_path / f"r{seed}.json"
        assert crossval.main(["--data", f"vegas:{tmp_path / 'v'}", "--methods", "cca,c-cca",
                              "--folds", "5", "--seed", str(seed), "--dim", "3",
                              "--json", str(out), "--set", "mlflow.enabled=false"]) == 0
        results.append(json.loads(out.read_text()))
    assert "crossval: best" in capsys.readouterr().out
    maps = [{m: r["a2v_map_folds"] for m, r in res["methods"].items()} for res in results]
    assert maps[0] == maps[1]  # the folds come from folds/, not from --seed
    assert min(np.mean(v) for v in maps[0].values()) > 0.5  # the classes are found


def test_vegas_make_shards_keeps_the_authors_folds_and_streams(tmp_path, monkeypatch):
    want = write_vegas_release(tmp_path / "v")
    clips = open_release(f"vegas:{tmp_path / 'v'}")
    calls = []
    read = clips.read
    object.__setattr__(clips, "read", lambda a, b: calls.append((a, b)) or read(a, b))
    _, total, rows = clips.chunks(5, 3, chunk_rows=16)
    assert total == 40 and calls == []  # nothing read before the writer asks
    first = next(rows)
    assert calls == [(0, 16)] and first[0].shape == (16, 128)
    man = write(f"vegas:{tmp_path / 'v'}", str(tmp_path / "s"), rows_per_shard=16, seed=3,
                chunk_rows=8, log=lambda *a, **k: None)
    assert man.rows == 40 and len(man.shards) == 3
    back = load_source(str(tmp_path / "s"))
    fold_of = dict(zip(want["ids"], want["folds"]))
    assert [fold_of[c] for c in back.clip_ids] == back.folds.tolist()
    shards.validate(str(tmp_path / "s"), deep=True)


def test_vegas_loading_memory_does_not_grow_with_the_clips(tmp_path):
    """Long clips (200 frames): holding every clip's frames would take ~40x one clip; the
    loader keeps one clip's frames and the pooled rows."""
    write_vegas_release(tmp_path / "v", n=40, frames=(200, 201))
    clips = open_clip_dir(tmp_path / "v")
    tracemalloc.start()
    try:
        clips.load()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    all_frames = 40 * 200 * (128 + 1024) * 8  # float64, as pooled
    one_clip = 200 * 1024 * 8
    assert peak < 4 * one_clip < all_frames / 10, (peak, one_clip, all_frames)


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "inception" / "class1_video_00005.npy").write_bytes(b"garbage"),
     r"inception/class1_video_00005.npy: clip 'class1_video_00005': not a readable .npy"),
    (lambda r: (r / "vgg" / "class2_video_00010.npy").unlink(),
     r"vgg/class2_video_00010.npy: missing feature file for clip 'class2_video_00010'"),
    (lambda r: np.save(r / "vgg" / "class3_video_00011.npy", np.zeros((3, 127), np.uint8)),
     r"vgg/class3_video_00011.npy: width 127 differs from 128 of 'class0_video_00000'"),
    (lambda r: np.save(r / "VEGAS_classes" / "class0_video_00004.npy", np.float64(1.5)),
     r"VEGAS_classes/class0_video_00004.npy: clip 'class0_video_00004': label must be an "
     r"integer >= 0; got 1.5"),
    (lambda r: np.save(r / "vgg" / "class1_video_00001.npy", np.full((2, 128), np.nan)),
     r"vgg/class1_video_00001.npy: clip 'class1_video_00001' has NaN or inf values"),
    (lambda r: (r / "folds" / "fold4.txt").write_text("class0_video_00000\n"),
     r"fold4.txt: clip 'class0_video_00000' is also in fold file .*fold0.txt"),
    (lambda r: (r / "folds" / "fold4.txt").write_text("../../../etc/passwd\n"),
     r"folds: clip id '../../../etc/passwd' has an empty, '.' or '..' part; names must stay"),
    (lambda r: (r / "folds" / "fold4.txt").write_text("/abs/clip\n"),
     r"folds: clip id '/abs/clip' is absolute; names must stay inside the data set"),
    (lambda r: (r / "VEGAS_classes").rename(r / "classes"),
     r"needs folders vgg, inception, VEGAS_classes, folds; missing VEGAS_classes"),
])
def test_vegas_bad_release_one_line_naming_clip_and_file(tmp_path, capsys, damage, message):
    from jobs import crossval
    write_vegas_release(tmp_path / "v")
    damage(tmp_path / "v")
    with pytest.raises(DataError, match=message):
        load_source(f"vegas:{tmp_path / 'v'}")
    assert crossval.main(["--data", f"vegas:{tmp_path / 'v'}", "--methods", "cca"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crossval: error: ") and "\n" not in err


def test_vegas_plain_layout_refuses_clip_ids_leaving_the_folder(tmp_path):
    root = tmp_path / "plain"
    (root / "audio").mkdir(parents=True)
    (root / "visual").mkdir()
    np.save(tmp_path / "secret.npy", np.zeros((2, 4)))  # beside the data set, not in it
    for i in range(4):
        np.save(root / "audio" / f"c{i}.npy", np.ones((2, 4)))
        np.save(root / "visual" / f"c{i}.npy", np.ones((2, 4)))
    (root / "labels.csv").write_text("clip_id,label\nc0,0\nc1,1\n../../secret,0\nc3,1\n")
    with pytest.raises(DataError, match=r"labels.csv: clip id '../../secret' has an empty, "
                       r"'.' or '..' part"):
        load_source(f"vegas:{root}")
