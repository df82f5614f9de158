"""tests/support.py's process tagging: what a test session starts is found by its tag, wherever
it sits, and nothing else is (tests/conftest.py's `_no_leftovers` kills only those); this
process's own multiprocessing helpers are not counted."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from tests.support import SESSION_TAG, companions, describe, kill, live, tagged


def test_tagged_finds_the_processes_started_with_the_tag_and_only_those():
    tag, other = uuid.uuid4().hex, uuid.uuid4().hex
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    ours = subprocess.Popen(sleep, env={**os.environ, SESSION_TAG: tag})
    theirs = subprocess.Popen(sleep, env={**os.environ, SESSION_TAG: other})
    try:
        found = tagged(tag)
        assert [p.pid for p in found] == [ours.pid]
        assert describe(found[0]).startswith(f"{ours.pid} {sys.executable} -c import time")
        assert tagged(tag, exclude={ours.pid}) == []
        kill(found)
        ours.wait(timeout=10)
        assert tagged(tag) == [] and live(found) == []
        assert [p.pid for p in tagged(other)] == [theirs.pid]  # untouched
        assert describe(found[0]) == f"{ours.pid} (gone)"
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait(timeout=10)


def test_this_processes_multiprocessing_helpers_are_companions_not_leftovers():
    from multiprocessing import resource_tracker
    resource_tracker.ensure_running()  # what torch.multiprocessing starts in the test process
    tracker = resource_tracker._resource_tracker._pid
    assert tracker in companions()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert child.pid not in companions()  # a process a test started is not one
    finally:
        child.kill()
        child.wait(timeout=10)
