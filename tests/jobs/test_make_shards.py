"""jobs.make_shards: every source -> shards on the S3 server -> the same arrays and folds."""

import json
import re
import tracemalloc

import numpy as np
import pytest

from jobs import make_shards
from tnn.data import write as shard_write
from tests.data.test_sources import _write_clip_dir
from tnn.ray import dataset as data
from tnn.data import shards
from tnn.errors import DataError
from tnn.core.folds import assign_folds
from tnn.data.shard_writer import ShardWriter
from tnn.data.sources import load_source

SECRET = "zz-Do-Not-Print-This-Secret-42"
QUIET = {"log": lambda *a, **k: None}


def _sources(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", audio=rng.normal(size=(50, 3)), visual=rng.normal(size=(50, 5)),
             labels=np.arange(50) % 4, class_names=np.array(["w", "x", "y", "z"]))
    _write_clip_dir(tmp_path / "vegas")
    return {"uci": "uci-mfeat:fac,zer", "npz": f"npz:{tmp_path / 'd.npz'}",
            "vegas": f"vegas:{tmp_path / 'vegas'}", "synthetic": "synthetic:n=9000,seed=2"}


def _assert_same(got, want, folds):
    assert np.array_equal(got["audio"], want.audio) and np.array_equal(got["visual"], want.visual)
    assert np.array_equal(got["label"], want.labels) and np.array_equal(got["fold"], folds)
    assert list(got["clip_id"]) == list(want.clip_ids)


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.timeout(180)
def test_every_source_round_trips_through_s3_bit_for_bit(tmp_path, s3_bucket, ray_local):
    for kind, spec in _sources(tmp_path).items():
        uri = f"{s3_bucket}/round-trip/{kind}"
        man = shard_write.write(spec, uri, rows_per_shard=3000, chunk_rows=1000, folds=3,
                                seed=5, **QUIET)
        want = load_source(spec)
        folds = assign_folds(want.labels, 3, 5)
        assert man.rows == want.n and man.class_names == want.class_names
        back = load_source(uri)  # -> tnn.data.reader.read_pairs
        _assert_same({"audio": back.audio, "visual": back.visual, "label": back.labels,
                      "fold": back.folds, "clip_id": back.clip_ids}, want, folds)
        rows = [b for b in data.iter_numpy(data.dataset(uri), batch_size=777)]
        rows = {k: np.concatenate([b[k] for b in rows]) for k in rows[0]}
        order = np.argsort(np.argsort(want.clip_ids))  # source rank of each id
        rank = np.argsort(rows["clip_id"].astype(str))
        _assert_same({k: v[rank][order] for k, v in rows.items()}, want, folds)
        for c in range(want.num_classes):  # class-balanced folds
            per_fold = np.bincount(back.folds[back.labels == c], minlength=3)
            assert per_fold.max() - per_fold.min() <= 1


def test_reshard_a_local_set_and_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        make_shards.main(["--help"])
    assert exit_.value.code == 0 and "ray job submit" not in capsys.readouterr().err
    shard_write.write("uci-mfeat", str(tmp_path / "a"), rows_per_shard=700, folds=4, **QUIET)
    assert make_shards.main(["--source", str(tmp_path / "a"), "--out", str(tmp_path / "b"),
                             "--folds", "4", "--rows-per-shard", "1000"]) == 0
    a, b = load_source(str(tmp_path / "a")), load_source(str(tmp_path / "b"))
    assert np.array_equal(a.visual, b.visual) and np.array_equal(a.folds, b.folds)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(
        f"make_shards: wrote 2000 rows in 2 shards to {tmp_path / 'b'} (folds=4, seed=0)")


def test_smoke(capsys):
    assert make_shards.main(["--smoke"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("make_shards: wrote 2000 rows in 4 shards to ")
    assert "(folds=5, seed=0)" in last


@pytest.mark.s3
@pytest.mark.timeout(60)
def test_refusal_crash_overwrite_and_no_secret_in_output(s3_prefix, monkeypatch, capsys):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setattr(shard_write, "PROGRESS_SECONDS", 0.0)
    argv = ["--data", "synthetic:n=3000,visual_dim=16", "--out", s3_prefix,
            "--rows-per-shard", "1000", "--chunk-rows", "500"]
    assert make_shards.main(argv) == 0
    out = capsys.readouterr()
    assert f"{s3_prefix} (folds=5, seed=0)" in out.out
    lines = re.findall(r"^make_shards: shard (\d)/3 written: (\d+)/3000 rows, \d+ rows/s",
                       out.out, re.M)  # a line per shard (and per 0 s: PROGRESS_SECONDS)
    assert [n for n, _ in lines] == ["1", "2", "3"] and lines[-1] == ("3", "3000")
    assert make_shards.main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"make_shards: error: {s3_prefix}: already holds a data set, 3 shard(s); "
                   "pass --overwrite to replace it\n")
    publish = ShardWriter._publish

    def crash(self, tmp, name):
        if name.startswith("part-00002"):
            raise DataError("simulated crash")
        publish(self, tmp, name)

    monkeypatch.setattr(ShardWriter, "_publish", crash)
    assert make_shards.main(argv + ["--overwrite"]) == 2
    assert load_source(s3_prefix).n == 3000  # write-then-publish: the old set is still there
    monkeypatch.setattr(ShardWriter, "_publish", publish)
    assert make_shards.main(argv) == 2
    assert "already holds a data set, 5 shard(s)" in capsys.readouterr().err  # 2 stray new
    assert make_shards.main(argv + ["--overwrite"]) == 0
    assert shards.validate(s3_prefix).rows == 3000
    everything = capsys.readouterr()
    assert SECRET not in everything.out + everything.err + out.out + out.err


def _peak_bytes(tmp_path, n: int) -> int:
    tracemalloc.start()
    shard_write.write(f"synthetic:n={n},audio_dim=8,visual_dim=64", str(tmp_path / str(n)),
                      rows_per_shard=20_000, chunk_rows=4096, **QUIET)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_synthetic_writing_is_streamed(tmp_path):
    _peak_bytes(tmp_path, 100)  # first-call imports and caches
    small, large = _peak_bytes(tmp_path, 12_000), _peak_bytes(tmp_path, 60_000)
    assert large < 1.3 * small, (small, large)  # 5x the rows, about the same peak (~10 MB)
    assert large < 60_000 * (8 + 64) * 4  # below the float data of the whole set (17 MB)


@pytest.mark.s3
@pytest.mark.timeout(120)
def test_crossval_uses_the_stored_folds(s3_prefix, tmp_path):
    from jobs import crossval
    shard_write.write("uci-mfeat", s3_prefix, folds=3, seed=4, **QUIET)
    for name, argv in (("s3", ["--data", s3_prefix]), ("mem", ["--data", "uci-mfeat",
                                                             "--seed", "4"])):
        assert crossval.main(argv + ["--methods", "cca", "--folds", "3", "--dim", "8",
                                     "--json", str(tmp_path / f"{name}.json"),
                                     "--set", "mlflow.enabled=false"]) == 0
    s3, mem = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("s3", "mem"))
    assert s3["methods"]["cca"]["a2v_map_folds"] == mem["methods"]["cca"]["a2v_map_folds"]
