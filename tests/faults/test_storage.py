"""Storage faults: the S3 server unreachable for ~10 s during a read and during a write is
ridden out by the clients' retries; a longer outage fails with a clear error after the retry
budget, and what was written before (a complete shard set) is untouched and no partial set is
ever taken as complete (no manifest)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from jobs import make_shards
from tnn.data import write as shard_write
from tests.faults.outage import Outage
from tnn.data import shards
from tnn.data.reader import read_pairs
from tnn.errors import DataError

pytestmark = [pytest.mark.faults, pytest.mark.s3, pytest.mark.timeout(120)]
SOURCE = "synthetic:n=1200,audio_dim=8,visual_dim=32"
QUIET = {"log": lambda *a, **k: None}


@pytest.fixture
def outage(s3_server, monkeypatch):
    """The session's S3 server behind a forwarder that the test can take down."""
    proxy = Outage(urlsplit(s3_server).port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    yield proxy
    proxy.close()


def _write(uri: str, **kw):
    return shard_write.write(SOURCE, uri, rows_per_shard=400, folds=5, seed=0, **QUIET, **kw)


def test_a_read_rides_out_a_10_s_outage(outage, s3_prefix):
    _write(s3_prefix)
    before = read_pairs(s3_prefix)
    start = time.monotonic()
    outage.outage(10)
    after = read_pairs(s3_prefix)
    assert time.monotonic() - start > 8  # it waited for the store, it did not fail
    np.testing.assert_array_equal(after.audio, before.audio)
    np.testing.assert_array_equal(after.clip_ids, before.clip_ids)


def test_a_write_rides_out_a_10_s_outage(outage, s3_prefix):
    outage.outage(10)
    man = _write(s3_prefix)
    assert shards.validate(s3_prefix, deep=True).rows == man.rows == 1200


def test_an_outage_past_the_budget_fails_clearly_and_keeps_what_was_written(
        outage, s3_prefix, monkeypatch, capsys):
    done = f"{s3_prefix}/done"
    _write(done)
    kept = read_pairs(done)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    outage.down()  # down until the job has given up: longer than any retry budget
    argv = ["--source", SOURCE, "--out", f"{s3_prefix}/new", "--rows-per-shard", "400"]
    try:
        assert make_shards.main(argv) == 2
    finally:
        outage.up()  # the store is back
    err = capsys.readouterr().err
    assert err.startswith(f"make_shards: error: {s3_prefix}/new: bucket 'tnn-test' is not "
                          "reachable after 4 attempt(s) (Could not connect"), err
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    with pytest.raises(DataError, match="no _manifest.json"):
        read_pairs(f"{s3_prefix}/new")  # a partial set is never taken as complete
    again = read_pairs(done)
    np.testing.assert_array_equal(again.visual, kept.visual)
