"""The README's path from a clone to a served champion ("Serving the champion"), command by
command, as a new user runs them: the block is read from README.md, each `python ...` line runs
as written (this interpreter, in a fresh folder, so ./runs is created there and MLflow is the
embedded default), `jobs.serve` stays up until the query is answered, and the `curl` line is
sent with urllib (same request: POST of q.json to /search). The first line (venv + install) is
what CI runs before the suite. `jobs.train --smoke` also shows the console a person watches:
one line per epoch and none of Ray's report dicts, status tables or deprecation warnings."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support import RAY_ENV, ROOT, stop
from tnn.ray import session

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]
EPOCH = re.compile(r"train: epoch (\d+)/(\d+)  loss -?\d+\.\d{4}  val MAP \d\.\d{4}  "
                   r"\d+ samples/s  ~\d\d:\d\d left")
NOISE = ("Reporting training result", "exclude_resources", "DeprecationWarning",
         "RayTrainWorker", "Trial status")


def readme_commands() -> list[str]:
    """The code block after "From a clone to a served champion", comments stripped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("From a clone to a served champion on this machine:")
    block = text[start:].split("```")[1]
    return [line.split("  #")[0].strip() for line in block.strip().splitlines()]


def test_the_readme_block_is_what_this_test_runs():
    lines = readme_commands()
    assert lines[0].startswith("python3 -m venv .venv && .venv/bin/pip install -e '.[test]'")
    assert [ln.split()[:3] for ln in lines[1:5]] == [
        ["python", "-m", "jobs.train"], ["python", "-m", "jobs.promote"],
        ["python", "-m", "jobs.embed"], ["python", "-m", "jobs.serve"]]
    assert lines[5].startswith("python -c ") and lines[5].endswith("> q.json")
    assert lines[6] == "curl -s 127.0.0.1:8000/search -d @q.json"


def _argv(line: str) -> list[str]:
    words = shlex.split(line)
    assert words[0] == "python", line
    return [sys.executable, *words[1:]]


def test_clone_to_a_served_champion(no_session_ray, tmp_path):
    lines = readme_commands()
    env = {**os.environ, **RAY_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", session.VERBOSE_ENV):
        env.pop(key, None)
    timings = {}

    def run(line: str, timeout: float = 300) -> subprocess.CompletedProcess:
        start = time.perf_counter()
        done = subprocess.run(_argv(line), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=timeout)
        timings[line.split()[2]] = time.perf_counter() - start
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-3000:])
        return done

    train = run(lines[1])
    epochs = [EPOCH.fullmatch(ln) for ln in train.stdout.splitlines()
              if ln.startswith("train: epoch ")]
    assert epochs and all(epochs), train.stdout[-2000:]
    total = int(epochs[0].group(2))
    assert [int(m.group(1)) for m in epochs] == list(range(1, total + 1))
    for noise in NOISE:
        assert noise not in train.stdout + train.stderr, noise
    assert (tmp_path / "runs" / "mlflow" / "mlflow.db").is_file()  # the embedded default

    promote = run(lines[2])
    assert "promoted: champion is now tnn (version 1)" in promote.stdout, promote.stdout
    run(lines[3])
    assert (tmp_path / "runs" / "index" / "champion").exists()

    start = time.perf_counter()
    server = subprocess.Popen(_argv(lines[4]), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        url, seen = None, []
        while url is None and time.perf_counter() - start < 240:
            line = server.stdout.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(r"serve: tnn@champion \(version 1, .*\) at (http://\S+)/search",
                              line)
            url = found and found.group(1)
        assert url == "http://127.0.0.1:8000", "".join(seen)[-3000:]
        timings["serve"] = time.perf_counter() - start

        query = subprocess.run(_argv(lines[5].rsplit(">", 1)[0]), cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120)  # > q.json
        assert query.returncode == 0, query.stderr[-2000:]
        (tmp_path / "q.json").write_text(query.stdout)
        host, body = lines[6].split()[2], (tmp_path / "q.json").read_bytes()  # curl -d @q.json
        request = urllib.request.Request(f"http://{host}", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as reply:
            answer = json.loads(reply.read())
        (hits,) = answer["results"]  # one query row
        assert len(hits) == 5 and {"rank", "clip_id", "score", "label"} <= set(hits[0])
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    finally:
        if server.poll() is None:
            server.send_signal(2)  # Ctrl-C: the README's way to stop it and its local Ray
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop(server)
        server.stdout.close()
    assert server.returncode == 0
    print("\nREADME path:", ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
