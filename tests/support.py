"""What several test modules share: paths, the Ray environment, a moto S3 server, process trees.

- `ROOT`: the repository root; `SHARED`: the shared folder beside the checkout (`shared/data/...`).
- `RAY_ENV`: the environment every Ray the tests start runs with (in-process, `ray start`,
  `python -m jobs.*` subprocesses): no usage stats, no auth token, short drain on shutdown.
- `free_port(s)`, `start_moto`, `stop`: free ports of 127.0.0.1; a standalone moto S3 server
  as a subprocess there, stopped by pid.
- `tree`, `running`, `live`, `kill`: a process and everything it started, by psutil. A
  `psutil.Process` remembers its start time, so a pid reused by a newer process is never taken
  for ours; a zombie counts as dead (killed, not yet reaped by its parent).
- `SESSION_TAG`, `tagged`: every process a test session starts inherits `SESSION_TAG=<id>` in
  its environment (tests/conftest.py sets it), so what outlives its parent is still found.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterable

import psutil

from tnn.ray.session import TEST_HEAD_ENV

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RAY_ENV = TEST_HEAD_ENV  # defined once, in the library (bench uses it too)


# ---------------------------------------------------------------- moto S3 server

def free_ports(n: int) -> list[int]:
    """`n` distinct ports of 127.0.0.1 that were free a moment ago (all probed at once)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    """`moto_server` on a free port of 127.0.0.1, output appended to `log`; (process, endpoint)."""
    exe = Path(sys.executable).with_name("moto_server")
    for _ in range(3):  # the free port can be taken between probing and binding
        port = free_port()
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log.open("ab"), stderr=subprocess.STDOUT)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                return proc, endpoint
            except OSError:
                time.sleep(0.1)
        stop(proc)
    raise RuntimeError(f"moto_server did not start; see {log}")


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout` s; reaps the process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- process trees

def _session(p: psutil.Process) -> int | None:
    try:
        return os.getsid(p.pid)
    except OSError:
        return None


def tree(root: int, session: bool = False) -> list[psutil.Process]:
    """`root` and every process below it; with `session`, also every member of the session that
    `root` leads and everything below those (Ray workers sit in process groups of their own, job
    drivers in sessions of their own). Empty if `root` is gone."""
    try:
        top = [psutil.Process(root)]
    except psutil.NoSuchProcess:
        return []
    if session:
        top += [p for p in psutil.process_iter() if p.pid != root and _session(p) == root]
    found = {p.pid: p for p in top}
    for p in top:
        try:
            found.update((c.pid, c) for c in p.children(recursive=True) if c.pid not in found)
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


def running(p: psutil.Process | int) -> bool:
    """Whether `p` (a Process, or a pid) still runs: not gone, not reused, not a zombie."""
    try:
        p = psutil.Process(p) if isinstance(p, int) else p
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def live(procs: Iterable[psutil.Process], session: int | None = None) -> list[int]:
    """The pids of `procs` still running and, with `session`, of any running member of that
    session (one started after `procs` was taken)."""
    out = {p.pid for p in procs if running(p)}
    if session is not None:
        out |= {p.pid for p in psutil.process_iter() if _session(p) == session and running(p)}
    return sorted(out)


def kill(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL to each of `procs` still running (never to a reused pid)."""
    for p in procs:
        try:
            if running(p):
                p.kill()
        except psutil.NoSuchProcess:
            pass


SESSION_TAG = "TNN_TEST_SESSION"
_GONE = (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess)  # cannot be read


def tagged(tag: str, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Running processes (not `exclude`) whose environment has `SESSION_TAG=tag`: what a test
    session started, wherever it sits now (a Ray worker whose raylet died is re-parented)."""
    out = []
    for p in psutil.process_iter():
        if p.pid in exclude:
            continue
        try:
            if p.environ().get(SESSION_TAG) == tag and running(p):
                out.append(p)
        except _GONE:
            pass
    return out


def companions() -> set[int]:
    """This process's own multiprocessing helpers (resource tracker, forkserver): they end with
    it by design (EOF on their pipe), so they are not leftovers of a test."""
    out = set()
    for child in psutil.Process().children():
        try:
            if "from multiprocessing." in " ".join(child.cmdline()):
                out.add(child.pid)
        except _GONE:
            pass
    return out


def describe(p: psutil.Process) -> str:
    """`pid command line` (60 characters), or `pid (gone)`."""
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:60]}"
    except _GONE:
        return f"{p.pid} (gone)"
