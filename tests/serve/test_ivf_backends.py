"""IVF backends: FAISS (optional extra, chosen automatically) against exact search, numpy when
it is missing or asked for, lists saved by one loaded by the other, and saved files read as
data only (no pickle, shapes checked, shard names inside the index)."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from tnn.errors import ConfigError, DataError
from tnn.serve import index as es
from tnn.serve import ivf as ivf_lists
from tnn.serve import search as retrieval
from tnn.serve.ivf import IVFIndex

HAVE_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss-cpu is not installed "
                                 "(pip install -e '.[faiss]')")
MODEL = {"model_uri": "runs:/r1", "name": None, "alias": None, "versions": None, "run_id": "r1"}


def _clustered(n, d=10, clusters=20, seed=0, spread=0.15):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return retrieval.normalise(centres[rng.integers(clusters, size=n)] +
                               spread * rng.normal(size=(n, d)))


@needs_faiss
def test_faiss_recall_against_exact_search():
    from tnn.serve.faiss_ivf import FaissIVF
    g, q = _clustered(20_000), _clustered(300, seed=1)
    exact_rows, exact_scores = retrieval.exact_search(q, g, 10)
    ivf = FaissIVF.build(g, seed=0)
    assert ivf.nlist == int(4 * np.sqrt(20_000))
    assert np.bincount(ivf.assignment(), minlength=ivf.nlist).sum() == 20_000
    rows, scores = ivf.search(q, 10, nprobe=32)
    assert rows.dtype == np.int64 and rows.shape == (300, 10)
    assert retrieval.recall_at_k(rows, exact_rows) >= 0.95
    assert retrieval.recall_at_k(ivf.search(q, 10, nprobe=1)[0], exact_rows) < 0.95
    all_rows, all_scores = ivf.search(q, 10, nprobe=ivf.nlist)  # every list: exact
    assert retrieval.recall_at_k(all_rows, exact_rows) == 1.0
    np.testing.assert_allclose(all_scores, exact_scores, atol=1e-5)


@needs_faiss
def test_faiss_pads_missing_hits_like_numpy():
    from tnn.serve.faiss_ivf import FaissIVF
    g = np.eye(4, dtype=np.float32)
    ivf = FaissIVF.from_lists(g, g, np.arange(4))
    rows, scores = ivf.search(g[:1], 3, nprobe=1)
    assert rows.tolist() == [[0, -1, -1]] and scores[0, 0] == 1 and np.isinf(scores[0, 1:]).all()
    with pytest.raises(ConfigError, match="nprobe must be >= 1"):
        ivf.search(g, 3, nprobe=0)
    with pytest.raises(DataError, match="queries have width 3, the gallery 4"):
        ivf.search(np.ones((1, 3)), 3)


@needs_faiss
def test_faiss_is_chosen_automatically_and_saved_lists_load_into_both(tmp_path, monkeypatch):
    from tnn.serve.faiss_ivf import FaissIVF
    monkeypatch.delenv("TNN_IVF_BACKEND", raising=False)
    assert ivf_lists.backend() == "faiss"
    uri, index = _write(tmp_path, 3000)
    q = index.emb["audio_emb"][:50]
    assert isinstance(index.ivf("visual_emb"), FaissIVF)  # what search(approx=True) uses
    hits = index.search(q, "audio", k=10, approx=True, nprobe=8)
    exact = index.search(q, "audio", k=10)
    assert retrieval.recall_at_k(hits.rows, exact.rows) >= 0.9
    man = es.read_manifest(uri)
    built = index.ivf("visual_emb")
    es.save_ivf(uri, "visual_emb", built, man)
    for name, kind in (("faiss", FaissIVF), ("numpy", IVFIndex)):
        monkeypatch.setenv("TNN_IVF_BACKEND", name)
        loaded = es.load_index(uri).ivf("visual_emb")
        assert isinstance(loaded, kind)
        assert np.array_equal(loaded.assignment(), built.assignment())
        every = loaded.search(q, 10, nprobe=loaded.nlist)[0]
        assert retrieval.recall_at_k(every, exact.rows) == 1.0


def test_ivf_backend_falls_back_to_numpy_without_faiss(monkeypatch):
    monkeypatch.delenv("TNN_IVF_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed: import fails
    assert ivf_lists.backend() == "numpy"
    g = _clustered(2000)
    assert isinstance(ivf_lists.build(g, 20), IVFIndex)
    index = es.Index([f"c{i}" for i in range(2000)], np.zeros(2000), g, g, MODEL)
    index.search(g[:3], "audio", k=5, approx=True)
    assert isinstance(index.ivf("visual_emb"), IVFIndex)
    with pytest.raises(ConfigError, match="IVF backend 'faiss' is not installed"):
        ivf_lists.backend("faiss")
    with pytest.raises(ConfigError, match="IVF backend must be one of faiss, numpy; got 'x'"):
        ivf_lists.backend("x")


def _write(tmp_path, n=200):
    g = _clustered(n, d=6)
    uri = str(tmp_path / "index")
    with es.EmbeddingWriter(uri, model=MODEL, rows_per_shard=max(1, n // 2)) as w:
        w.write(np.array([f"c{i}" for i in range(n)]), np.arange(n) % 3, g, g)
    return uri, es.load_index(uri)


def test_saved_ivf_lists_are_data_only_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TNN_IVF_BACKEND", "numpy")
    uri, index = _write(tmp_path)
    man = es.read_manifest(uri)
    path = tmp_path / "index" / "_ivf-visual_emb.npz"
    np.savez(path, centroids=np.array([object()], dtype=object), assign=np.zeros(200, int),
             index_id=np.array(man.index_id))  # a pickled array: never loaded
    with pytest.raises(DataError, match=r"_ivf-visual_emb.npz: not readable IVF lists "
                       r"\(ValueError: .*allow_pickle"):
        es.load_index(uri)
    cent = np.eye(6, dtype=np.float32)[:4]
    np.savez(path, centroids=cent, assign=np.full(200, 7), index_id=np.array(man.index_id))
    with pytest.raises(DataError, match=r"_ivf-visual_emb.npz: IVF lists do not fit the "
                       r"gallery: centroids \(4, 6\)"):
        es.load_index(uri)
    np.savez(path, centroids=cent, assign=np.zeros(200, int), index_id=np.array("other"))
    assert es.load_index(uri)._ivf == {}  # lists of an earlier index are not used


@pytest.mark.parametrize("name", ["../outside.parquet", "/etc/passwd", "s3://other/x.parquet"])
def test_index_manifest_shard_names_stay_inside_the_index(tmp_path, name):
    uri, _ = _write(tmp_path)
    manifest = tmp_path / "index" / "_manifest.json"
    doc = json.loads(manifest.read_text())
    doc["shards"][0]["file"] = name
    manifest.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"_manifest.json: shard file .* names must stay inside"):
        es.load_index(uri)
