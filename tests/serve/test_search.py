"""Top-k search (exact against the brute-force reference, IVF recall), refusals, and the
embedding index format (round trip, partial writes) on local disk and S3."""

import numpy as np
import pytest

from tests.reference import search as ref
from tnn.serve import index as es
from tnn.serve.ivf import IVFIndex
from tnn.serve import search as retrieval
from tnn.errors import ConfigError, DataError
from tnn.data.shard_writer import ShardWriter

MODEL = {"model_uri": "models:/tnn@champion", "name": "tnn", "alias": "champion",
         "versions": {"audio": "3", "visual": "3"}, "run_id": "r3"}


def _integer_data(seed, n, q=9, d=3):
    """Small integers: every dot product is exact in float32, so ties are real ties."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-2, 3, size=(q, d)).astype(np.float32),
            rng.integers(-2, 3, size=(n, d)).astype(np.float32))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunks", [(1, 1), (2, 3), (4, 7), (1024, None)])
def test_exact_search_equals_reference_with_ties_and_chunk_boundaries(seed, chunks):
    q, g = _integer_data(seed, n=[1, 5, 17, 40, 64, 101][seed])
    for k in (1, 3, 10, 200):
        rows, scores = retrieval.exact_search(q, g, k, query_chunk=chunks[0],
                                              gallery_chunk=chunks[1])
        want_rows, want_scores = ref.topk(q, g, k)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(scores, want_scores)


def test_exact_search_on_unit_rows_float32_and_float64():
    rng = np.random.default_rng(1)
    g, q = rng.normal(size=(500, 16)), rng.normal(size=(40, 16))
    g, q = g / np.linalg.norm(g, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1)[:, None]
    want_rows, want_scores = ref.topk(q, g, 10)
    rows, scores = retrieval.exact_search(q, g, 10, gallery_chunk=37)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-12)
    rows32, scores32 = retrieval.exact_search(q.astype(np.float32), g.astype(np.float32), 10,
                                              query_chunk=7, gallery_chunk=64)
    assert scores32.dtype == np.float32
    np.testing.assert_array_equal(rows32, want_rows)  # no near-ties in this draw
    np.testing.assert_allclose(scores32, want_scores, atol=1e-6)


def test_all_tied_scores_keep_gallery_order():
    g = np.ones((50, 2), np.float32)
    rows, scores = retrieval.exact_search(np.ones((3, 2), np.float32), g, 7, gallery_chunk=6)
    np.testing.assert_array_equal(rows, np.tile(np.arange(7), (3, 1)))
    assert (scores == 2).all()


def test_running_topk_is_independent_of_block_order():
    q, g = _integer_data(7, n=90)
    acc = retrieval.TopK(len(q), 5)
    for g0 in np.random.default_rng(0).permutation(np.arange(0, 90, 11)):
        acc.add(q @ g[g0:g0 + 11].T, int(g0))
    rows, scores = acc.result()
    np.testing.assert_array_equal(rows, ref.topk(q, g, 5)[0])


def _clustered(n, d=12, clusters=20, seed=0, spread=0.15):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(clusters, size=n)] + spread * rng.normal(size=(n, d))
    return retrieval.normalise(x)


def test_ivf_recall_on_clustered_data():
    g, q = _clustered(6000), _clustered(200, seed=1)
    exact_rows, _ = retrieval.exact_search(q, g, 10)
    ivf = IVFIndex.build(g, seed=0)
    assert ivf.nlist == int(4 * np.sqrt(6000))
    assert sorted(ivf.rows.tolist()) == list(range(6000))  # every row in exactly one list
    rows, _ = ivf.search(q, 10, nprobe=16)
    assert retrieval.recall_at_k(rows, exact_rows) >= 0.95
    assert retrieval.recall_at_k(ivf.search(q, 10, nprobe=1)[0], exact_rows) < 1.0


def test_ivf_probing_every_list_is_exact_search():
    q, g = _integer_data(3, n=300)
    ivf = IVFIndex.build(g, nlist=9, seed=2)
    rows, scores = ivf.search(q, 12, nprobe=9)
    want_rows, want_scores = ref.topk(q, g, 12)
    np.testing.assert_array_equal(rows, want_rows)  # same order, ties by gallery row
    np.testing.assert_array_equal(scores, want_scores)


def test_ivf_pads_missing_hits_and_recall_counts_them():
    g = np.eye(4, dtype=np.float32)
    ivf = IVFIndex.build(g, nlist=4)
    rows, scores = ivf.search(g[:1], 3, nprobe=1)
    assert rows.tolist() == [[0, -1, -1]] and scores[0, 0] == 1 and np.isinf(scores[0, 1:]).all()
    assert retrieval.recall_at_k(rows, np.array([[0, 1, 2]])) == pytest.approx(1 / 3)


def _index(n=30, model=MODEL, width=4):
    rng = np.random.default_rng(0)
    return es.Index([f"c{i}" for i in range(n)], np.arange(n) % 3,
                           retrieval.normalise(rng.normal(size=(n, width))),
                           retrieval.normalise(rng.normal(size=(n, width))), model, "idx")


def test_index_searches_the_other_modality():
    index, rng = _index(), np.random.default_rng(5)
    q = rng.normal(size=(2, 4))
    hits = index.search(q, "audio", k=5)
    want = ref.topk(retrieval.normalise(q), index.emb["visual_emb"], 5)
    np.testing.assert_array_equal(hits.rows, want[0])
    assert hits.clip_ids[0, 0] == f"c{want[0][0, 0]}" and hits.labels[0, 0] == want[0][0, 0] % 3
    back = index.search(q, "visual", k=3, model=dict(MODEL))
    np.testing.assert_array_equal(back.rows, ref.topk(retrieval.normalise(q),
                                                      index.emb["audio_emb"], 3)[0])
    approx = index.search(q, "audio", k=5, approx=True, nprobe=100)
    np.testing.assert_array_equal(approx.rows, hits.rows)
    assert hits.to_list()[0][0] == {"rank": 1, "clip_id": hits.clip_ids[0, 0],
                                    "score": float(hits.scores[0, 0]),
                                    "label": int(hits.labels[0, 0])}


def test_refusals_name_the_problem():
    index = _index()
    q = np.ones((1, 4))
    with pytest.raises(ConfigError, match=r"^k must be an integer >= 1; got 0$"):
        index.search(q, "visual", k=0)
    with pytest.raises(ConfigError, match="query modality must be 'audio' or 'visual'"):
        index.search(q, "text")
    with pytest.raises(DataError) as err:
        index.search(np.ones((2, 6)), "audio")
    assert str(err.value) == ("idx: query embeddings have shape (2, 6), but the index column "
                              "'visual_emb' has width 4")
    empty = es.Index(np.array([], str), np.array([], np.int32), np.zeros((0, 4)),
                            np.zeros((0, 6)), MODEL, "s3://b/empty")
    with pytest.raises(DataError, match=r"^s3://b/empty: the index is empty \(0 rows\): "
                                        r"nothing to search$"):
        empty.search(np.ones((1, 6)), "audio")
    newer = {**MODEL, "versions": {"audio": "4", "visual": "4"}, "run_id": "r4"}
    with pytest.raises(DataError) as err:
        index.search(np.ones((1, 4)), "audio", model=newer)
    assert str(err.value) == (
        "idx: the index was built by tnn@champion (audio v3, visual v3, run r3) but the query "
        "encoder is tnn@champion (audio v4, visual v4, run r4): embeddings of different model "
        "versions are not comparable; rebuild the index with this model (python -m jobs.embed)"
        " or query with the model that built it (--model runs:/r3)")
    with pytest.raises(DataError, match="different model versions"):  # same run, other version
        index.search(np.ones((1, 4)), "audio", model={**MODEL, "versions": {"audio": "5",
                                                                            "visual": "5"}})
    with pytest.raises(DataError, match=r"query embeddings: row 0 has NaN or inf values"):
        index.search(np.full((1, 4), np.nan), "audio")


def _write_index(uri, n=50, rows_per_shard=20, chunk=8, **kw):
    index = _index(n)
    with es.EmbeddingWriter(uri, model=MODEL, source="src", class_names=("a", "b", "c"),
                            rows_per_shard=rows_per_shard, **kw) as w:
        for i in range(0, n, chunk):
            s = slice(i, i + chunk)
            w.write(index.clip_ids[s], index.labels[s], index.emb["audio_emb"][s],
                    index.emb["visual_emb"][s])
    return index, w.manifest


def _round_trip(uri):
    index, man = _write_index(uri)
    assert man.shards == (("part-00000.parquet", 20), ("part-00001.parquet", 20),
                          ("part-00002.parquet", 10))
    assert es.read_manifest(uri) == man and man.model == MODEL and man.audio_dim == 4
    back = es.load_index(uri)
    np.testing.assert_array_equal(back.clip_ids, index.clip_ids)
    np.testing.assert_array_equal(back.labels, index.labels)
    for col in es.COLUMNS[2:]:
        np.testing.assert_array_equal(back.emb[col], index.emb[col].astype(np.float32))
    assert back.model == MODEL and back.class_names == ("a", "b", "c")
    q = np.random.default_rng(2).normal(size=(3, 4))
    for modality in ("audio", "visual"):
        want = back.search(q, modality, k=7, model=MODEL)
        got = es.search_stream(uri, q, modality, k=7, model=MODEL)
        for field in ("rows", "scores", "clip_ids", "labels"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    ivf = IVFIndex.build(back.emb["visual_emb"], nlist=5)
    assert es.save_ivf(uri, "visual_emb", ivf, man) == f"{uri}/_ivf-visual_emb.npz"
    saved = es.load_index(uri).ivf("visual_emb")
    np.testing.assert_array_equal(saved.assignment(), ivf.assignment())  # either backend
    np.testing.assert_array_equal(saved.centroids, ivf.centroids)
    with pytest.raises(DataError, match="already holds a data set, 3 shard"):
        _write_index(uri)
    _write_index(uri, n=10, overwrite=True)
    assert es.read_manifest(uri).rows == 10


def test_index_round_trip_local(tmp_path):
    _round_trip(str(tmp_path / "idx"))


@pytest.mark.s3
def test_index_round_trip_s3(s3_prefix):
    _round_trip(s3_prefix)


def test_partial_index_is_refused(tmp_path):
    uri = str(tmp_path / "idx")
    with pytest.raises(RuntimeError):
        with es.EmbeddingWriter(uri, model=MODEL, rows_per_shard=4) as w:
            w.write(np.array(["a"] * 9), np.zeros(9), np.ones((9, 2)), np.ones((9, 2)))
            raise RuntimeError("crash")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        "part-00000.parquet", "part-00001.parquet"]  # published shards, no manifest
    with pytest.raises(DataError, match=r"idx: no _manifest.json: not an embedding index, or "
                                        r"its writing did not finish"):
        es.load_index(uri)


def test_empty_index_is_written_and_refused_at_search(tmp_path):
    uri = str(tmp_path / "idx")
    with es.EmbeddingWriter(uri, model=MODEL):
        pass
    assert es.read_manifest(uri).rows == 0
    with pytest.raises(DataError, match=r"idx: the index is empty \(0 rows\): nothing to search"):
        es.search_stream(uri, np.ones((1, 4)), "audio")
    with pytest.raises(DataError, match="the index is empty"):
        es.load_index(uri).search(np.ones((1, 4)), "audio")


def test_feature_shards_are_not_an_index(tmp_path):
    uri = str(tmp_path / "features")
    with ShardWriter(uri, class_names=["a"], folds=1, fold_seed=0) as w:
        w.write(np.ones((2, 3)), np.ones((2, 5)), [0, 0], ["x", "y"], [0, 0])
    with pytest.raises(DataError, match=r"features: not an embedding index \(its manifest is "
                                        r"not kind 'tnn-embeddings'"):
        es.read_manifest(uri)
