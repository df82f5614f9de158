"""Session fixtures: a real S3 server and one local Ray instance, both on 127.0.0.1.

- `s3_server`: moto's standalone server (`moto_server`, from moto[server]) started as a
  subprocess on a free port, stopped by pid at the end. It sets the AWS environment for the
  session: fake credentials, `AWS_ENDPOINT_URL`, a region, and empty AWS config files so a
  developer's ~/.aws never leaks in. In-process moto mocks would not reach pyarrow.
- `s3_bucket` / `s3_prefix`: a session bucket and a fresh prefix per test.
- `ray_local`: the session's one Ray instance (`ray.init(address="local")`, 2 CPUs, a
  `trial_slot` resource of 2 for Tune's trial drivers, dashboard on 127.0.0.1 for the State API
  that Train/Tune need), started lazily by the first test that asks for it and again after a
  module asked for `no_session_ray` (tests/jobs/test_job_submit.py does, to run a head of its
  own). It depends on `s3_server` so Ray workers inherit the AWS environment, and runs with
  `tests.support.RAY_ENV`. Never more than one Ray per machine. Files run in this order:
  those without Ray tests, those on the session's Ray, then those that stop it to run a Ray
  of their own (`no_session_ray`), so the session's Ray starts once (`file_ranks`).
- `_no_leftovers` (every test): each process the session starts carries a session id in its
  environment; at the end, any still running 20 s after the fixtures stopped theirs (a Ray
  actor that outlived its raylet, a server a test forgot; not pytest's own multiprocessing
  resource tracker, which ends with it) is killed by pid and named in one warning line, so
  the next run on the machine does not share its 2 cores with it.
Helpers that test modules import (paths, the moto server, process trees) are in tests/support.py.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import pytest
import torch

from tests.support import (RAY_ENV, SESSION_TAG, companions, describe, kill, start_moto, stop,
                           tagged)

# The suite's models are small: one intra-op thread is faster than two spinning threads on the
# 2-core CI machine, where the moto server and Ray workers share the cores.
torch.set_num_threads(1)

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "tnn-test"
LEFTOVERS: list[str] = []


# A test that may start Ray: marked `ray`, or asking for a fixture that starts or stops one.
RAY_FIXTURES = {"ray_local", "_ray_session", "no_session_ray"}


def may_start_ray(item: pytest.Item) -> bool:
    return bool(item.get_closest_marker("ray") or RAY_FIXTURES & set(item.fixturenames))


def file_ranks(items: list[pytest.Item]) -> dict[Path, int]:
    """Per test file with Ray tests: 1 if one of them uses the session's Ray (`ray_local`),
    else 2 (they stop it for a Ray of their own, `no_session_ray`, or need none). Files
    without Ray tests are not listed: rank 0."""
    session: dict[Path, bool] = {}
    for item in items:
        if may_start_ray(item):
            session[item.path] = session.get(item.path, False) or "ray_local" in item.fixturenames
    return {path: 1 if uses else 2 for path, uses in session.items()}


@pytest.hookimpl(tryfirst=True)  # before `-m` selection reads the marks
def pytest_collection_modifyitems(config, items):
    """Marks every test that may start Ray `ray` (so `-m "not ray"` leaves it out) and orders
    the files by `file_ranks`, file order within a rank: the session's Ray starts once, not
    again after each file that stopped it for a Ray of its own."""
    ranks = file_ranks(items)
    items.sort(key=lambda item: ranks.get(item.path, 0))
    for item in items:
        if may_start_ray(item) and not item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.ray)


def pytest_configure(config):
    # Ray Data's own DataContext copy trips its deprecated-property warnings; not ours to fix.
    config.addinivalue_line("filterwarnings",
                            "ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="session", autouse=True)
def _no_leftovers():
    """Tags what the session starts; kills and names what is left of it at the end."""
    tag = uuid.uuid4().hex
    os.environ[SESSION_TAG] = tag
    yield
    ours = {os.getpid()} | companions()
    deadline = time.monotonic() + 20  # Ray's processes wind down after `ray.shutdown()`
    while tagged(tag, ours) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = tagged(tag, ours)
    if left:
        names = ", ".join(describe(p) for p in left[:5])
        kill(left)
        LEFTOVERS.append(f"warning: {len(left)} process(es) the tests started outlived them, "
                         f"killed: {names}")
    os.environ.pop(SESSION_TAG, None)


def pytest_terminal_summary(terminalreporter):
    for line in LEFTOVERS:  # `_no_leftovers`' finding, after the session's fixtures ended
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The endpoint URL of a moto S3 server; the AWS environment points at it meanwhile."""
    tmp = tmp_path_factory.mktemp("moto")
    proc, endpoint = start_moto(tmp / "moto.log")
    mp = pytest.MonkeyPatch()
    try:
        for key, value in {**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint,
                           "AWS_CONFIG_FILE": str(tmp / "aws-config"),
                           "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "aws-credentials")}.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            mp.delenv(key, raising=False)
        yield endpoint
    finally:
        mp.undo()
        stop(proc)


@pytest.fixture(scope="session")
def s3_bucket(s3_server) -> str:
    """`s3://tnn-test`, created once on the session's server."""
    from tnn.data.storage import s3_client
    s3_client().create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}"


@pytest.fixture
def s3_prefix(s3_bucket, request) -> str:
    """A fresh, empty prefix for one test: `s3://tnn-test/<test name>-<random>`."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    return f"{s3_bucket}/{name}-{uuid.uuid4().hex[:8]}"


def _start_ray():
    import ray
    import ray.data
    ray.init(address="local", num_cpus=2, resources={"trial_slot": 2}, include_dashboard=True,
             dashboard_host="127.0.0.1", logging_level="WARNING", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


@pytest.fixture(scope="session")
def _ray_session(s3_server):
    """The Ray environment for the session; whatever Ray is up at the end is shut down."""
    mp = pytest.MonkeyPatch()
    for key, value in RAY_ENV.items():
        mp.setenv(key, value)
    try:
        yield
    finally:
        import ray
        ray.shutdown()
        mp.undo()


@pytest.fixture
def ray_local(_ray_session):
    """The session's local Ray, started on first use and again after a test stopped it."""
    import ray
    if not ray.is_initialized():
        _start_ray()
    return ray


@pytest.fixture(scope="module")
def no_session_ray():
    """No Ray in this process for a module that runs a Ray of its own (one Ray per machine):
    shuts the session's down if it is up; the next `ray_local` user starts it again."""
    import ray
    ray.shutdown()
    yield
