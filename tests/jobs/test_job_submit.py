"""`ray job submit` against a real Ray head: the jobs run unchanged as entrypoints.

The module starts a head like a cluster's (`ray start --head --block` on 127.0.0.1, free ports,
the dashboard's job server, a `trial_slot` resource as in cluster/aws.yaml) in a session of
its own, with no S3 or MLflow settings in its environment: the jobs get them only from the
runtime_env they are submitted with (cluster/runtime_env.yaml plus env_vars), as on a cluster
where they come from Secrets or instance profiles. Jobs, each by the `ray job submit` CLI with
`--working-dir .`: make_shards to S3 -> crossval on those shards; train --smoke on them ->
promote -> embed with `models:/tnn@champion` -> query -> serve (the job deploys the search app
and ends; the app, left up, answers POST /search over HTTP as in-process search of the same
index and model does, then `serve shutdown` stops it and its processes); a 1-trial tune. Each
must reach SUCCEEDED and print its summary line; the MLflow runs and aliases they made are read
back from the SQLite store. At the end the head and every process under it are stopped by pid and
checked gone (psutil). The session's in-process Ray is shut down first (`no_session_ray`: one
Ray per machine) and comes back for later tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from tests.support import RAY_ENV, ROOT, free_port, free_ports, live, running, stop, tree
from tnn.data.sources import load_source

RAY = Path(sys.executable).with_name("ray")
SERVE = Path(sys.executable).with_name("serve")
RUNTIME_ENV = ROOT / "cluster" / "runtime_env.yaml"
# What a cluster's nodes would not have in their environment; the jobs must get it by runtime_env.
JOB_ONLY = re.compile(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN|ENDPOINT_URL.*|REGION|"
                      r"DEFAULT_REGION|PROFILE)|MLFLOW_.*")

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]


@dataclass
class Head:
    address: str
    tmp: Path
    pid: int                                       # `ray start --block`: its session is the head's
    env_vars: dict = field(default_factory=dict)   # for every job's runtime_env
    timings: dict = field(default_factory=dict)


def _stop_head(proc: subprocess.Popen) -> list[int]:
    """SIGTERM to `ray start --block` (it stops its processes), SIGKILL to any left; returns
    the pids still running after that (expected: none). Ray workers sit in process groups of
    their own and job drivers in sessions of their own: the head's session and all below it."""
    procs = tree(proc.pid, session=True)
    stop(proc, timeout=30)
    deadline = time.monotonic() + 15
    while (left := live(procs, proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while (left := live(procs, proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _head_env() -> dict:
    """The test's environment without S3/MLflow settings, Ray's local-test settings, and this
    venv first on PATH: the entrypoint's `python` is the project's, as in the cluster image."""
    env = {k: v for k, v in os.environ.items() if not JOB_ONLY.fullmatch(k)}
    env.update(RAY_ENV, AWS_EC2_METADATA_DISABLED="true",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


@pytest.fixture(scope="module")
def head(no_session_ray, s3_server, request):
    """A Ray head on 127.0.0.1 for this module; stopped, with all its processes, at the end."""
    # A short temp dir: Ray's socket paths under it must fit in 107 characters.
    tmp = Path(tempfile.mkdtemp(prefix="tnn-ray-", dir="/tmp"))
    gcs, dashboard, client, agent = free_ports(4)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--num-cpus=2", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--include-dashboard=true", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", '--resources={"trial_slot": 2}',
         f"--temp-dir={tmp / 'ray'}", "--disable-usage-stats"],
        cwd=tmp, env=_head_env(), stdout=(tmp / "head.log").open("wb"),
        stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    h = Head(address, tmp, proc.pid, env_vars={k: v for k, v in os.environ.items()
                                     if JOB_ONLY.fullmatch(k) and k.startswith("AWS_")})
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head's job server did not come up"
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).close()
                break
            except OSError:
                time.sleep(0.25)
        h.timings["head start"] = time.perf_counter() - start
        yield h
    finally:
        start = time.perf_counter()
        left = _stop_head(proc)
        h.timings["head stop"] = time.perf_counter() - start
        with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
            print("\nray job submit timings: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in h.timings.items()))
        if not left:
            shutil.rmtree(tmp, ignore_errors=True)
        assert not left, f"processes of the test's Ray head still running: {left} (logs in {tmp})"


def submit(h: Head, name: str, args: list[str], env_vars: dict | None = None,
           timeout: float = 300) -> str:
    """`ray job submit` (the CLI, as a user runs it) from the repository root; asserts the job
    SUCCEEDED and returns its driver log."""
    from ray.job_submission import JobStatus, JobSubmissionClient
    runtime_env = yaml.safe_load(RUNTIME_ENV.read_text())
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **h.env_vars, **(env_vars or {})}
    sid = f"tnn-{name}-{uuid.uuid4().hex[:6]}"
    start = time.perf_counter()
    try:
        cp = subprocess.run(
            [str(RAY), "job", "submit", "--address", h.address, "--submission-id", sid,
             "--runtime-env-json", json.dumps(runtime_env), "--working-dir", ".", "--",
             "python", "-m", f"jobs.{name}", *args],
            cwd=ROOT, env={**os.environ, **RAY_ENV}, capture_output=True, text=True,
            timeout=timeout)
    except subprocess.TimeoutExpired:
        JobSubmissionClient(h.address).stop_job(sid)
        raise
    h.timings[name] = time.perf_counter() - start
    client = JobSubmissionClient(h.address)
    status, logs = client.get_job_status(sid), client.get_job_logs(sid)
    assert cp.returncode == 0 and status == JobStatus.SUCCEEDED, \
        f"{name}: {status}, rc {cp.returncode}\n{logs[-4000:]}\n{cp.stderr[-2000:]}"
    return logs


def last_line(logs: str, job: str) -> str:
    lines = [ln for ln in logs.splitlines() if ln.startswith(f"{job}: ")]
    assert lines, logs[-3000:]
    return lines[-1]


@pytest.fixture(scope="module")
def shards(head, s3_bucket):
    """uci-mfeat as shards on the S3 server, written by a make_shards job."""
    data = f"{s3_bucket}/job-submit-{uuid.uuid4().hex[:8]}/mfeat"
    logs = submit(head, "make_shards", ["--source", "uci-mfeat", "--out", data,
                                        "--rows-per-shard", "500"], timeout=180)
    assert last_line(logs, "make_shards").startswith(
        f"make_shards: wrote 2000 rows in 4 shards to {data} (folds=5, seed=0)")
    return data


@pytest.mark.timeout(300)
def test_crossval_job_reads_the_shards_and_writes_json_to_s3(head, shards):
    out = shards.rsplit("/", 1)[0] + "/crossval.json"
    logs = submit(head, "crossval", ["--data", shards, "--methods", "cca,c-cca", "--json", out,
                                     "--set", "mlflow.enabled=false"], timeout=180)
    match = re.fullmatch(r"crossval: best c-cca mean MAP ([0-9.]+) over 5 folds \(\d+ s\)",
                         last_line(logs, "crossval"))
    assert match, logs[-2000:]
    from tnn.data.storage import s3_client, split_s3
    bucket, key = split_s3(out)
    res = json.loads(s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())
    c_cca = res["methods"]["c-cca"]
    # README's table: c-cca 0.705 / 0.680 on the same folds (seed 0, stored in the shards)
    assert abs(c_cca["a2v_map"] - 0.705) < 0.005 and abs(c_cca["v2a_map"] - 0.680) < 0.005
    assert float(match.group(1)) == pytest.approx((c_cca["a2v_map"] + c_cca["v2a_map"]) / 2,
                                                  abs=1e-4)


@pytest.mark.timeout(460)
def test_train_promote_embed_query_serve_jobs_from_shards_to_retrieval(head, shards, tmp_path):
    from mlflow import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    # as on an MLflow server, the experiment's artifacts go to a store every node reaches
    client.create_experiment("tnn-train", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow_env = {"MLFLOW_TRACKING_URI": uri}  # where a cluster's Secret would put it
    logs = submit(head, "train", ["--smoke", "--data", shards,
                                  "--set", f"storage_path={tmp_path / 'runs'}",
                                  "--set", "run_name=submitted"],
                  env_vars=mlflow_env, timeout=300)
    match = re.fullmatch(r"train: test fold 0 a->v MAP ([0-9.]+) v->a MAP ([0-9.]+) "
                         r"\(mean ([0-9.]+)\) in \d+ s, run (\w+)", last_line(logs, "train"))
    assert match, logs[-2000:]
    run_id = match.group(4)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags.get("job") == "train"
    assert run.data.params["data"] == shards and run.data.params["subset"] == "600"
    assert run.data.metrics["test_map"] == pytest.approx(float(match.group(3)), abs=1e-4)
    assert "encoder/encoder.pt" in {a.path for a in client.list_artifacts(run_id, "encoder")}
    assert (tmp_path / "runs" / "submitted").is_dir()  # checkpoints where storage_path said

    logs = submit(head, "promote", ["--experiment", "tnn-train", "--smoke"],
                  env_vars=mlflow_env, timeout=200)
    assert last_line(logs, "promote").startswith("promote: promoted: champion is now tnn ")
    assert f"(run {run_id})" in last_line(logs, "promote")
    champion = client.get_model_version_by_alias("tnn", "champion")  # one model, one alias
    assert champion.run_id == run_id

    # the end of the path: a gallery embedded with @champion, then retrieval from it
    index = shards.rsplit("/", 1)[0] + "/index"
    logs = submit(head, "embed", ["--model", "models:/tnn@champion", "--data", shards,
                                  "--out", index, "--folds", "0"], env_vars=mlflow_env, timeout=200)
    assert re.match(rf"embed: wrote 400 rows \(\d+-d\) in \d+ shards? to {re.escape(index)} from "
                    rf"tnn@champion \(audio v1, visual v1, run {run_id}\)", last_line(logs, "embed"))
    queries = tmp_path / "sounds.npy"
    np.save(queries, load_source("uci-mfeat").audio[:2])
    logs = submit(head, "query", ["--index", index, "--audio", str(queries), "--k", "5"],
                  env_vars=mlflow_env, timeout=120)
    assert last_line(logs, "query").startswith(
        f"query: 2 audio queries -> top 5 visual clips of {index} (400 rows")
    _serve_answers_as_in_process(head, index, uri, str(champion.version), run_id)


def _serve_processes(h: Head) -> list[str]:
    """The command lines of the head's Serve processes (controller, proxy, replicas)."""
    out = []
    for p in tree(h.pid, session=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if running(p) and re.search(r"ray::(Serve|ProxyActor)", cmd):
            out.append(cmd)
    return out


def _serve_answers_as_in_process(h: Head, index: str, uri: str, version: str,
                                 run_id: str) -> None:
    """The documented `ray job submit ... python -m jobs.serve`: the job deploys the app and
    ends (SUCCEEDED); the app, still up, answers POST /search in both modalities as in-process
    search of the same index and model; `serve shutdown` then stops every Serve process."""
    from tnn.ray.serving import Client
    from tnn.tracking.query import query
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        logs = submit(h, "serve", ["--index", index, "--host", "127.0.0.1", "--port", str(port),
                                   "--tracking-uri", uri], timeout=180)
        assert last_line(logs, "serve") == (f"serve: tnn@champion (version {version}, run "
                                            f"{run_id}) with {index} (400 rows) at {url}/search")
        p, client = load_source("uci-mfeat"), Client(url)
        for modality, rows in (("audio", [0, 1, 2]), ("visual", [3, 4])):
            x = getattr(p, modality)[rows]
            got = client.search({modality: x.tolist(), "k": 5})
            want = query(index, x, modality, 5, model_uri="models:/tnn@champion",
                         tracking_uri=uri).to_list()
            assert got["model"]["version"] == version and len(got["results"]) == len(rows)
            for g_row, w_row in zip(got["results"], want, strict=True):
                assert [g["clip_id"] for g in g_row] == [w["clip_id"] for w in w_row]
                assert max(abs(g["score"] - w["score"]) for g, w in zip(g_row, w_row)) <= 1e-6
        assert _serve_processes(h)  # so that they are seen gone below
    finally:
        start = time.perf_counter()
        cp = subprocess.run([str(SERVE), "shutdown", "-y", "--address", h.address], cwd=ROOT,
                            env={**os.environ, **RAY_ENV}, capture_output=True, text=True,
                            timeout=60)
    assert cp.returncode == 0 and "Sent shutdown request" in cp.stdout + cp.stderr, cp.stderr
    deadline = time.monotonic() + 60
    while left := _serve_processes(h):
        assert time.monotonic() < deadline, f"Serve processes still running: {left}"
        time.sleep(0.25)
    h.timings["serve shutdown"] = time.perf_counter() - start
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the app's port any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.timeout(500)
def test_tune_job_makes_a_parent_and_a_child_run(head, shards, tmp_path):
    """One trial (a trial costs ~60 s here): the job runs under `ray job submit` and logs its
    parent and child runs; ASHA stopping trials and several children: tests/ray/test_tune.py."""
    from mlflow import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logs = submit(head, "tune", ["--space", "tune_spaces/margin_cca.yaml", "--smoke",
                                 "--trials", "1",
                                 "--set", "params=[{key: tnn.train.margin, grid: [0.2]}]",
                                 "--data", shards, "--tracking-uri", uri,
                                 "--set", f"base.storage_path={tmp_path / 'tune'}"],
                  timeout=460)
    match = re.search(r"of 1 trial \((\d+) finished, (\d+) stopped, 0 failed\) in \d+ s, "
                      r"parent run (\w+)$", last_line(logs, "tune"))
    assert match, logs[-3000:]
    client = MlflowClient(uri)
    parent = client.get_run(match.group(3))
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    (child,) = children
    assert child.data.params["tnn.train.margin"] == "0.2" and child.info.status == "FINISHED"
    assert parent.data.tags["best_child_run_id"] == child.info.run_id
