"""`tnn.ray.workers.resume_state`: what a (re)started Train worker reads to resume. Each reader
of a checkpoint on S3 downloads it into a folder of its own and removes it (Ray's shared
per-node folder of `Checkpoint.as_directory` is deleted by its last reader, and a worker
arriving just after that failed); a local checkpoint is read in place."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import pytest
import torch

from tnn.data import storage
from tnn.errors import DataError
from tnn.ray.workers import resume_state


def _state_dir(path: Path, epoch: int) -> Path:
    path.mkdir(parents=True)
    torch.save({"epoch": epoch, "net": {"w": torch.arange(4.0)}}, path / "state.pt")
    return path


def _resume_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("tnn-resume-*")}


def test_a_local_checkpoint_is_read_in_place(tmp_path):
    import ray.train
    d = _state_dir(tmp_path / "epoch-0003", 3)
    state = resume_state(ray.train.Checkpoint.from_directory(str(d)))
    assert state["epoch"] == 3 and torch.equal(state["net"]["w"], torch.arange(4.0))
    assert sorted(p.name for p in d.iterdir()) == ["state.pt"]


@pytest.mark.s3
def test_readers_of_an_s3_checkpoint_each_get_it_and_leave_no_folder(s3_prefix, tmp_path,
                                                                      monkeypatch):
    import ray.train
    # never Ray's node-shared folder: its last reader deletes it under a late one's feet
    monkeypatch.setattr(ray.train.Checkpoint, "as_directory",
                        lambda self: pytest.fail("resume_state used Checkpoint.as_directory"))
    from pyarrow import fs as pafs
    src = _state_dir(tmp_path / "epoch-0005", 5)
    fs, root = storage.filesystem(f"{s3_prefix}/run/epoch-0005")
    pafs.copy_files(str(src), root, destination_filesystem=fs)
    before = _resume_dirs()
    got, errors = [], []

    def read() -> None:
        try:
            got.append(resume_state(ray.train.Checkpoint(root, filesystem=fs))["epoch"])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))

    for _ in range(3):  # rounds of concurrent readers, as the workers of one node restarting
        threads = [threading.Thread(target=read) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors and got == [5] * 12
    assert _resume_dirs() == before


def test_a_checkpoint_without_a_training_state_is_refused(tmp_path):
    import ray.train
    d = tmp_path / "epoch-0001"
    d.mkdir()
    torch.save({"net": {}}, d / "state.pt")
    with pytest.raises(DataError, match="not a tnn training state"):
        resume_state(ray.train.Checkpoint.from_directory(str(d)))
