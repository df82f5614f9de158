"""jobs.query: output (table, JSON), exact = stream = brute force, refusals as one line."""

import json

import numpy as np
import pytest

from jobs import query
from tnn.tracking import query as tracking_query
from tests.reference import search as ref
from tnn.serve import index as es
from tnn.serve import search as retrieval

MODEL = {"model_uri": "runs:/r1", "run_id": "r1"}


@pytest.fixture
def index(tmp_path):
    rng = np.random.default_rng(0)
    a, v = (retrieval.normalise(rng.normal(size=(300, 5))) for _ in range(2))
    uri = str(tmp_path / "index")
    with es.EmbeddingWriter(uri, model=MODEL, class_names=("x", "y", "z"),
                            rows_per_shard=128) as w:
        w.write(np.array([f"clip{i}" for i in range(300)]), np.arange(300) % 3, a, v)
    np.save(tmp_path / "q.npy", rng.normal(size=(2, 5)).astype(np.float32))
    return uri, a, v, tmp_path


def test_table_output_matches_brute_force(index, capsys):
    uri, a, v, tmp = index
    assert query.main(["--index", uri, "--audio", str(tmp / "q.npy"), "--embedded",
                       "--k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    q = retrieval.normalise(np.load(tmp / "q.npy"))
    rows, scores = ref.topk(q, v, 3)
    assert out[0] == "query 0:"
    r, s = rows[0, 0], scores[0, 0]
    assert out[1] == f"    1  clip{r:<20d} {s:8.4f}  label {r % 3} ({'xyz'[r % 3]})"
    assert out[4] == "query 1:" and len(out) == 9
    assert out[-1].startswith(f"query: 2 audio queries -> top 3 visual clips of {uri} "
                              "(300 rows, exact) in ")


@pytest.mark.parametrize("flags", [[], ["--stream"], ["--approx", "--nprobe", "1000"]])
def test_json_output_each_search_path(index, capsys, flags):
    uri, a, v, tmp = index
    assert query.main(["--index", uri, "--visual", str(tmp / "q.npy"), "--embedded", "--json",
                       "--k", "4"] + flags) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    rows, scores = ref.topk(retrieval.normalise(np.load(tmp / "q.npy")), a, 4)
    assert doc["modality"] == "visual" and doc["model"]["run_id"] == "r1"
    assert [[h["clip_id"] for h in hits] for hits in doc["results"]] == \
        [[f"clip{r}" for r in row] for row in rows]
    np.testing.assert_allclose([[h["score"] for h in hits] for hits in doc["results"]],
                               scores, atol=1e-6)
    assert captured.err.startswith("query: 2 visual queries -> top 4 audio clips")


@pytest.mark.parametrize("index_name, query_file, extra, message", [
    ("index", "q.npy", ["--k", "0"], "k must be an integer >= 1; got 0"),
    ("index", "wide.npy", [], "{tmp}/index: query embeddings have shape (1, 7), but the index "
                              "column 'visual_emb' has width 5"),
    ("empty", "q.npy", [], "{tmp}/empty: the index is empty (0 rows): nothing to search"),
    ("index", "nan.npy", [], "{tmp}/nan.npy: row 0 has NaN or inf values"),
    ("features", "q.npy", [], "{tmp}/features: no _manifest.json: not an embedding index"),
])
def test_refusals_are_one_line(index, capsys, index_name, query_file, extra, message):
    uri, a, v, tmp = index
    np.save(tmp / "wide.npy", np.ones(7, np.float32))
    np.save(tmp / "nan.npy", np.full((1, 5), np.nan, np.float32))
    with es.EmbeddingWriter(str(tmp / "empty"), model=MODEL):
        pass
    assert query.main(["--index", str(tmp / index_name), "--audio", str(tmp / query_file),
                       "--embedded"] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("query: error: " + message.format(tmp=tmp)) and "\n" not in err


def test_smoke(capsys):
    assert query.main(["--smoke", "--k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["1", "clip0"] and "(2000 rows, exact)" in out[-1]


@pytest.fixture(scope="module")
def registered_index(tmp_path_factory):
    """uci-mfeat embedded (without Ray) by c-cca registered as tnn@champion in a temp store."""
    from tnn.ray.embed import embed_batch
    from tnn.tracking.registry import smoke_model
    from tnn.tracking import registry
    from tnn.data.sources import load_source
    tmp = tmp_path_factory.mktemp("registered")
    uri = f"sqlite:///{tmp}/mlflow.db"
    smoke_model(uri)
    enc = registry.load_encoders("models:/tnn@champion", tracking_uri=uri)
    p = load_source("uci-mfeat")
    rows = embed_batch({"clip_id": p.clip_ids, "label": p.labels, "audio": p.audio,
                        "visual": p.visual}, enc.audio.predict, enc.visual.predict)
    with es.EmbeddingWriter(str(tmp / "index"), model=enc.info,
                            class_names=p.class_names, rows_per_shard=700) as w:
        w.write(rows["clip_id"], rows["label"], rows["audio_emb"], rows["visual_emb"])
    return uri, tmp, p, enc, rows


def test_raw_features_are_embedded_and_models_checked(registered_index, capsys):
    from tnn.tracking.registry import smoke_model
    uri, tmp, p, enc, rows = registered_index
    np.save(tmp / "sounds.npy", p.audio[:3])
    np.save(tmp / "narrow.npy", p.audio[:3, :75])
    run = enc.info["run_id"]
    base = ["--index", str(tmp / "index"), "--tracking-uri", uri, "--k", "5", "--json"]
    want = ref.topk(enc.audio.predict(p.audio[:3]), rows["visual_emb"], 5)[0]
    for extra in ([], ["--model", "models:/tnn@champion"], ["--stream"]):
        assert query.main(base + ["--audio", str(tmp / "sounds.npy")] + extra) == 0
        doc = json.loads(capsys.readouterr().out)
        assert [[h["clip_id"] for h in hits] for hits in doc["results"]] == \
            p.clip_ids[want].tolist()
    assert doc["model"]["versions"] == {"audio": "1", "visual": "1"}
    hits = tracking_query.query(str(tmp / "index"), p.visual[:2], "visual", 3, tracking_uri=uri)
    np.testing.assert_array_equal(
        hits.rows, ref.topk(enc.visual.predict(p.visual[:2]), rows["audio_emb"], 3)[0])
    assert query.main(base + ["--audio", str(tmp / "narrow.npy")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"query: error: narrow.npy: audio features have width 75; the audio encoder of "
        f"runs:/{run} (run {run}) takes 76")
    newer = smoke_model(uri)  # a new run registered as version 2 and made champion
    capsys.readouterr()
    assert query.main(base + ["--audio", str(tmp / "sounds.npy"), "--model",
                              "models:/tnn@champion"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"query: error: {tmp / 'index'}: the index was built by tnn@champion (audio v1, visual "
        f"v1, run {run}) but the query encoder is tnn@champion (audio v2, visual v2, run "
        f"{newer['run_id']}): embeddings of different model versions are not comparable; "
        f"rebuild the index with this model (python -m jobs.embed) or query with the model "
        f"that built it (--model runs:/{run})")
    assert query.main(base + ["--audio", str(tmp / "sounds.npy")]) == 0  # its own model


def test_build_ivf_saves_lists_that_approx_search_loads(index, capsys):
    uri, a, v, tmp = index
    assert query.main(["--index", uri, "--build-ivf", "--nlist", "6", "--nprobe", "6"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("query: IVF of visual_emb: 6 lists in ") and \
        "recall@10 1.0000 at nprobe 6 (300 audio rows as queries)" in out[0]
    assert out[1].startswith("query: IVF of audio_emb: 6 lists") and len(out) == 3
    loaded = es.load_index(uri)
    saved = loaded.ivf("visual_emb")
    assert saved.nlist == 6 and (tmp / "index" / "_ivf-visual_emb.npz").is_file()
    np.testing.assert_array_equal(saved.vectors, v[saved.rows])
    q = np.load(tmp / "q.npy")
    exact = loaded.search(q, "audio", k=5)
    approx = loaded.search(q, "audio", k=5, approx=True, nprobe=6)
    np.testing.assert_array_equal(approx.rows, exact.rows)  # every list probed
    # a rewritten index has a new id: the stale lists on disk are ignored
    with es.EmbeddingWriter(uri, model=MODEL, overwrite=True) as w:
        w.write(np.array(["n0", "n1"]), np.zeros(2), a[:2], v[:2])
    assert (tmp / "index" / "_ivf-visual_emb.npz").is_file()
    assert es.load_index(uri)._ivf == {}
