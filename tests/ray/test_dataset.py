"""Reading shards: the Ray Dataset reader on the S3 server (its plain row and batch functions:
`tests/data/test_reader.py`, `tests/data/test_batches.py`)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tnn.data.write import write
from tnn.ray import dataset as data
from tnn.data import shards
from tnn.errors import ConfigError, DataError
from tnn.core.folds import assign_folds
from tnn.data.sources import load_source

MFEAT = "uci-mfeat"


@pytest.fixture(scope="module")
def mfeat_s3(s3_bucket):
    """uci-mfeat (2,000 rows, 76 + 240 floats) as 4 shards of 600/600/600/200 rows."""
    uri = f"{s3_bucket}/test-data/mfeat"
    write(MFEAT, uri, rows_per_shard=600, chunk_rows=256, folds=5, seed=1, log=lambda *a, **k: None)
    return uri


def _collect(batches) -> dict:
    parts = list(batches)
    return {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}


def _sorted(rows: dict) -> dict:
    order = np.argsort(rows["clip_id"].astype(str))
    return {k: v[order] for k, v in rows.items()}


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.timeout(120)
def test_dataset_round_trip_is_bit_exact(ray_local, mfeat_s3):
    src = load_source(MFEAT)
    ds = data.dataset(mfeat_s3)
    assert ds.count() == 2000  # from the read tasks' metadata
    rows = _sorted(_collect(data.iter_numpy(ds, batch_size=333)))
    assert rows["audio"].dtype == np.float32 and rows["audio"].shape == (2000, 76)
    assert np.array_equal(rows["audio"], src.audio) and np.array_equal(rows["visual"], src.visual)
    assert np.array_equal(rows["label"], src.labels) and list(rows["clip_id"]) == list(src.clip_ids)
    assert np.array_equal(rows["fold"], assign_folds(src.labels, 5, 1))
    batch = next(iter(ds.select_columns(["audio", "label"]).iter_torch_batches(batch_size=64)))
    assert tuple(batch["audio"].shape) == (64, 76) and str(batch["audio"].dtype) == "torch.float32"


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.timeout(120)
def test_fold_selection_projection_and_seeded_shuffle(ray_local, mfeat_s3):
    folds = assign_folds(load_source(MFEAT).labels, 5, 1)
    ids = np.array([f"mfeat-{i:04d}" for i in range(2000)])
    rows = _collect(data.iter_numpy(data.dataset(mfeat_s3, folds=[1, 3], exclude_folds=[3],
                                                 columns=["clip_id", "fold"]), 500))
    assert set(rows) == {"clip_id", "fold"} and set(rows["fold"]) == {1}
    assert sorted(rows["clip_id"]) == sorted(ids[folds == 1])
    rest = _collect(data.iter_numpy(data.dataset(mfeat_s3, exclude_folds=[0], columns=["label"])))
    assert set(rest) == {"label"} and len(rest["label"]) == (folds != 0).sum()
    order = lambda seed, buf=None: list(_collect(data.iter_numpy(  # noqa: E731
        data.dataset(mfeat_s3, columns=["clip_id"], shuffle_seed=seed, check="manifest"),
        128, shuffle_buffer=buf, shuffle_seed=seed))["clip_id"])
    a, b, c = order(7), order(7), order(8)
    assert a == b and a != c and sorted(a) == sorted(ids) and a != sorted(a)
    assert order(7, 500) == order(7, 500) != a
    with pytest.raises(ConfigError, match=r"folds \[7\] out of range: the data set has 5 folds"):
        data.dataset(mfeat_s3, folds=[0, 7])
    with pytest.raises(ConfigError, match=r"columns \['audoi'\] unknown"):
        data.dataset(mfeat_s3, columns=["audoi"])


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.timeout(120)
def test_reader_errors_name_shard_and_column(ray_local, s3_prefix):
    with pytest.raises(DataError, match=f"{s3_prefix}: no _manifest.json"):
        data.dataset(s3_prefix)
    write("synthetic:n=300,visual_dim=8,audio_dim=4", s3_prefix, rows_per_shard=100,
          log=lambda *a, **k: None)
    fs, root = shards.storage.filesystem(s3_prefix)
    table = pq.read_table(f"{root}/part-00002.parquet", filesystem=fs)
    x = shards.matrix(table["visual"], 8).copy()
    x[5, 3] = np.nan
    bad = table.set_column(3, "visual", pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8))
    pq.write_table(bad, f"{root}/part-00002.parquet", filesystem=fs)
    message = f"{s3_prefix}/part-00002.parquet: column 'visual' has NaN or inf values .row 5"
    with pytest.raises(DataError, match=message):
        data.dataset(s3_prefix, check="deep")
    ds = data.dataset(s3_prefix)  # schema is fine: the read task finds the NaN
    with pytest.raises(Exception, match=message):
        ds.materialize()
    assert data.dataset(s3_prefix, check=None, columns=["label"]).count() == 300  # unchecked
    with pytest.raises(ConfigError, match="check must be one of"):
        data.dataset(s3_prefix, check="full")


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.timeout(120)
def test_cached_dataset_matches(ray_local, mfeat_s3):
    ds = data.dataset(mfeat_s3, columns=["clip_id", "visual"], folds=[2], cache=True,
                      num_cpus=0.5)
    assert type(ds).__name__ == "MaterializedDataset"
    src = load_source(MFEAT)
    keep = assign_folds(src.labels, 5, 1) == 2
    rows = _sorted(_collect(data.iter_numpy(ds, 100)))
    assert np.array_equal(rows["visual"], src.visual[keep])


def test_ray_data_sees_its_cpus_quickly():
    """Ray Data reads its resource limits one RPC late and refreshes them every second; until
    then it runs one read task at a time. `refresh_limits_often` (opt-in: `dataset(...,
    refresh_limits=True)`) shortens the refresh; if a Ray upgrade moves the setting, this fails."""
    from ray.data._internal.execution.resource_manager import ResourceManager
    before = ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S
    try:
        assert data.refresh_limits_often()
        assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S <= data.LIMITS_REFRESH_S
    finally:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = before


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.timeout(120)
def test_the_default_path_leaves_ray_private_settings_alone(ray_local, mfeat_s3):
    """Reading with the defaults touches no private Ray attribute (issue #19); the opt-in
    `refresh_limits=True` lowers the refresh interval when the plan executes."""
    from ray.data._internal.execution.resource_manager import ResourceManager
    before = ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S
    assert before > data.LIMITS_REFRESH_S  # Ray's own default (1 s in 2.60)
    try:
        assert sum(len(b["label"]) for b in data.iter_numpy(data.dataset(mfeat_s3), 500)) == 2000
        assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == before
        ds = data.dataset(mfeat_s3, folds=[0], refresh_limits=True)
        assert sum(len(b["label"]) for b in data.iter_numpy(ds, 500)) == 400
        assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S <= data.LIMITS_REFRESH_S
    finally:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = before
