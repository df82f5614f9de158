"""No secret leaks: with a distinctive AWS secret key and MLflow token in the environment (set
before the jobs start their own Ray, so every Ray process inherits them), a train run with S3
checkpoints, a 2-trial tune with local checkpoints and a promote leave neither value in:
stdout/stderr (fd level, Ray's worker output included), the Ray session logs, MLflow params
and tags of every run, every artifact (downloaded through MLflow), the SQLite database and
every other file of the MLflow store, the checkpoint objects on S3 and the local ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs import promote, train, tune
from tests.support import RAY_ENV
from tnn.data import storage

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.s3, pytest.mark.timeout(420)]
SECRET = "zz-SECRET-key-Do-Not-Leak-7b1f3c"
TOKEN = "zz-TOKEN-mlflow-Do-Not-Leak-42aa"


def leaks(data: bytes) -> list[str]:
    return [name for name, value in (("secret", SECRET), ("token", TOKEN))
            if value.encode() in data]


def scan_tree(root: Path) -> dict[str, list[str]]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and (found := leaks(p.read_bytes())):
            out[str(p)] = found
    return out


def ray_session_logs() -> Path:
    """The logs of the Ray that a job just started and stopped (the newest session; jobs run
    under the machine's Ray lock, so no other Ray started meanwhile)."""
    return Path("/tmp/ray/session_latest/logs").resolve()


def test_no_secret_in_outputs_runs_artifacts_or_checkpoints(no_session_ray, s3_prefix, tmp_path,
                                                            capfd, monkeypatch):
    for key, value in {**RAY_ENV, "AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_TRACKING_TOKEN": TOKEN,
                       "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "mlflow"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    found: dict[str, list[str]] = {}

    def after_job(name: str) -> None:
        out = capfd.readouterr()
        for stream, text in (("stdout", out.out), ("stderr", out.err)):
            if hits := leaks(text.encode()):
                found[f"{name} {stream}"] = hits
        found.update(scan_tree(ray_session_logs()))

    sets = {"subset": 600, "workers": 1, "tnn.train.epochs": 2, "tnn.train.batch_size": 64,
            "storage_path": f"{s3_prefix}/runs", "run_name": "job", "mlflow.tracking_uri": uri}
    assert train.main([a for k, v in sets.items() for a in ("--set", f"{k}={v}")]) == 0
    after_job("train")

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "method": "tnn-e2e", "base": {"subset": 600, "tnn": {"train": {"epochs": 2}}},
        "params": [{"key": "tnn.train.margin", "grid": [0.1, 0.2]}],
        "scheduler": {"name": "fifo"}}))
    assert tune.main(["--space", str(space), "--experiment", "tnn-tune", "--tracking-uri", uri,
                      "--set", f"base.storage_path={tmp_path / 'tune'}"]) == 0
    after_job("tune")

    assert promote.main(["--experiment", "tnn-tune", "--model-name", "m", "--tracking-uri", uri,
                         "--smoke"]) == 0
    after_job("promote")

    from mlflow import MlflowClient
    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])]
    assert len(runs) >= 1 + 1 + 2 + 1  # train, tune parent + 2 trials, evaluation(s)
    for run in runs:
        text = repr(sorted(run.data.params.items())) + repr(sorted(run.data.tags.items()))
        if hits := leaks(text.encode()):
            found[f"run {run.info.run_name} params/tags"] = hits
        dst = tmp_path / "downloaded" / run.info.run_id
        dst.mkdir(parents=True)
        client.download_artifacts(run.info.run_id, "", str(dst))
    downloaded = sum(1 for p in (tmp_path / "downloaded").rglob("*") if p.is_file())
    assert downloaded > 20
    found.update(scan_tree(tmp_path / "downloaded"))
    found.update(scan_tree(store))  # mlflow.db and every stored artifact and logged model
    found.update(scan_tree(tmp_path / "tune"))  # the trials' local checkpoints

    s3 = storage.s3_client()
    bucket, prefix = storage.split_s3(s3_prefix)
    objects = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/") for o in page.get("Contents", [])]
    assert any(k.endswith("state.pt") for k in objects)
    for key in objects:
        if hits := leaks(s3.get_object(Bucket=bucket, Key=key)["Body"].read()):
            found[f"s3://{bucket}/{key}"] = hits
    assert (store / "mlflow.db").stat().st_size > 0
    assert found == {}
