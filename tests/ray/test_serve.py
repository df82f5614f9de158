"""The search app (tnn.ray.serve_app, tnn.ray.serving): the config file, request checks, the
refusal of an index built by another model version, and the app on the session's local Ray:
POST /search over HTTP on 127.0.0.1 (concurrent requests, so batched) equals in-process
search, and a promoted version is swapped in without a restart."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.support import ROOT, free_port
from tnn.data.sources import load_source
from tnn.errors import ConfigError, DataError
from tnn.methods.linear import CCAConfig, fit_linear
from tnn.ray import serve_app, serving
from tnn.tracking import registry
from tnn.tracking import runs as tracking
from tnn.tracking.query import query, write_index

CONFIG = ROOT / "cluster" / "serve.yaml"


def register(uri: str, p, dim: int) -> str:
    """c-cca of `dim` dimensions on `p` as a new version of `tnn` (no alias moved)."""
    logger, _ = tracking.open_run(uri, "serve-test", f"c-cca-{dim}")
    registry.log_model(logger, fit_linear(p, CCAConfig(dim=dim), beta=0.2))
    logger.finish()
    return registry.register_model(logger.run_id, "tnn", tracking_uri=uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """tnn v1 @champion with its index (index-v1), v2 registered with its index (index-v2)."""
    tmp = tmp_path_factory.mktemp("serve")
    uri, p = f"sqlite:///{tmp}/mlflow.db", load_source("uci-mfeat")
    registry.smoke_model(uri)
    write_index("models:/tnn/1", "uci-mfeat", f"{tmp}/index-v1", tracking_uri=uri)
    assert register(uri, p, dim=5) == "2"
    write_index("models:/tnn/2", "uci-mfeat", f"{tmp}/index-v2", tracking_uri=uri)
    return uri, tmp, p


def test_the_config_file_is_a_valid_serve_config_of_this_app(tmp_path):
    config = serving.read_config(CONFIG)
    app = config["applications"][0]
    assert app["import_path"] == "tnn.ray.serve_app:build" == serving.IMPORT_PATH
    assert set(app["args"]) == {"model", "index", "tracking_uri"}
    opts = serving.deployment_options(config)
    assert opts["autoscaling_config"]["max_replicas"] >= opts["autoscaling_config"]["min_replicas"]
    assert set(opts["user_config"]) == set(serve_app.DEFAULTS)
    dep = serve_app.Search.options(**opts)  # every setting is one the deployment takes
    assert dep.name == serve_app.DEPLOYMENT and dep.user_config == opts["user_config"]
    assert serve_app.build(app["args"]).__class__.__name__ == "Application"
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("name: Search", "name: Other"))
    with pytest.raises(ConfigError, match="no deployment named 'Search'"):
        serving.read_config(bad)
    bad.write_text(CONFIG.read_text().replace("max_replicas: 4", "max_replicas: many"))
    with pytest.raises(ConfigError, match="not a valid Serve config: max_replicas: Input should "
                                          "be a valid integer"):
        serving.read_config(bad)
    bad.write_text(CONFIG.read_text().replace("max_ongoing_requests: 64",
                                              "max_ongoing_requests: -1"))
    with pytest.raises(ConfigError, match=r"not a valid Serve config: applications\.0\."
                                          r"deployments\.0\.max_ongoing_requests"):
        serving.read_config(bad)
    with pytest.raises(ConfigError, match="'index' is required"):
        serve_app.build({"model": "models:/tnn@champion"})


def test_requests_are_checked_and_other_versions_indexes_refused(store):
    uri, tmp, p = store
    pair = serve_app.load_pair("models:/tnn@champion", f"{tmp}/index-v{{version}}", uri)
    assert pair.summary()["version"] == "1" and pair.summary()["rows"] == 2000
    assert pair.index.clip_ids.tolist() == p.clip_ids.tolist()  # write_index: the whole source
    for modality in ("audio", "visual"):
        np.testing.assert_allclose(pair.index.emb[f"{modality}_emb"][:50],
                                   getattr(pair.encoders, modality).predict(
                                       getattr(p, modality)[:50]), atol=1e-6, rtol=0)
    for body, message in [
            ([1, 2], "must be a JSON object"),
            ({"audio": [[0.0] * 76], "visual": [[0.0] * 240]}, "exactly one of"),
            ({"sound": [[0.0]]}, "exactly one of 'audio' / 'visual'"),
            ({"audio": [[0.0] * 75]}, r"'audio' has shape \(1, 75\); expected 1 to 1024 rows "
                                      r"of 76"),
            ({"visual": []}, r"shape \(1, 0\); expected 1 to 1024 rows of 240"),
            ({"audio": [[0.0] * 76], "k": 0}, "k must be an integer >= 1; got 0"),
            ({"audio": [[0.0] * 76], "k": 1001}, "k must be at most 1000"),
            ({"audio": [["x"] * 76]}, "must be a list of numbers"),
            ({"audio": [[float("nan")] * 76]}, "row 0 has NaN or inf")]:
        with pytest.raises(ConfigError, match=message):
            serve_app.parse_query(body, pair)
    modality, x, k = serve_app.parse_query({"visual": p.visual[0].tolist(), "k": 3}, pair)
    assert (modality, x.shape, x.dtype, k) == ("visual", (1, 240), np.float32, 3)
    # the champion (v1) with the index v2 built: one clear line, before anything is loaded
    with pytest.raises(DataError, match=r"index-v2: the index was built by tnn@None \(audio v2, "
                                        r"visual v2, .*\) but the query encoder is "
                                        r"tnn@champion \(audio v1, visual v1"):
        serve_app.check_pair("models:/tnn@champion", f"{tmp}/index-v2", uri)


def _expected(uri, tmp, p, version: str, modality: str, rows) -> list:
    x = getattr(p, modality)[rows]
    hits = query(f"{tmp}/index-v{version}", x, modality, 10, model_uri=f"models:/tnn/{version}",
                 tracking_uri=uri)
    return hits.to_list()


def _same(got: list, want: list, k: int) -> None:
    for g_row, w_row in zip(got, want, strict=True):
        w_row = w_row[:k]
        assert [h["clip_id"] for h in g_row] == [h["clip_id"] for h in w_row]
        assert [h["label"] for h in g_row] == [h["label"] for h in w_row]
        assert max(abs(g["score"] - w["score"]) for g, w in zip(g_row, w_row)) <= 1e-6


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_search_over_http_equals_in_process_and_follows_the_alias(ray_local, store):
    uri, tmp, p = store
    config = serving.read_config(CONFIG)
    config["applications"][0]["deployments"][0]["user_config"]["poll_seconds"] = 0.5
    url, status = serving.start(config, "models:/tnn@champion", f"{tmp}/index-v{{version}}", uri,
                                host="127.0.0.1", port=free_port())
    try:
        assert status["version"] == "1" and url.startswith("http://127.0.0.1:")
        asks = [("audio", [0, 1], 5), ("audio", [2], 10), ("visual", [0, 1, 2], 5),
                ("visual", [3], 1), ("audio", [4, 5, 6, 7], 10), ("visual", [8], 10)]
        want = {m: _expected(uri, tmp, p, "1", m, np.arange(9)) for m in ("audio", "visual")}

        def ask(a):
            modality, rows, k = a
            return serving.Client(url).search({modality: getattr(p, modality)[rows].tolist(),
                                               "k": k})
        with ThreadPoolExecutor(len(asks)) as pool:  # at once: the replica batches them
            answers = list(pool.map(ask, asks))
        for (modality, rows, k), got in zip(asks, answers):
            assert got["model"]["version"] == "1" and got["k"] == k
            _same(got["results"], [want[modality][r] for r in rows], k)
        status, body = serving.Client(url).request("POST", "/search", {"audio": [[0.0] * 7]})
        assert status == 400 and body["error"].startswith("bad request: 'audio' has shape (1, 7)")

        # promote v2 (its index exists): the running app answers with it, no restart
        registry.set_alias("tnn", "champion", "2", tracking_uri=uri)
        client, deadline = serving.Client(url), time.monotonic() + 60
        while client.status()["version"] != "2":
            assert time.monotonic() < deadline, client.status()
            time.sleep(0.25)
        got = ask(("audio", [0, 1], 10))
        assert got["model"]["version"] == "2" and got["model"]["index"].endswith("index-v2")
        _same(got["results"], _expected(uri, tmp, p, "2", "audio", [0, 1]), 10)
        assert got["results"] != want["audio"][:2]  # v1's answers were other ones
    finally:
        serving.stop()
