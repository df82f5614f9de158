"""Data sources: the bundled data, npz, the VEGAS/AVE clip format, synthetic data."""

from pathlib import Path

import numpy as np
import pytest

from tests.support import SHARED
from tnn.errors import ConfigError, DataError
from tnn.data.sources import load_source, uci_mfeat
from tnn.data.synthetic import iter_synthetic, synthetic, synthetic_labels
from tnn.data.vegas import from_clip_dir, pool_clip

UCI = SHARED / "data" / "uci_mfeat"


def test_uci_default_pairing_and_shapes():
    p = load_source("uci-mfeat")
    assert p.name == "uci-mfeat:fou,pix"
    assert p.audio.shape == (2000, 76) and p.visual.shape == (2000, 240)
    assert p.audio.dtype == np.float32 and p.labels.dtype == np.int64
    assert np.bincount(p.labels).tolist() == [200] * 10
    assert len(set(p.clip_ids)) == 2000 and p.num_classes == 10


@pytest.mark.skipif(not UCI.is_dir(), reason="the shared UCI CSVs are not beside the checkout")
@pytest.mark.parametrize("view", ["fou", "fac", "kar", "pix", "zer", "mor"])
def test_uci_bundle_equals_the_original_csv(view):
    table = np.loadtxt(UCI / f"mfeat-{view}.csv", delimiter=",", skiprows=1)
    p = uci_mfeat(view, "pix" if view != "pix" else "fou")
    np.testing.assert_allclose(p.audio, table[:, :-1], rtol=2e-7, atol=0)
    assert np.array_equal(p.labels, table[:, -1].astype(int))


def test_uci_unknown_view():
    with pytest.raises(DataError, match="unknown view 'abc'; choose from fou, fac"):
        load_source("uci-mfeat:fou,abc")
    with pytest.raises(DataError, match="expected two views"):
        load_source("uci-mfeat:fou")


