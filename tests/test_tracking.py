"""tnn.tracking on a temporary SQLite store: runs, params, metrics, artifacts, reopening."""

from pathlib import Path

import pytest

from tnn import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tracking.resolve(None, tmp_path / "mlflow")


def test_resolve_prefers_explicit_then_environment_then_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, artifacts = tracking.resolve(None, tmp_path / "m")
    assert uri == f"sqlite:///{(tmp_path / 'm').resolve()}/mlflow.db"
    assert artifacts == (tmp_path / "m" / "mlartifacts").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve(None, tmp_path / "m") == ("http://127.0.0.1:5000", None)
    assert tracking.resolve("sqlite:///x.db", tmp_path / "m") == ("sqlite:///x.db", None)


def test_params_of_flattens_the_resolved_config():
    params = tracking.params_of({"tnn": {"train": {"lr": 0.001}, "hidden": [64, 64]},
                                 "run_name": None, "long": "x" * 7000})
    assert params["tnn.train.lr"] == "0.001" and params["tnn.hidden"] == "[64, 64]"
    assert params["run_name"] == "None" and len(params["long"]) == tracking.MAX_PARAM_CHARS


def test_run_logs_and_reopens_the_same_run(store, tmp_path):
    uri, artifacts = store
    config = {"tnn": {"train": {"lr": 0.001, "epochs": 3}}, "workers": 2}
    logger, created = tracking.open_run(uri, "exp", "run-a", artifact_location=artifacts)
    assert created
    logger.params({f"p{i}": i for i in range(150)})  # more than one log_batch call
    logger.params(tracking.params_of(config))
    logger.config(config)
    for epoch in (1, 2):
        logger.metrics({"val_map": 0.5 + epoch / 10, "note": "skipped", "nan": float("nan")},
                       step=epoch)
    logger.finish("FAILED")

    # a restart: another process (a worker) appends by id, the run is reopened, then finished
    again, created = tracking.open_run(uri, "exp", "run-a", run_id=logger.run_id)
    assert not created and again.run_id == logger.run_id
    assert again.client.get_run(logger.run_id).info.status == "RUNNING"
    tracking.RunLogger(uri, logger.run_id).metrics({"val_map": 0.8}, step=3)
    plot = tmp_path / "history.png"
    plot.write_bytes(b"png")
    again.artifact(plot, "plots")
    again.finish()

    run = again.client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run-a"
    assert run.data.params["tnn.train.epochs"] == "3" and run.data.params["p149"] == "149"
    assert set(run.data.metrics) == {"val_map"}
    assert again.history("val_map") == [(1, pytest.approx(0.6)), (2, pytest.approx(0.7)), (3, 0.8)]
    names = {a.path for a in again.client.list_artifacts(logger.run_id)}
    assert names == {"config.yaml", "plots"}
    assert run.info.artifact_uri.startswith(artifacts)
    assert (Path(artifacts[len("file://"):]) / logger.run_id / "artifacts" / "plots" /
            "history.png").read_bytes() == b"png"


def test_unknown_run_id_starts_a_new_run(store):
    uri, artifacts = store
    logger, created = tracking.open_run(uri, "exp", "run-b", run_id="0" * 32,
                                        artifact_location=artifacts)
    assert created and logger.run_id != "0" * 32
