"""Load: a shard set larger than Ray's object store (a Ray of its own, object_store_memory
80 MB, shards ~97 MB of 6,000 rows x (128 + 4096) floats) goes through `jobs.train` with the
fit set cached in the store: it spills and restores, and the run completes. Trials queued
behind one slot are tests/test_tune.py's 4-trial search at concurrency 1; `bench/load.py`
runs both at several times the store (README, "Reliability")."""

from __future__ import annotations

import pytest

from bench.load import run

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_data_set_larger_than_the_object_store_trains_through_spilling(no_session_ray,
                                                                        tmp_path, capsys):
    r = run(rows=6000, visual_dim=4096, store_mb=80, epochs=1, trials=0, slots=1,
            tune_subset=0, out=tmp_path,  # MLflow off: logging the model is not the point
            train_sets={"shuffle": "local", "mlflow.enabled": "false"},
            log=lambda *a: None)
    with capsys.disabled():
        print(f"\n{r}")
    assert r["shard_mb"] > r["store_mb"]
    assert r["train_rc"] == 0
    assert r["spilled_mb"] > 0  # the store was really full
    assert r["peak_dev_shm_mb"] <= r["store_mb"] + 16  # the store stayed within its limit
