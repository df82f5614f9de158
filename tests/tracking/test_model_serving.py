"""`mlflow models serve -m models:/tnn@champion --env-manager local`: the registered model as
MLflow serves it, on 127.0.0.1 (free port), queried at /invocations in both modalities (the
`modality` param) and compared with the in-process encoder; the server and every process
under it are stopped by pid and checked gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.support import free_port, kill, live, stop, tree
from tnn.data.sources import load_source
from tnn.methods.linear import CCAConfig, fit_linear
from tnn.tracking import registry
from tnn.tracking import runs as tracking

MLFLOW = Path(sys.executable).with_name("mlflow")


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.timeout(240)
def test_mlflow_models_serve_answers_both_modalities_like_the_encoder(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    p = load_source("uci-mfeat").subset(np.arange(0, 2000, 50))  # 40 clips, 10 classes
    encoder = fit_linear(load_source("uci-mfeat"), CCAConfig(dim=7), beta=0.2)
    logger, _ = tracking.open_run(uri, "serve", "c-cca")
    registry.log_model(logger, encoder)
    logger.finish()
    registry.set_alias("tnn", "champion", registry.register_model(logger.run_id, "tnn",
                                                                  tracking_uri=uri),
                       tracking_uri=uri)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1",  # as activated:
           "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn there
    proc = subprocess.Popen([str(MLFLOW), "models", "serve", "-m", "models:/tnn@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
                             "-w", "1"], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=(tmp_path / "serve.log").open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not come up"
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        for modality, params in (("audio", None), ("audio", {"modality": "audio"}),
                                 ("visual", {"modality": "visual"})):
            x = getattr(p, modality)
            status, out = _post(f"{url}/invocations", {"inputs": x.tolist(),
                                                       **({"params": params} if params else {})})
            assert status == 200, out
            want = encoder.embed_audio(x) if modality == "audio" else encoder.embed_visual(x)
            got = np.asarray(out["predictions"], np.float32)
            assert got.shape == want.shape == (40, 7)
            assert np.abs(got - want).max() <= 1e-6
        status, out = _post(f"{url}/invocations", {"inputs": p.audio.tolist(),
                                                   "params": {"modality": "visual"}})
        assert status >= 400 and "visual features must have shape (N, 240)" in json.dumps(out)
    finally:
        procs = tree(proc.pid, session=True)
        stop(proc, timeout=15)
        kill(procs)
        time.sleep(0.5)
        assert not live(procs), "processes of mlflow models serve still running"
