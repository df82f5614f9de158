"""Driver failure: `python -m jobs.train` (which starts a local Ray of its own) is killed with
its whole process group once a checkpoint is stored; no process it started survives; the
same command again resumes the run from the stored checkpoint, in the same MLflow run. The
checkpoints are on S3 (the store a cluster uses; two minutes a run, so once): a relaunch that
resumes from local storage is in tests/faults/test_train.py (the payload test: it reaches
the latest local checkpoint through Ray Train's snapshot), as is a restart from local
checkpoints within a run. The session's Ray is shut down meanwhile (one Ray per machine)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import RAY_ENV, ROOT, kill, live, tree
from tnn.data import storage
from tnn.tracking import runs as tracking

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.timeout(300)]
LAST = re.compile(r"train: test fold 0 a->v MAP [0-9.]+ v->a MAP [0-9.]+ \(mean ([0-9.]+)\) "
                  r"in \d+ s, run (\w+)$")
EPOCHS = 6


def command(tmp_path: Path, runs: str) -> list[str]:
    sets = {"subset": 600, "workers": 1, "tnn.train.batch_size": 64, "tnn.train.epochs": EPOCHS,
            "storage_path": runs, "run_name": "job", "mlflow.local_dir": tmp_path / "mlflow"}
    return [sys.executable, "-m", "jobs.train"] + [a for k, v in sets.items()
                                                   for a in ("--set", f"{k}={v}")]


def environment() -> dict:
    env = {**os.environ, **RAY_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return env


def stored(runs: str, name: str) -> bool:
    fs, root = storage.filesystem(storage.join(runs, "job"))
    from pyarrow import fs as pafs
    return fs.get_file_info(f"{root}/{name}").type != pafs.FileType.NotFound


def kill_after_checkpoint(cmd: list[str], runs: str, log: Path) -> tuple[list, float]:
    """Start `cmd` in a new process group; once epoch 2's checkpoint is stored, SIGKILL the
    group; return the driver and every process it had started (all gone by then)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=environment(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    family: list = []
    try:
        deadline = time.monotonic() + 200
        while not stored(runs, "epoch-0002/state.pt"):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.1)
        family = tree(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        start = time.monotonic()
        while live(family) and time.monotonic() - start < 30:
            time.sleep(0.1)
        return family, -1.0 if live(family) else time.monotonic() - start
    finally:
        kill(family or tree(proc.pid))  # never leave one behind


def check_resumed(tmp_path: Path, runs: str, out: str, first_run_id: str) -> int:
    match = LAST.match(out.strip().splitlines()[-1])
    assert match, out[-3000:]
    assert match.group(2) == first_run_id  # the same MLflow run
    uri = tracking.resolve(None, tmp_path / "mlflow")[0]
    run = tracking.RunLogger(uri, first_run_id)
    exp = run.client.get_experiment_by_name("tnn-train")
    assert len(run.client.search_runs([exp.experiment_id])) == 1
    assert run.client.get_run(first_run_id).info.status == "FINISHED"
    resumed = run.history("resumed_from_epoch")
    assert len(resumed) == 1 and resumed[0][1] >= 2, resumed
    # every epoch in MLflow: those the relaunch ran, and those the killed driver trained and
    # checkpointed but had not logged yet (from the checkpoint: CI once killed it at epoch 6)
    steps = {s for s, _ in run.history("val_map")}
    assert steps == set(range(1, EPOCHS + 1)), (sorted(steps), resumed, out[-1500:])
    return int(resumed[0][1])


@pytest.mark.s3
def test_a_killed_driver_resumes_when_launched_again(no_session_ray, s3_prefix, tmp_path,
                                                     capsys):
    runs = f"{s3_prefix}/runs"
    cmd = command(tmp_path, runs)
    start = time.perf_counter()
    family, gone_in = kill_after_checkpoint(cmd, runs, tmp_path / "first.log")
    killed_at = time.perf_counter() - start
    assert gone_in >= 0, "processes of the killed driver survived"
    assert len(family) > 5  # the driver, Ray's head processes, the Train controller, workers
    fs, root = storage.filesystem(storage.join(runs, "job"))
    with fs.open_input_stream(f"{root}/tnn_run.json") as f:
        first_run_id = json.loads(f.read())["mlflow_run_id"]

    again = subprocess.run(cmd, cwd=ROOT, env=environment(), capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    after = check_resumed(tmp_path, runs, again.stdout, first_run_id)
    with capsys.disabled():
        print(f"\ns3: driver and {len(family) - 1} processes killed at {killed_at:.0f} s, "
              f"all gone {gone_in:.1f} s later; relaunch resumed after epoch {after} and "
              f"finished in "
              f"{time.perf_counter() - start - killed_at:.0f} s")
