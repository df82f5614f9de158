"""Write-then-publish: a job that fails at any point leaves its previous outputs as they were.

Every job output goes through `tnn.data.write` (`Staged`, `write_bytes`, `write_json`): written
under a temporary name in the final folder, renamed over the old file only when complete. The
cases of issue #16: `crossval --methods ' '` once overwrote the --json file and then crashed;
`jobs.report` rewrote a PNG in an existing --out and then crashed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from jobs import crossval, report
from tnn.data import write
from tnn.errors import DataError
from tnn.methods import protocol
from tnn.methods import report as report_lib


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def npz(tmp_path) -> str:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", audio=rng.normal(size=(40, 4)), visual=rng.normal(size=(40, 6)),
             labels=np.arange(40) % 4)
    return f"npz:{tmp_path / 'd.npz'}"


def test_write_json_replaces_only_when_complete(tmp_path, monkeypatch):
    path = tmp_path / "out #1.json"
    write.write_json(str(path), {"v": 1})
    with pytest.raises(TypeError):  # not serialisable: fails before any byte is written
        write.write_json(str(path), {"v": object()})
    real = Path.write_bytes

    def half_then_fail(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError):
        write.write_json(str(path), {"v": 2, "pad": "x" * 1000})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out #1.json"]  # no temporary file left


def test_crossval_refusals_and_crashes_keep_the_previous_json(tmp_path, npz, capsys,
                                                             monkeypatch):
    out = tmp_path / "cv.json"
    out.write_text('{"previous": true}')
    assert crossval.main(["--data", npz, "--methods", " ", "--json", str(out)]) == 2
    assert capsys.readouterr().err == (
        "crossval: error: --methods ' ': expected comma-separated method names from "
        "cca,kcca,dcca,c-cca,c-kcca,c-dcca,tnn-c-cca,tnn-e2e,tnn-label\n")
    calls = []

    def second_fails(name, *args, **kwargs):  # cca is fitted, then c-cca fails
        calls.append(name)
        if len(calls) == 2:
            raise DataError("c-cca: fold 1 failed")
        return real(name, *args, **kwargs)
    real = protocol.evaluate
    monkeypatch.setattr(protocol, "evaluate", second_fails)
    assert crossval.main(["--data", npz, "--methods", "cca,c-cca", "--folds", "2",
                          "--json", str(out)]) == 2
    assert capsys.readouterr().err == "crossval: error: c-cca: fold 1 failed\n"
    assert out.read_text() == '{"previous": true}' and calls == ["cca", "c-cca"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv.json", "d.npz"]


def test_crossval_writes_the_json_file_it_is_given(tmp_path, npz, monkeypatch):
    """Option values are strings, not YAML: `#` does not start a comment."""
    monkeypatch.chdir(tmp_path)
    assert crossval.main(["--data", npz, "--methods", "cca", "--folds", "2",
                          "--json", "out #1.json", "--set", "mlflow.enabled=false"]) == 0
    assert json.loads((tmp_path / "out #1.json").read_text())["folds"] == 2
    assert not (tmp_path / "out").exists()


def test_an_unwritable_json_path_is_refused_before_any_work(tmp_path, npz, capsys):
    (tmp_path / "file").write_text("x")
    assert crossval.main(["--data", npz, "--json", str(tmp_path / "file" / "cv.json")]) == 2
    assert capsys.readouterr().err == (f"crossval: error: --json {tmp_path}/file/cv.json: "
                                       f"{tmp_path}/file is not a folder\n")
    assert crossval.main(["--data", npz, "--json", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_report_refusals_and_crashes_keep_the_previous_report(tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    assert report.main(["--smoke", "--out", str(out)]) == 0
    before = _digest(out)
    assert set(before) == {"map_bars.png", "pr_curves.png", "results.md"}
    good = tmp_path / "cv.json"
    good.write_text(json.dumps({"methods": {"cca": {"a2v_map": 0.9, "v2a_map": 0.8}}}))
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff{")
    assert report.main(["--json", str(good), str(bad), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"report: error: {bad}: not UTF-8 JSON (invalid start "
                                       "byte at byte 0)\n")
    assert _digest(out) == before

    def broken(*args, **kwargs):
        raise RuntimeError("the renderer died")
    monkeypatch.setattr(report_lib, "plot_pr", broken)
    with pytest.raises(RuntimeError):  # after map_bars.png was rendered
        report.main(["--smoke", "--out", str(out)])
    assert _digest(out) == before  # nothing replaced, no temporary file left
