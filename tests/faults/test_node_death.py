"""A node dies, not only a worker process: on a three-node Ray cluster on this machine
(`ray.cluster_utils.Cluster`: a head with no CPUs, where the driver runs, and two worker
nodes), the node that holds the Train worker is killed mid-epoch with all its processes
(raylet, object store, workers: SIGKILL). The fit set's blocks are not lost with it: for
this in-memory source the driver put them in the head node's object store (`tnn.ray.prepare`,
since 54c866b; before, Ray Data tasks cached them on the worker nodes). The run resumes from its
last checkpoint on the surviving node, finishes with the test MAP of an uninterrupted run
within noise, and its MLflow run is one run, resumed once.

The same small run as tests/faults/test_train.py (600 clips, 12 epochs), one Train worker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from tests.faults.test_train import (LAST, NOISE, SMALL, argv, one_process_map,
                                     the_one_finished_run)
from tests.support import RAY_ENV, ROOT, free_port

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]
VICTIMS = ("node_a", "node_b")  # a custom resource that names each worker node


class NodeKiller(threading.Thread):
    """Once `ready()` holds, kills (no grace) the worker node that holds the live Train
    worker, found by the State API (actor class `RayTrainWorker`, node resources)."""

    def __init__(self, cluster, nodes: dict, ready, delay: float = 0.3,
                 timeout: float = 240, latest=lambda: None) -> None:
        super().__init__(daemon=True)
        self.cluster, self.nodes, self.ready, self.latest = cluster, nodes, ready, latest
        self.delay, self.timeout = delay, timeout
        self.killed: str | None = None
        self.latest_at_kill: int | None = None  # the newest checkpoint's epoch when killed
        self.latest_after_kill: int | None = None  # ... once the node was gone
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            from ray.util.state import list_actors, list_nodes
            deadline = time.monotonic() + self.timeout
            while not self.ready() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(self.delay)
            url = f"http://{self.cluster.webui_url}"  # the head's dashboard: the State API
            alive = list_actors(address=url, filters=[("class_name", "=", "RayTrainWorker"),
                                                      ("state", "=", "ALIVE")])
            where = {n.node_id: name for n in list_nodes(address=url)
                     for name in VICTIMS if name in n.resources_total}
            names = [where[a.node_id] for a in alive if a.node_id in where]
            if names:
                self.killed, self.latest_at_kill = names[0], self.latest()
                self.cluster.remove_node(self.nodes[names[0]], allow_graceful=False)
                self.latest_after_kill = self.latest()
        except BaseException as err:  # reported by the test
            self.error = err


@pytest.fixture
def cluster(no_session_ray, monkeypatch):
    """Head (0 CPUs: Train's controller and Ray Data's coordinators) and two 2-CPU worker
    nodes, every listener on 127.0.0.1."""
    from ray.cluster_utils import Cluster
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(), "node_ip_address": "127.0.0.1"})
    try:
        nodes = {name: c.add_node(num_cpus=2, resources={name: 1}, node_ip_address="127.0.0.1")
                 for name in VICTIMS}
        yield c, nodes
    finally:
        c.shutdown()


def test_a_killed_node_resumes_from_its_checkpoint(cluster, tmp_path, capsys):
    """The job is its own driver process (as under `ray job submit`), connected through
    RAY_ADDRESS; this process owns the cluster and kills the node. (A driver in this process
    would not do: Ray read RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when pytest imported it, before
    RAY_ENV was set, and would resolve 127.0.0.1 to the machine's address.)"""
    c, nodes = cluster
    runs = tmp_path / "runs"
    killer = NodeKiller(c, nodes, lambda: (runs / "job" / "epoch-0003").is_dir(),
                        latest=lambda: max(int(p.name.split("-")[1]) for p in
                                           (runs / "job").glob("epoch-0*")))
    killer.start()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(RAY_ENV, RAY_ADDRESS=c.address, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    job = subprocess.run([sys.executable, "-m", "jobs.train",
                          *argv(tmp_path, str(runs), "job", max_failures=1, workers=1,
                                cpus_per_worker=1)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    seconds = time.perf_counter() - start
    killer.join(timeout=5)
    assert killer.error is None, killer.error
    assert job.returncode == 0, job.stderr[-3000:]
    match = LAST.match(job.stdout.strip().splitlines()[-1])
    assert match, job.stdout[-2000:]
    mean, run_id = match.group(3), match.group(4)
    assert killer.killed in VICTIMS and len(c.worker_nodes) == 1  # one node was removed

    # one MLflow run, resumed once from the newest checkpoint when the node died (or the one
    # before, if that one was in flight). Not bounded above by what storage held when
    # remove_node returned: the raylet dies at once, but its worker learns of it a moment later
    # and may finish the epoch's checkpoint first (seen: newest 4 at the kill, resumed from 5),
    # which is then the run's last checkpoint
    resumed = the_one_finished_run(tmp_path, run_id)
    latest = killer.latest_at_kill
    assert latest is not None and 3 <= latest < SMALL["tnn.train.epochs"], latest
    assert len(resumed) == 1 and latest - 1 <= resumed[0][1] < SMALL["tnn.train.epochs"], \
        (resumed, latest, killer.latest_after_kill, job.stderr[-3000:])

    twin = one_process_map()
    with capsys.disabled():
        print(f"\nnode {killer.killed} (the Train worker's) killed after epoch {latest}'s "
              "checkpoint; "
              f"resumed from epoch {resumed[0][1]:.0f}; jobs.train {seconds:.0f} s; mean MAP "
              f"{mean} vs one process {twin:.4f}")
    assert abs(float(mean) - twin) < NOISE
