"""No secret leaks: with a distinctive AWS secret key and MLflow token in the environment (set
before the test starts its Ray, so every Ray process inherits them) and a tracking URI that
carries a password (`http://alice:PASSWORD@127.0.0.1:PORT`, an MLflow server), a train run
with S3 checkpoints, a 1-trial tune with local checkpoints, a promote, the embedding dataset
of the promoted model (built, not run) and the deployment of the search app (Ray Serve,
recorded, not started)
leave none of the three in: what the driver ships to Ray (pickled: every `ray.put` value,
the TorchTrainer's loop config and run config, Tune's trial parameters, param space and run
config with its callbacks, the embed actors' constructor args, the Serve app with its bind
args and runtime env), stdout/stderr (fd level, Ray's worker output and MLflow's "View run"
lines included), the Ray session logs, MLflow params and tags of every run, every artifact
(downloaded through MLflow), the server's database, artifacts and log, the checkpoint objects
and the run's note (tnn_run.json) on S3, the local checkpoints and Tune's files. URIs are
shown and stored as `http://***@127.0.0.1:PORT` (`tnn.errors.redact`). One Ray serves every
job (each job starting its own cost ~10 s a job)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from jobs import promote, train, tune
from tests.support import RAY_ENV, ROOT, free_port, kill, stop, tree
from tnn.data import storage
from tnn.errors import redact, redacted

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.s3, pytest.mark.timeout(360)]
SECRET = "zz-SECRET-key-Do-Not-Leak-7b1f3c"
TOKEN = "zz-TOKEN-mlflow-Do-Not-Leak-42aa"
PASSWORD = "zz-PASSWORD-uri-Do-Not-Leak-9c3e"


def leaks(data: bytes) -> list[str]:
    return [name for name, value in (("secret", SECRET), ("token", TOKEN),
                                     ("password", PASSWORD)) if value.encode() in data]


@pytest.fixture
def mlflow_server(tmp_path):
    """An MLflow tracking server (SQLite store, proxied artifacts, its log) under `store`;
    yields (`http://alice:PASSWORD@127.0.0.1:PORT`, store). Stopped by pid with its workers."""
    import subprocess
    import sys
    import time
    import urllib.request
    store = tmp_path / "mlflow"
    store.mkdir()
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(exe), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri",
                             f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination",
                             str(store / "mlartifacts")],
                            stdout=(store / "server.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mlflow server"
                time.sleep(0.2)
        yield f"http://alice:{PASSWORD}@127.0.0.1:{port}", store
    finally:
        procs = tree(proc.pid)
        stop(proc)
        kill(procs)


def test_redact():
    uri = f"http://alice:{PASSWORD}@127.0.0.1:5000/x?y=1"
    assert redact(uri) == "http://***@127.0.0.1:5000/x?y=1"
    assert redact(f"MLflow: API request to {uri} failed") == \
        "MLflow: API request to http://***@127.0.0.1:5000/x?y=1 failed"
    assert redact("postgresql://u:p@ss@db/x and s3://b/k a@b.c") == \
        "postgresql://***@db/x and s3://b/k a@b.c"
    assert redacted({"m": {"tracking_uri": uri, "n": 1}, "l": [uri]}) == \
        {"m": {"tracking_uri": redact(uri), "n": 1}, "l": [redact(uri)]}


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


def test_params_tags_config_and_text_artifacts_are_stored_redacted(tmp_path, capsys):
    """RunLogger, without a server (the URI with a password is only a value here)."""
    from tnn.tracking import runs as tracking
    secret_uri = f"http://alice:{PASSWORD}@mlflow.example:5000"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger, _ = tracking.open_run(uri, "e", "r", tags={"source": secret_uri},
                                  artifact_location=(tmp_path / "art").as_uri())
    logger.params(tracking.params_of({"mlflow": {"tracking_uri": secret_uri}}))
    logger.tags({"uri": secret_uri})
    logger.config({"mlflow": {"tracking_uri": secret_uri}})
    (tmp_path / "report.json").write_text(f'{{"uri": "{secret_uri}"}}')
    logger.artifact(tmp_path / "report.json", "results")
    logger.finish()
    data = logger.data()
    assert data.params["mlflow.tracking_uri"] == redact(secret_uri)
    assert data.tags["uri"] == data.tags["source"] == redact(secret_uri)
    got = Path(logger.client.download_artifacts(logger.run_id, "", str(tmp_path / "dl")))
    assert (got / "results" / "report.json").read_text() == f'{{"uri": "{redact(secret_uri)}"}}'
    assert scan_tree(got) == {} and scan_tree(tmp_path / "art") == {}
    assert not leaks(capsys.readouterr().out.encode())


class Shipped:
    """Records what the driver hands to Ray at its public entry points (the calls go on);
    `leaks()` pickles everything recorded (`ray.cloudpickle`, as Ray does) and scans it."""

    def __init__(self, monkeypatch) -> None:
        import ray
        import ray.data
        import ray.train.torch
        from ray import serve, tune
        self.objects: list = []
        record = self.objects.append

        def wrap(owner, name, keep):
            original = getattr(owner, name)

            def recorder(*args, **kwargs):
                record(keep(*args, **kwargs))
                return original(*args, **kwargs)
            monkeypatch.setattr(owner, name, recorder)

        wrap(ray, "put", lambda value, **kw: value)
        wrap(ray.train.torch.TorchTrainer, "__init__", lambda self, loop, **kw: {
            "loop": loop, "train_loop_config": {k: v for k, v in kw["train_loop_config"].items()
                                                if not isinstance(v, ray.ObjectRef)},
            "run_config": kw["run_config"], "scaling_config": kw["scaling_config"]})
        wrap(tune, "with_parameters", lambda trainable, **kw: (trainable, kw))
        wrap(tune.Tuner, "__init__", lambda self, trainable, **kw: {
            "param_space": kw["param_space"], "run_config": kw["run_config"]})
        wrap(ray.data.Dataset, "map_batches", lambda self, fn, **kw: (
            fn, kw.get("fn_constructor_args"), kw.get("fn_kwargs")))
        monkeypatch.setattr(serve, "start", lambda **kw: record(kw))
        monkeypatch.setattr(serve, "run", lambda app, **kw: record((app, kw)))

    def leaks(self) -> tuple[int, list[str]]:
        """(bytes pickled, the secrets found in them)."""
        from ray import cloudpickle
        assert self.objects
        data = b"".join(cloudpickle.dumps(o) for o in self.objects)
        self.objects.clear()
        return len(data), leaks(data)


def test_worker_and_trial_configs_carry_no_credentials():
    """No Ray: the pieces that the jobs ship, built from a URI with a password."""
    from ray import cloudpickle

    from tnn.ray.serve_app import without_userinfo
    from tnn.ray.trial_runs import TrialRuns
    from tnn.ray.tune import shipped
    from tnn.ray.workers import worker_config
    from tnn.train.config import MLflowConfig, TrainJobConfig
    uri = f"http://alice:{PASSWORD}@mlflow.example:5000"
    cfg = TrainJobConfig(mlflow=MLflowConfig(tracking_uri=uri, run_id="r"))
    assert worker_config(cfg)["mlflow"] == {**worker_config(cfg)["mlflow"],
                                            "tracking_uri": redact(uri), "run_id": "r"}
    job = {"mlflow": {"tracking_uri": uri}, "subset": 600}
    assert shipped(job) == {"mlflow": {"tracking_uri": redact(uri)}, "subset": 600}
    callback = TrialRuns({"tracking_uri": uri, "experiment": "e", "run_id": "p"}, shipped(job))
    assert not leaks(cloudpickle.dumps(callback))
    assert callback.parent["tracking_uri"] == uri  # the driver's copy keeps it
    assert without_userinfo(uri) == ("http://mlflow.example:5000", True)
    assert without_userinfo("sqlite:///x.db") == ("sqlite:///x.db", False)


def test_no_secret_shipped_printed_logged_or_stored(no_session_ray, s3_prefix, tmp_path, capfd,
                                                    monkeypatch, mlflow_server):
    import ray
    for key, value in {**RAY_ENV, "AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_TRACKING_TOKEN": TOKEN,
                       "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, store = mlflow_server
    found: dict[str, list[str]] = {}
    ray.init(address="local", num_cpus=2, resources={"trial_slot": 1}, include_dashboard=True,
             dashboard_host="127.0.0.1", logging_level="WARNING", log_to_driver=True)
    try:
        session_logs = ray_session_logs()
        run_jobs(uri, s3_prefix, tmp_path, Shipped(monkeypatch), capfd, found, monkeypatch)
    finally:
        ray.shutdown()
    found.update(scan_tree(session_logs))

    from mlflow import MlflowClient
    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])]
    assert len(runs) >= 1 + 1 + 1 + 1  # train, tune parent + 1 trial, evaluation(s)
    for run in runs:
        text = repr(sorted(run.data.params.items())) + repr(sorted(run.data.tags.items()))
        if hits := leaks(text.encode()):
            found[f"run {run.info.run_name} params/tags"] = hits
        dst = tmp_path / "downloaded" / run.info.run_id
        dst.mkdir(parents=True)
        client.download_artifacts(run.info.run_id, "", str(dst))
    downloaded = sum(1 for p in (tmp_path / "downloaded").rglob("*") if p.is_file())
    assert downloaded > 15
    found.update(scan_tree(tmp_path / "downloaded"))
    found.update(scan_tree(store))  # mlflow.db and every stored artifact and logged model
    found.update(scan_tree(tmp_path / "tune"))  # the trials' checkpoints, Tune's tuner.pkl
    found.update(scan_tree(tmp_path / "index"))

    s3 = storage.s3_client()
    bucket, prefix = storage.split_s3(s3_prefix)
    objects = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/") for o in page.get("Contents", [])]
    assert any(k.endswith("state.pt") for k in objects)
    assert any(k.endswith("job/tnn_run.json") for k in objects)
    for key in objects:
        if hits := leaks(s3.get_object(Bucket=bucket, Key=key)["Body"].read()):
            found[f"s3://{bucket}/{key}"] = hits
    assert (store / "mlflow.db").stat().st_size > 0
    assert found == {}


def run_jobs(uri: str, s3_prefix: str, tmp_path: Path, shipped: Shipped, capfd,
             found: dict, monkeypatch) -> None:
    """train, tune, promote, embed and the Serve deployment, on the Ray that is up."""
    start = time.perf_counter()

    def after_job(name: str) -> str:
        nonlocal start
        seconds, out = time.perf_counter() - start, capfd.readouterr()
        for stream, text in (("stdout", out.out), ("stderr", out.err)):
            if hits := leaks(text.encode()):
                found[f"{name} {stream}"] = hits
        size, hits = shipped.leaks() if name != "promote" else (0, [])
        if hits:
            found[f"{name}: shipped to Ray"] = hits
        with capfd.disabled():
            print(f"\n{name}: {seconds:.0f} s, {size} bytes shipped checked", end="")
        start = time.perf_counter()
        return out.out

    sets = {"subset": 300, "workers": 1, "tnn.train.epochs": 1, "tnn.train.batch_size": 64,
            "storage_path": f"{s3_prefix}/runs", "run_name": "job", "mlflow.tracking_uri": uri}
    assert train.main([a for k, v in sets.items() for a in ("--set", f"{k}={v}")]) == 0
    after_job("train")

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "method": "tnn-e2e", "base": {"subset": 300, "tnn": {"train": {"epochs": 1}}},
        "params": [{"key": "tnn.train.margin", "grid": [0.1]}], "scheduler": {"name": "fifo"}}))
    assert tune.main(["--space", str(space), "--experiment", "tnn-tune", "--tracking-uri", uri,
                      "--set", f"base.storage_path={tmp_path / 'tune'}"]) == 0
    after_job("tune")

    assert promote.main(["--experiment", "tnn-tune", "--model-name", "m", "--tracking-uri", uri,
                         "--smoke"]) == 0
    after_job("promote")

    # embed: what its actors get (the dataset is built, not run: executing it adds ~15 s and
    # ships nothing more); the index for the app is written in-process
    from tnn.ray.embed import EmbedConfig, encoded, programs
    from tnn.tracking.query import write_index
    from tnn.tracking.registry import load_encoders
    index = str(tmp_path / "index")
    encoded(EmbedConfig("models:/m@champion", "uci-mfeat", index, tracking_uri=uri),
            programs(load_encoders("models:/m@champion", tracking_uri=uri)))
    write_index("models:/m@champion", "uci-mfeat", index, tracking_uri=uri)
    after_job("embed")

    from tnn.ray import serving
    config = serving.read_config(ROOT / "cluster" / "serve.yaml")
    monkeypatch.setattr(serving.Client, "wait", lambda self, seconds=60: {})  # not deployed
    serving.start(config, "models:/m@champion", index, uri)
    assert "MLFLOW_TRACKING_TOKEN" in after_job("serve")  # the one line about credentials