def test_npz_round_trip_and_optional_keys(tmp_path):
    rng = np.random.default_rng(0)
    a, v, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 6)), np.arange(30) % 3
    np.savez(tmp_path / "d.npz", audio=a, visual=v, labels=y)
    p = load_source(f"npz:{tmp_path / 'd.npz'}")
    assert p.audio.shape == (30, 4) and p.num_classes == 3 and p.clip_ids[0].startswith(str(tmp_path))
    np.savez(tmp_path / "e.npz", audio=a, visual=v, labels=y.astype(float),
             clip_ids=np.array([f"c{i}" for i in range(30)]), class_names=np.array(["x", "y", "z"]))
    q = load_source(str(tmp_path / "e.npz"))
    assert q.class_names == ("x", "y", "z") and q.clip_ids[3] == "c3"
    np.testing.assert_array_equal(q.visual, v.astype(np.float32))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("visual"), r"missing key\(s\) \['visual'\]"),
    (lambda d: d.update(audio=np.zeros((29, 4))), "'audio' has 29 rows but 'labels' has 30"),
    (lambda d: d.update(audio=np.zeros(30)), r"'audio' must be a 2-D matrix \(N, D\); got shape \(30,\)"),
    (lambda d: d["visual"].__setitem__((5, 2), np.nan), "'visual' has NaN or inf values .first at row 5"),
    (lambda d: d["audio"].__setitem__((7, 0), np.inf), "'audio' has NaN or inf values .first at row 7"),
    (lambda d: d.update(labels=np.arange(30) * 0.5), "'labels' must be integers; row 1 is 0.5"),
    (lambda d: d.update(labels=np.arange(30) - 1), "'labels' must be >= 0; row 0 is -1"),
    (lambda d: d.update(labels=np.zeros(30, int)), "needs at least 2 classes; all 30 rows have label 0"),
    (lambda d: d.update(clip_ids=np.array(["a"] * 2 + [f"c{i}" for i in range(28)])),
     r"duplicate clip id 'a' \(rows \[0, 1\]\)"),
    (lambda d: d.update(audio=np.zeros((0, 4)), visual=np.zeros((0, 6)), labels=np.zeros(0, int)),
     "empty"),
])
def test_npz_bad_input_names_the_problem(tmp_path, change, message):
    rng = np.random.default_rng(1)
    d = {"audio": rng.normal(size=(30, 4)), "visual": rng.normal(size=(30, 6)),
         "labels": np.arange(30) % 3}
    change(d)
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(DataError, match=message):
        load_source(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_missing_or_corrupt_file(tmp_path):
    with pytest.raises(DataError, match="npz file not found"):
        load_source(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: not a readable npz file"):
        load_source(f"npz:{tmp_path / 'junk.npz'}")


def _write_clip_dir(root: Path, n=12, quantised=True, names=False):
    rng = np.random.default_rng(3)
    (root / "audio").mkdir(parents=True)
    (root / "visual").mkdir()
    labels = np.arange(n) % 3
    rows = ["clip_id,label"]
    for i in range(n):
        t_a, t_v = rng.integers(1, 6), rng.integers(1, 6)
        if quantised:
            a = rng.integers(0, 256, size=(t_a, 128), dtype=np.uint8)
            v = rng.integers(0, 256, size=(t_v, 1024), dtype=np.uint8)
        else:
            a, v = rng.normal(size=(t_a, 128)), rng.normal(size=(t_v, 1024)).astype(np.float32)
        np.save(root / "audio" / f"vid{i}.npy", a)
        np.save(root / "visual" / f"vid{i}.npy", v)
        rows.append(f"vid{i},{['dog', 'car', 'rain'][labels[i]] if names else labels[i]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return labels


@pytest.mark.parametrize("quantised", [True, False])
def test_vegas_clip_dir_pools_and_dequantises(tmp_path, quantised):
    labels = _write_clip_dir(tmp_path, quantised=quantised)
    p = load_source(f"vegas:{tmp_path}")
    assert p.audio.shape == (12, 128) and p.visual.shape == (12, 1024)
    raw = np.load(tmp_path / "audio" / "vid4.npy")
    expect = (raw.astype(np.float64) - 128) / 256 if quantised else raw
    np.testing.assert_allclose(p.audio[4], expect.mean(axis=0), rtol=1e-6, atol=1e-7)
    assert np.array_equal(p.labels, labels) and p.clip_ids[4] == "vid4"


def test_vegas_class_names_and_errors(tmp_path):
    _write_clip_dir(tmp_path / "ok", names=True)
    p = from_clip_dir(tmp_path / "ok")
    assert p.class_names == ("car", "dog", "rain") and p.labels[0] == 1
    (tmp_path / "ok" / "visual" / "vid3.npy").unlink()
    with pytest.raises(DataError, match=r"vid3.npy: missing feature file for clip 'vid3'"):
        from_clip_dir(tmp_path / "ok")
    with pytest.raises(DataError, match="needs labels.csv"):
        from_clip_dir(tmp_path / "ok" / "audio")
    with pytest.raises(DataError, match="uint8 or float; got dtype"):
        pool_clip(np.array([["a"]]), "x.npy")


def test_synthetic_shape_determinism_and_streaming():
    p = synthetic(n=5000, seed=3)
    assert p.audio.shape == (5000, 128) and p.visual.shape == (5000, 1024) and p.num_classes == 10
    q = synthetic(n=5000, seed=3)
    assert np.array_equal(p.visual, q.visual) and np.array_equal(p.clip_ids, q.clip_ids)
    chunks = list(iter_synthetic(chunk_rows=1000, n=5000, seed=3))
    assert len(chunks) == 2  # whole 4096-row blocks per chunk
    assert np.array_equal(np.concatenate([c.audio for c in chunks]), p.audio)
    assert np.array_equal(synthetic_labels(n=5000, seed=3), p.labels)
    assert not np.array_equal(synthetic(n=100, seed=4).audio, p.audio[:100])


def test_synthetic_classes_are_not_linearly_separable():
    p = synthetic(n=4000, seed=0)
    # Class means of both views are (near) zero: symmetric modes through an odd map.
    for x in (p.audio, p.visual):
        means = np.stack([x[p.labels == c].mean(0) for c in range(10)])
        assert np.abs(means).mean() < 0.05 * x.std()


def test_synthetic_spec_errors():
    with pytest.raises(ConfigError, match="unknown option 'foo'"):
        load_source("synthetic:n=10,foo=1")
    with pytest.raises(ConfigError, match="even modes"):
        load_source("synthetic:n=10,modes=3")
    assert load_source("synthetic:n=500,visual_dim=32").visual.shape == (500, 32)


def test_unknown_source():
    with pytest.raises(DataError, match="unknown data source 'foo:bar'"):
        load_source("foo:bar")


def _npy(arr, shape=None) -> bytes:
    import io
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": arr.dtype.str, "fortran_order": False,
                                             "shape": shape or arr.shape})
    return f.getvalue() + arr.tobytes()


def test_npz_headers_are_checked_against_sizes_and_nothing_is_unpickled(tmp_path):
    """A header claiming 10**12 rows, an object array, a corrupt member and a .npy given as an
    npz are refused, naming the file and the array, before anything is allocated."""
    import zipfile
    ok = {"audio": np.ones((4, 2)), "visual": np.ones((4, 3)), "labels": np.arange(4) % 2}

    def archive(name, edit=None, method=zipfile.ZIP_STORED):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w", method) as z:
            for key, arr in ok.items():
                z.writestr(f"{key}.npy", edit(key, arr) if edit else _npy(arr))
        return path
    lie = archive("lie.npz", lambda k, a: _npy(a, (10**12,)) if k == "labels" else _npy(a))
    with pytest.raises(DataError, match=r"lie.npz: 'labels': the header says shape "
                                        r"\(1000000000000,\) of int64 \(8000000000000 bytes\) "
                                        r"but the file holds 32 bytes of data"):
        load_source(f"npz:{lie}")
    obj = tmp_path / "obj.npz"
    np.savez(obj, audio=np.array([[1, 2], [3]], dtype=object), visual=ok["visual"],
             labels=ok["labels"])
    with pytest.raises(DataError, match="obj.npz: 'audio': dtype object is not read"):
        load_source(f"npz:{obj}")
    good = archive("good.npz", method=zipfile.ZIP_DEFLATED)
    assert load_source(f"npz:{good}").n == 4
    data = bytearray(archive("crc.npz").read_bytes())
    data[data.index(b"NUMPY") + 120] ^= 1  # a data byte of the first member
    (tmp_path / "crc.npz").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"crc.npz: 'audio': corrupt archive member \(Bad CRC"):
        load_source(f"npz:{tmp_path / 'crc.npz'}")
    np.save(tmp_path / "a.npy", ok["audio"])
    with pytest.raises(DataError, match=r"a.npy: a .npy array, not an .npz archive"):
        load_source(f"npz:{tmp_path / 'a.npy'}")
