"""The suite's own order and marks (tests/conftest.py): every test that may start Ray (marked
`ray`, or asking for `ray_local` / `no_session_ray`) is marked `ray` before `-m` selects; files
without Ray tests run first, then files on the session's Ray, then files that stop it for a Ray
of their own, file order within each, so the session's Ray starts once. Checked on a small
suite run in a subprocess with the real hook, and on this suite's own collection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

CONFTEST = '''
import pytest
from tests.conftest import pytest_collection_modifyitems  # noqa: F401

@pytest.fixture
def ray_local():
    return None

@pytest.fixture(scope="module")
def no_session_ray():
    yield
'''
FILES = {
    # first in file order, but its Ray test stops the session's Ray: it runs last
    "test_a_own_ray.py": '''
import pytest

def test_own_ray(no_session_ray):
    pass

def test_plain_beside_own_ray():
    pass
''',
    "test_b_session_ray.py": '''
import pytest

def test_asks_ray_local(ray_local):
    pass

@pytest.mark.ray
@pytest.mark.parametrize("i", range(2))
def test_marked_ray(i):
    pass
''',
    "test_c_plain.py": '''
import pytest

@pytest.mark.parametrize("i", range(3))
def test_plain(i):
    pass
''',
}


def collect(tmp_path: Path, *args: str) -> list[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    ray: starts Ray\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--strict-markers", "--collect-only", "-q", *args], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode in (0, 5), done.stdout[-3000:] + done.stderr[-3000:]
    return [ln.split("::", 1)[1] for ln in done.stdout.splitlines() if "::" in ln]


def test_files_without_ray_then_on_the_session_ray_then_with_a_ray_of_their_own(tmp_path):
    assert collect(tmp_path) == [
        "test_plain[0]", "test_plain[1]", "test_plain[2]",           # test_c_plain.py
        "test_asks_ray_local", "test_marked_ray[0]", "test_marked_ray[1]",  # test_b_...
        "test_own_ray", "test_plain_beside_own_ray"]                 # test_a_own_ray.py


def test_the_ray_mark_is_given_before_selection(tmp_path):
    assert collect(tmp_path, "-m", "not ray") == [
        "test_plain[0]", "test_plain[1]", "test_plain[2]", "test_plain_beside_own_ray"]
    assert collect(tmp_path, "-m", "ray") == [
        "test_asks_ray_local", "test_marked_ray[0]", "test_marked_ray[1]", "test_own_ray"]


def test_this_suite_starts_the_session_ray_once():
    """In this suite's own order, no test on the session's Ray follows a file that stopped it."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--collect-only", "-q", "-m", "ray", "tests/"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = list(dict.fromkeys(ln.split("::")[0] for ln in done.stdout.splitlines()
                               if "::" in ln))
    own = [f for f in files if "no_session_ray" in (ROOT / f).read_text()]
    assert own and "tests/jobs/test_job_submit.py" in own
    first_own = files.index(own[0])
    assert files[first_own:] == own, files  # after the first file with a Ray of its own, only such
