"""tnn.tracking.runs on a temporary SQLite store: runs, params, metrics, artifacts, reopening."""

from pathlib import Path

import pytest

from tnn.tracking import lineage, registry
from tnn.tracking import runs as tracking


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
    db = f"sqlite:///{tmp_path}/s/x.db"  # a SQLite store: artifacts beside it, never ./mlruns
    assert tracking.resolve(db, tmp_path / "m") == (db, (tmp_path / "s/mlartifacts").as_uri())
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve("sqlite:///x.db", "m")[1] == (tmp_path / "mlartifacts").as_uri()


def test_params_of_flattens_the_resolved_config():
    params = tracking.params_of({"tnn": {"train": {"lr": 0.001}, "hidden": [64, 64]},
                                 "run_name": None, "long": "x" * 7000})
    assert params["tnn.train.lr"] == "0.001" and params["tnn.hidden"] == "[64, 64]"
    assert params["run_name"] == "None" and len(params["long"]) == tracking.MAX_PARAM_CHARS


def test_run_logs_and_reopens_the_same_run(store, tmp_path):
    uri, artifacts = store
    config = {"tnn": {"train": {"lr": 0.001, "epochs": 3}}, "workers": 2}
    logger, created = tracking.open_run(uri, "exp", "run-a", artifact_location=artifacts,
                                        tags={"job": "train"}, data="uci-mfeat")
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
    tags = run.data.tags  # MLflow's source tags and the data set as the one input (not twice)
    assert tags["mlflow.source.name"] == "jobs.train" and tags["mlflow.source.type"] == "LOCAL"
    assert tags.get("mlflow.source.git.commit") == lineage.git_commit()
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.name == "uci-mfeat"
    assert given.dataset.digest == lineage.data_digest("uci-mfeat")[0]
    assert [(t.key, t.value) for t in given.tags] == [("mlflow.data.context", "training")]
    assert tracking.run_config(logger.run_id, tracking_uri=uri) == config
    assert tracking.run_config(logger.run_id, tracking_uri=uri, name="missing.yaml") is None
    assert (Path(artifacts[len("file://"):]) / logger.run_id / "artifacts" / "plots" /
            "history.png").read_bytes() == b"png"


def test_unknown_run_id_starts_a_new_run(store, monkeypatch):
    uri, artifacts = store
    monkeypatch.setattr(lineage, "data_digest", lambda data, pairs=None: ("d1", {"rows": 1}))
    secret = "s3://user:hunter2@bucket/x"  # a data URI with credentials is stored redacted
    logger, created = tracking.open_run(uri, "exp", "run-b", run_id="0" * 32,
                                        artifact_location=artifacts, data=secret,
                                        data_context="evaluation")
    assert created and logger.run_id != "0" * 32
    (given,) = logger.client.get_run(logger.run_id).inputs.dataset_inputs
    assert given.dataset.name == "s3://***@bucket/x" and "hunter2" not in given.dataset.source
    assert given.dataset.digest == "d1" and given.tags[0].value == "evaluation"


