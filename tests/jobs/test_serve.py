"""jobs.serve: bad input is one line and exit status 2 before Ray starts (an index built by
another model version included); --smoke serves c-cca over HTTP on the session's Ray."""

from __future__ import annotations

import json
import re

import pytest

from jobs import serve
from tests.support import free_port
from tnn.tracking.query import write_index
from tnn.tracking.registry import smoke_model


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """tnn v1's index, then v2 made champion: the index no longer matches the alias."""
    tmp = tmp_path_factory.mktemp("moved")
    uri = f"sqlite:///{tmp}/mlflow.db"
    v1 = smoke_model(uri)
    write_index("models:/tnn@champion", "uci-mfeat", str(tmp / "index"), tracking_uri=uri)
    v2 = smoke_model(uri)
    return uri, tmp, v1, v2


def test_bad_input_is_one_line_and_status_2(moved, tmp_path, capsys):
    uri, tmp, v1, v2 = moved
    cases = [
        (["--index", str(tmp / "index"), "--config", str(tmp_path / "none.yaml")],
         f"serve: error: {tmp_path / 'none.yaml'}: cannot read the Serve config ("),
        (["--tracking-uri", uri], "serve: error: --index is required (or use --smoke)"),
        (["--index", "x", "--port", "0"], "serve: error: --port must be 1-65535; got 0"),
        (["--index", str(tmp / "index"), "--tracking-uri", uri, "--model", "models:/tnn@gone"],
         "serve: error: models:/tnn@gone: no model version has alias 'gone'"),
        (["--index", str(tmp / "index"), "--tracking-uri", uri],
         f"serve: error: {tmp / 'index'}: the index was built by tnn@champion (audio v1, "
         f"visual v1, run {v1['run_id']}) but the query encoder is tnn@champion (audio v2, "
         f"visual v2, run {v2['run_id']}): embeddings of different model versions are not "
         "comparable;"),
    ]
    for argv, message in cases:
        assert serve.main(argv) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), captured.err


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_smoke_serves_and_answers_over_http(ray_local, capsys):
    port = free_port()
    assert serve.main(["--smoke", "--port", str(port)]) == 0
    out = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("serve: ")]
    assert re.fullmatch(rf"serve: tnn@champion \(version 1, run \w+\) with /\S+/index \(2000 "
                        rf"rows\) at http://127\.0\.0\.1:{port}/search", out[0]), out
    top = json.loads(out[1].removeprefix("serve: smoke query top 3: "))
    assert len(top) == 2 and all(len(row) == 3 for row in top)
    assert all(c.startswith("mfeat-") for row in top for c in row)
