"""Bad input is refused by the jobs' entry points with one exact line (`JOB: error: ...`, exit
status 2), and nothing written before changes: a tree holding a shard set with its manifest, a
run's checkpoint and note, an MLflow SQLite store with its artifacts and a registered encoder
pair under the `champion` alias, and a crossval JSON is hashed file by file before and after
every refusal. Each refusal points its job at that tree (make_shards --overwrite onto the
shard set, crossval --json onto the JSON, jobs.train at the run's storage and MLflow store,
jobs.promote at the registry), so a job that wrote before checking would be caught.

S3 faults: an endpoint nobody listens on, and wrong credentials against a second moto server
that checks signatures (`INITIAL_NO_AUTH_ACTION_COUNT`: after the readiness probe, its first
4 requests create an IAM user, its key, an allow-all policy and the bucket unauthenticated;
after that every request must be signed by a known key). The right key works there; a wrong
secret or an unknown key id is refused, and the data set written with the right key is
unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import crossval, make_shards, promote, train
from tnn.data import write as shard_write
from tests.support import free_port, start_moto, stop
from tnn.train import checkpoints
from tnn.tracking import registry
from tnn.tracking import runs as tracking
from tnn.methods.linear import CCAConfig, fit_linear
from tnn.methods.tnn import TNNConfig
from tnn.train.checkpoints import write_run_info
from tnn.data.sources import load_source

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]
QUIET = {"log": lambda *a, **k: None}
BAD_SHARDS = "synthetic:n=300,audio_dim=4,visual_dim=8"


@pytest.fixture(scope="module")
def kept(tmp_path_factory) -> Path:
    """The tree of things written before: shards, a checkpoint, MLflow runs and aliases, JSON."""
    root = tmp_path_factory.mktemp("kept")
    shard_write.write("uci-mfeat", str(root / "shards"), rows_per_shard=700, **QUIET)
    pairs = load_source(str(root / "shards"))
    encoder = fit_linear(pairs.subset(pairs.folds != 0), CCAConfig(dim=9), beta=0.2)
    ck = root / "runs" / "job" / "epoch-0001"
    ck.mkdir(parents=True)
    checkpoints.save_checkpoint(ck, {"epoch": 1, "history": [{"epoch": 1, "val_map": 0.5}]},
                                {"data": "uci-mfeat"}, encoder, TNNConfig(), 10)
    uri, artifacts = tracking.resolve(None, root / "mlflow")
    write_run_info(str(root / "runs"), "job", {"mlflow_run_id": "-", "tracking_uri": uri})
    logger, _ = tracking.open_run(uri, "exp", "job", artifact_location=artifacts)
    logger.params({"data": "uci-mfeat"})
    logger.metrics({"final_val_map": 0.7})
    registry.log_checkpoint(logger, ck)
    logger.finish()
    registry.set_alias("m", "champion", registry.register_model(logger.run_id, "m",
                                                                tracking_uri=uri), tracking_uri=uri)
    (root / "cv.json").write_text(json.dumps({"methods": {}}))
    return root


def snapshot(root: Path) -> dict:
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(root.rglob("*")) if p.is_file()}
    assert any(k.endswith("mlflow.db") for k in files) and len(files) > 15
    return files


def _npz(path: Path, edit=None) -> str:
    """A valid 30-clip, 3-class npz (clips c0..c29) at `path`, changed by `edit`."""
    path = path / "bad.npz" if path.is_dir() else path
    rng = np.random.default_rng(1)
    d = {"audio": rng.normal(size=(30, 4)), "visual": rng.normal(size=(30, 6)),
         "labels": np.arange(30) % 3, "clip_ids": np.array([f"c{i}" for i in range(30)])}
    if edit:
        edit(d)
    np.savez(path, **d)
    return f"npz:{path}"


def _shards(path: Path, edit) -> str:
    """A valid 300-row shard set whose part-00001.parquet is then changed by `edit`."""
    path = path / "bad"
    shard_write.write(BAD_SHARDS, str(path), rows_per_shard=100, **QUIET)
    part = path / "part-00001.parquet"
    edit(part)
    return str(path)


def _table_edit(change):
    return lambda part: pq.write_table(change(pq.read_table(part)), part)


def _truncate(part: Path) -> None:
    part.write_bytes(part.read_bytes()[:part.stat().st_size // 2])  # as after a cut-off copy


def _width5(t):
    i = t.schema.get_field_index("visual")
    return t.set_column(i, "visual", pa.FixedSizeListArray.from_arrays(
        pa.array(np.zeros(t.num_rows * 5, np.float32)), 5))


def _ragged_clips(root: Path) -> str:
    """A VEGAS clip folder whose clip vid3 has 127 audio features instead of 128."""
    root = root / "clips"
    (root / "audio").mkdir(parents=True)
    (root / "visual").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        np.save(root / "audio" / f"vid{i}.npy", rng.normal(size=(3, 127 if i == 3 else 128)))
        np.save(root / "visual" / f"vid{i}.npy", rng.normal(size=(2, 16)))
    (root / "labels.csv").write_text("clip_id,label\n" + "".join(f"vid{i},{i % 2}\n"
                                                                 for i in range(6)))
    return f"vegas:{root}"


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _cell(key, index, value):
    return lambda d: d[key].__setitem__(index, value)


# (id, source maker(tmp dir) -> spec, the error after "make_shards: error: " with {src} for
# the source's path); each source is written onto the kept shard set with --overwrite.
DATA = [
    ("missing-column", lambda b: _shards(b, _table_edit(lambda t: t.drop_columns(["fold"])))
     , "{src}/part-00001.parquet: missing column 'fold'; found ['clip_id', 'label', 'audio', "
       "'visual']"),
    ("wrong-width", lambda b: _shards(b, _table_edit(_width5)),
     "{src}/part-00001.parquet: column 'visual' has width 5, manifest says 8"),
    ("corrupt-parquet", lambda b: _shards(b, _truncate),
     "{src}/part-00001.parquet: not a readable Parquet file (Parquet magic bytes not found in "
     "footer. Either the file is corrupted or this is not a parquet file.)"),
    ("ragged-rows", _ragged_clips, "{src}/audio/vid3.npy: width 127 differs from 128 of 'vid0'"),
    ("nan", lambda b: _npz(b, _cell("visual", (5, 2), np.nan)),
     "{src}: 'visual' has NaN or inf values (first at row 5, clip 'c5')"),
    ("inf", lambda b: _npz(b, _cell("audio", (7, 0), -np.inf)),
     "{src}: 'audio' has NaN or inf values (first at row 7, clip 'c7')"),
    ("non-integer-labels", lambda b: _npz(b, _set("labels", np.arange(30) % 3 + 0.5)),
     "{src}: 'labels' must be integers; row 0 is 0.5"),
    ("negative-labels", lambda b: _npz(b, _cell("labels", 4, -2)),
     "{src}: 'labels' must be >= 0; row 4 is -2"),
    ("one-class", lambda b: _npz(b, _set("labels", np.zeros(30, int))),
     "{src}: needs at least 2 classes; all 30 rows have label 0"),
    ("empty", lambda b: _npz(b, lambda d: d.update(audio=np.zeros((0, 4)),
                                                   visual=np.zeros((0, 6)),
                                                   labels=np.zeros(0, int),
                                                   clip_ids=np.array([], str))),
     "{src}: the data set is empty (0 rows)"),
    ("duplicate-ids", lambda b: _npz(b, _cell("clip_ids", 9, "c2")),
     "{src}: duplicate clip id 'c2' (rows [2, 9])"),
]


def _path_of(spec: str) -> str:
    return spec.split(":", 1)[1] if spec.startswith(("npz:", "vegas:")) else spec


def _refused(capsys, kept: Path, before: dict, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert snapshot(kept) == before
    return err


@pytest.mark.parametrize("make, message", [d[1:] for d in DATA], ids=[d[0] for d in DATA])
def test_bad_data_is_refused_and_nothing_written_changes(kept, tmp_path, capsys, make, message):
    spec = make(tmp_path)
    before = snapshot(kept)
    rc = make_shards.main(["--source", spec, "--out", str(kept / "shards"), "--overwrite"])
    err = _refused(capsys, kept, before, rc)
    assert err == "make_shards: error: " + message.format(src=_path_of(spec)) + "\n"


def test_a_class_with_one_clip_is_refused_for_training_but_not_for_shards(kept, tmp_path,
                                                                          capsys):
    spec = _npz(tmp_path / "single.npz",
                lambda d: d.update(labels=np.r_[np.arange(29) % 2, 2]))  # c29: class 2 alone
    before = snapshot(kept)
    rc = crossval.main(["--data", spec, "--methods", "cca", "--json", str(kept / "cv.json"),
                         "--set", "mlflow.enabled=false"])
    err = _refused(capsys, kept, before, rc)
    assert err == (f"crossval: error: {tmp_path / 'single.npz'}: class '2' has a single clip "
                   "('c29'); training needs at least 2 clips per class: add clips or drop the "
                   "class\n")
    # an embedding gallery may hold singletons: the shard writer takes it
    assert make_shards.main(["--source", spec, "--out", str(tmp_path / "gallery")]) == 0


E2E_KEYS = ("epochs, batch_size, lr, weight_decay, margin, distance, miner, reduction, "
            "directions, exclude_self_pair, w_triplet, w_cca, val_fraction, patience, seed")
CONFIGS = [  # (id, job, argv, the whole stderr line)
    ("crossval-dim-above-classes", crossval,
     ["--methods", "c-cca", "--dim", "10", "--set", "settings.cca.beta=0.0"],
     "crossval: error: settings.cca.dim=10 is impossible for c-cca on uci-mfeat:fou,pix: with "
     "beta=0 cluster-CCA spans at most classes - 1 = 9 directions"),
    ("crossval-dim-above-width", crossval,
     ["--data", "uci-mfeat:mor,pix", "--methods", "cca,tnn-e2e", "--dim", "7"],
     "crossval: error: settings.cca.dim=7 is impossible for cca on uci-mfeat:mor,pix: the "
     "narrower view has 6 features"),
    ("crossval-unknown-key", crossval, ["--set", "settings.tnn_e2e.train.lrr=0.1"],
     "crossval: error: config: unknown key(s) settings.tnn_e2e.train.lrr; known under "
     f"settings.tnn_e2e.train.: {E2E_KEYS}"),
    ("train-unknown-key", train, ["--set", "tnn.train.lrr=0.1"],
     f"train: error: config: unknown key(s) tnn.train.lrr; known under tnn.train.: {E2E_KEYS}"),
    ("train-workers", train, ["--set", "workers=3"],
     "train: error: workers=3 must be >= 1 and divide tnn.train.batch_size=256 (the global "
     "batch)"),
    ("train-negative-lr", train, ["--set", "tnn.train.lr=-1"],
     "train: error: train: need epochs >= 0, batch_size >= 2, lr > 0, margin >= 0; got "
     "epochs=100, batch_size=256, lr=-1.0, margin=0.2"),
    ("promote-unknown-experiment", promote, ["--experiment", "nope", "--model-name", "m"],
     "promote: error: MLflow experiment 'nope' not found at sqlite:///{kept}/mlflow/mlflow.db"),
]


@pytest.mark.parametrize("job, argv, message", [c[1:] for c in CONFIGS],
                         ids=[c[0] for c in CONFIGS])
def test_bad_config_is_refused_and_nothing_written_changes(kept, capsys, monkeypatch, job, argv,
                                                           message):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    where = {crossval: ["--json", str(kept / "cv.json")],
             train: ["--set", f"storage_path={kept / 'runs'}", "--set", "run_name=job",
                     "--set", f"mlflow.local_dir={kept / 'mlflow'}"],
             promote: ["--tracking-uri", f"sqlite:///{kept / 'mlflow' / 'mlflow.db'}"]}[job]
    uri = f"sqlite:///{kept / 'mlflow' / 'mlflow.db'}"
    champion = registry.get_alias("m", "champion", tracking_uri=uri)
    before = snapshot(kept)
    err = _refused(capsys, kept, before, job.main(argv + where))
    assert err.splitlines()[-1] == message.format(kept=kept)
    assert registry.get_alias("m", "champion", tracking_uri=uri) == champion == "1"


# --- S3: unreachable endpoint, wrong credentials ---------------------------------------------

@pytest.mark.s3
def test_an_unreachable_endpoint_is_refused_clearly(s3_bucket, monkeypatch, capsys):
    port = free_port()  # nobody listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    out = f"{s3_bucket}/unreachable"
    assert make_shards.main(["--source", "uci-mfeat", "--out", out]) == 2
    assert capsys.readouterr().err == (
        f"make_shards: error: {out}: bucket 'tnn-test' is not reachable after 2 attempt(s) "
        f"(Could not connect to the endpoint URL: \"http://127.0.0.1:{port}/tnn-test\")\n")
    assert crossval.main(["--data", out, "--methods", "cca"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"crossval: error: {out}/_manifest.json: cannot read (When reading information for key "
        f"'unreachable/_manifest.json' in bucket 'tnn-test': AWS Error NETWORK_CONNECTION during "
        f"HeadObject operation: curlCode: 7, Could not connect to server"), err


@pytest.fixture
def auth_s3(tmp_path, monkeypatch):
    """A moto server that checks request signatures; yields (endpoint, access key id, secret)."""
    import boto3
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "5")  # the readiness probe + 4 below
    proc, endpoint = start_moto(tmp_path / "moto-auth.log")
    try:
        kw = dict(endpoint_url=endpoint, region_name="us-east-1")
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="tnn")
        key = iam.create_access_key(UserName="tnn")["AccessKey"]
        iam.put_user_policy(UserName="tnn", PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        boto3.client("s3", **kw).create_bucket(Bucket="tnn-test")
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        stop(proc)


@pytest.mark.s3
def test_wrong_credentials_are_refused_and_the_data_is_kept(s3_server, auth_s3, monkeypatch,
                                                            capsys):
    from tnn.data.storage import s3_client
    endpoint, key_id, secret = auth_s3
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key_id,
                 "AWS_SECRET_ACCESS_KEY": secret, "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(k, v)
    ok = "s3://tnn-test/ok"
    argv = ["--source", BAD_SHARDS, "--out", ok, "--rows-per-shard", "100"]
    assert make_shards.main(argv) == 0  # the right key works

    def objects():
        listed = s3_client().list_objects_v2(Bucket="tnn-test")["Contents"]
        return {o["Key"]: o["ETag"] for o in listed}
    before = objects()
    assert len(before) == 4
    capsys.readouterr()
    for key_id_, secret_ in ((key_id, "wrong-secret"), ("AKIAWRONGKEYID000000", secret)):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id_)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_)
        assert make_shards.main(argv + ["--overwrite"]) == 2
        assert capsys.readouterr().err == (
            f"make_shards: error: {ok}: bucket 'tnn-test' is not reachable after 2 attempt(s) "
            "(An error occurred (403) when calling the HeadBucket operation: Forbidden)\n")
        assert crossval.main(["--data", ok, "--methods", "cca"]) == 2
        assert capsys.readouterr().err == (
            f"crossval: error: {ok}/_manifest.json: cannot read (When reading information for "
            "key 'ok/_manifest.json' in bucket 'tnn-test': AWS Error ACCESS_DENIED during "
            "HeadObject operation: No response body.)\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert objects() == before
    assert load_source(ok).n == 300