def test_a_new_sqlite_experiment_keeps_artifacts_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's own default would be ./mlruns here
    uri = f"sqlite:///{tmp_path}/db/mlflow.db"
    logger, _ = tracking.open_run(uri, "exp", "run-c")
    assert logger.client.get_run(logger.run_id).info.artifact_uri.startswith(
        (tmp_path / "db" / "mlartifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()


# --- the encoder as one pyfunc model, the registry and aliases -------------------------------

NO_TNN_LOAD = """
import json, sys
import numpy as np
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "tnn" or name.startswith("tnn."):
            raise ImportError("tnn is blocked in this process")
sys.meta_path.insert(0, Block())
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(f"models:/{sys.argv[2]}@champion")
np.save("audio.npy", model.predict(np.load("x_audio.npy")))  # the default branch
np.save("visual.npy", model.predict(np.load("x_visual.npy"), params={"modality": "visual"}))
print(json.dumps(sorted(k for k in sys.modules if k.split(".")[0] == "tnn")))
"""


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A run holding a hand-made checkpoint's plots, encoder files and its pyfunc model."""
    import numpy as np
    import torch

    from tnn.train import checkpoints
    from tnn.core.encoder import Encoder
    from tnn.methods import e2e_default
    from tnn.methods.linear import input_maps
    from tnn.methods.tnn import build_net
    from tnn.data.sources import load_source
    tmp = tmp_path_factory.mktemp("logged")
    uci = load_source("uci-mfeat").subset(np.arange(0, 2000, 8))
    cfg = e2e_default()
    a_in, v_in = input_maps(uci, cfg.cca, project=False)
    torch.manual_seed(0)
    encoder = Encoder(a_in, v_in, build_net(cfg, a_in, v_in, uci), 76, 240).eval()
    history = [{"epoch": e, "total": 1.0 / e, "val_map": 0.5 + e / 10} for e in (1, 2)]
    checkpoints.save_checkpoint(tmp, {"epoch": 2, "history": history}, {"run_name": "r"},
                                encoder, cfg, 10)
    uri, artifacts = tracking.resolve(None, tmp / "mlflow")
    logger, _ = tracking.open_run(uri, "exp", "with-encoders", artifact_location=artifacts)
    model_uri = registry.log_checkpoint(logger, tmp)
    return {"uri": uri, "artifacts": artifacts, "logger": logger, "model_uri": model_uri,
            "uci": uci, "encoder": encoder, "tmp": tmp}


def test_log_checkpoint_puts_plots_files_and_one_model_in_the_run(logged):
    logger, model_uri = logged["logger"], logged["model_uri"]
    assert model_uri.startswith("models:/m-")
    names = {a.path for a in logger.client.list_artifacts(logger.run_id)}
    assert names == {"plots", "encoder"}
    assert {a.path for a in logger.client.list_artifacts(logger.run_id, "encoder")} == {
        "encoder/encoder.pt", "encoder/encoder.json", "encoder/config.json"}
    run = logger.client.get_run(logger.run_id)
    assert run.info.status == "RUNNING"  # the job finishes it
    assert [o.model_id for o in run.outputs.model_outputs] == [model_uri[len("models:/"):]]
    model = registry.logged_model(logger.run_id, tracking_uri=logged["uri"])
    assert model.experiment_id == run.info.experiment_id  # not the Default experiment
    assert model.artifact_location.startswith(logged["artifacts"])
    assert str(model.status).endswith("READY") and model.name == registry.LOGGED_NAME


def test_using_restores_the_global_tracking_uri(logged, monkeypatch):
    import os

    import mlflow
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///elsewhere.db")
    before = mlflow.get_tracking_uri()
    with tracking.using(logged["uri"]):
        assert mlflow.get_tracking_uri() == logged["uri"] == mlflow.get_registry_uri()
    assert mlflow.get_tracking_uri() == before and "MLFLOW_TRACKING_URI" not in os.environ
    assert os.environ["MLFLOW_REGISTRY_URI"] == "sqlite:///elsewhere.db"


def test_using_restores_uris_set_globally_before(logged, tmp_path, monkeypatch):
    """A URI set with mlflow.set_tracking_uri / set_registry_uri before the block is in force
    again after it (restored through the public API and environment variables only)."""
    import os

    import mlflow
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    outer, registry_uri = f"sqlite:///{tmp_path}/outer.db", f"sqlite:///{tmp_path}/reg.db"
    mlflow.set_tracking_uri(outer)
    mlflow.set_registry_uri(registry_uri)
    try:
        with tracking.using(logged["uri"]):
            assert mlflow.get_tracking_uri() == logged["uri"] == mlflow.get_registry_uri()
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (outer, registry_uri)
    finally:  # set_*_uri also set the environment variables: they go too
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            os.environ.pop(key, None)


def test_one_model_by_alias_version_and_run_equals_the_encoder(logged):
    import numpy as np
    uri, run_id, uci, enc = logged["uri"], logged["logger"].run_id, logged["uci"], logged["encoder"]
    assert registry.register_model(run_id, "reg", tracking_uri=uri) == "1"
    assert registry.register_model(run_id, "reg", tracking_uri=uri) == "2"
    assert registry.get_alias("reg", "champion", tracking_uri=uri) is None
    registry.set_alias("reg", "champion", "1", tracking_uri=uri)
    registry.set_alias("reg", "challenger", "2", tracking_uri=uri)
    assert registry.get_alias("reg", "champion", tracking_uri=uri) == "1"
    loaded = registry.load_encoders("models:/reg@challenger", tracking_uri=uri)
    model_id = logged["model_uri"][len("models:/"):]
    assert loaded.info == {"model_uri": "models:/reg@challenger", "name": "reg",
                           "alias": "challenger", "version": "2",
                           "versions": {"audio": "2", "visual": "2"}, "run_id": run_id,
                           "model_id": model_id}
    by_version = registry.load_encoders("models:/reg/1", tracking_uri=uri)
    assert by_version.info["version"] == "1" and by_version.info["alias"] is None
    by_run = registry.load_encoders(f"runs:/{run_id}", tracking_uri=uri)
    assert by_run.info["run_id"] == run_id and by_run.info["versions"] is None
    for models in (loaded, by_version, by_run):
        a, v = models.audio.predict(uci.audio), models.visual.predict(uci.visual)
        assert a.dtype == np.float32 and a.shape == (uci.n, 9)
        np.testing.assert_allclose(a, enc.embed_audio(uci.audio), atol=1e-6, rtol=0)
        np.testing.assert_allclose(v, enc.embed_visual(uci.visual), atol=1e-6, rtol=0)
    # the pyfunc itself: audio by default, the branch by the `modality` param
    np.testing.assert_allclose(loaded.model.predict(uci.audio[:5]), a[:5], atol=1e-6, rtol=0)
    with pytest.raises(Exception, match="shape"):
        loaded.audio.predict(uci.visual)
    with pytest.raises(Exception, match="modality must be 'audio' or 'visual'; got 'smell'"):
        loaded.model.predict(uci.audio[:2], params={"modality": "smell"})
    meta = loaded.model.metadata
    assert meta.get_input_schema().inputs[0].shape == (-1, -1)
    assert [(p.name, p.default) for p in meta.get_params_schema().params] == [
        ("modality", "audio")]
    assert (loaded.audio.in_dim, loaded.visual.in_dim) == (76, 240)
    assert meta.saved_input_example_info is not None  # an input example was logged


def test_load_encoders_refuses_unknown_uris_aliases_and_versions(logged):
    from tnn.errors import ConfigError
    uri = logged["uri"]
    with pytest.raises(ConfigError, match="expected models:/NAME@ALIAS, models:/NAME/VERSION "
                                          "or runs:/RUN_ID"):
        registry.load_encoders("s3://b/model", tracking_uri=uri)
    registry.register_model(logged["logger"].run_id, "noalias", tracking_uri=uri)
    with pytest.raises(ConfigError, match="noalias@champion: no model version has alias "
                                          "'champion'"):
        registry.load_encoders("models:/noalias@champion", tracking_uri=uri)
    with pytest.raises(ConfigError, match="model 'noalias' has no version '7'"):
        registry.load_encoders("models:/noalias/7", tracking_uri=uri)


def test_champion_loads_by_alias_without_the_tnn_package(logged):
    import subprocess
    import sys

    import numpy as np
    uri, tmp, uci, enc = logged["uri"], logged["tmp"], logged["uci"], logged["encoder"]
    version = registry.register_model(logged["logger"].run_id, "iso", tracking_uri=uri)
    registry.set_alias("iso", "champion", version, tracking_uri=uri)
    work = tmp / "isolated"
    work.mkdir()
    np.save(work / "x_audio.npy", uci.audio[:64])
    np.save(work / "x_visual.npy", uci.visual[:64])
    res = subprocess.run([sys.executable, "-I", "-c", NO_TNN_LOAD, uri, "iso"], cwd=work,
                         capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(work)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"  # no tnn module was loaded
    np.testing.assert_allclose(np.load(work / "audio.npy"), enc.embed_audio(uci.audio[:64]),
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.load(work / "visual.npy"), enc.embed_visual(uci.visual[:64]),
                               atol=1e-6, rtol=0)
