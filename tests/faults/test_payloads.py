"""Nothing user-supplied is unpickled: a pickle payload (an object whose `__reduce__` writes a
marker file) planted in every file a job loads from a run's storage or a data folder never
runs; the load is refused with one line naming the file.

Places: a checkpoint's state.pt and encoder.pt (`tnn.train.checkpoints`: read on resume by
the Train workers, and by `registry.log_checkpoint` at the end of a run), the checkpoint a
relaunched `jobs.train` resumes from (tests/faults/test_train.py, on the run of its
worker-kill test: one Ray run fewer), an npz source, and a VEGAS clip's .npy. A control test
shows the payload does run under an unsafe load, so these tests can fail."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tnn.core.encoder import Encoder, standardizer
from tnn.data.sources import load_source
from tnn.errors import DataError
from tnn.methods.tnn import TNNConfig
from tnn.train import checkpoints as ck

pytestmark = [pytest.mark.faults]


class Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A real checkpoint directory of a tiny encoder (no network)."""
    d = tmp_path / "checkpoint"
    d.mkdir()
    rng = np.random.default_rng(0)
    enc = Encoder(standardizer(rng.normal(size=(20, 4))), standardizer(rng.normal(size=(20, 6))))
    ck.save_checkpoint(d, {"epoch": 2, "history": [{"epoch": 1, "val_map": np.float64(0.5)}],
                           "rng": ck.rng_state(), "best": -np.inf, "done": False},
                       {"run_name": "r"}, enc, TNNConfig(), 3)
    return d


def test_control_the_payload_runs_under_an_unsafe_load(tmp_path, marker):
    torch.save({"epoch": 1, "x": Payload(marker)}, tmp_path / "state.pt")
    torch.load(tmp_path / "state.pt", weights_only=False)
    assert marker.read_text() == "ran"


def test_checkpoints_hold_only_tensors_and_plain_values(checkpoint):
    state = ck.load_state(checkpoint)  # weights_only=True
    assert state["epoch"] == 2 and state["history"][0]["val_map"] == 0.5
    ck.set_rng_state(state["rng"])
    assert ck.load_encoder(checkpoint).audio_dim == 4
    with pytest.raises(TypeError, match=r"state\['x'\]: a Payload cannot be stored"):
        ck.plain({"x": Payload(Path("/nonexistent"))})


@pytest.mark.parametrize("name", ["state.pt", "encoder.pt"])
@pytest.mark.parametrize("how", ["inside-a-dict", "the-whole-file", "raw-pickle"])
def test_a_payload_in_a_checkpoint_file_never_runs(checkpoint, marker, name, how):
    file = checkpoint / name
    if how == "inside-a-dict":
        torch.save({**torch.load(file, weights_only=True), "evil": Payload(marker)}, file)
    elif how == "the-whole-file":
        torch.save(Payload(marker), file)
    else:
        file.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(DataError) as err:
        ck.load_state(checkpoint) if name == "state.pt" else ck.load_encoder(checkpoint)
    message = str(err.value)
    assert message.startswith(f"{file}: not a tnn checkpoint file: it holds objects other than "
                              "tensors, or is corrupt (") and "\n" not in message, message
    assert not marker.exists()


def test_a_payload_in_the_checkpoint_a_run_logs_never_runs(checkpoint, marker, tmp_path):
    """`registry.log_checkpoint` (the end of jobs.train) reads state.pt and encoder.pt."""
    from tnn.tracking import registry
    from tnn.tracking import runs as tracking
    torch.save(Payload(marker), checkpoint / "state.pt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger, _ = tracking.open_run(uri, "e", "r", artifact_location=(tmp_path / "art").as_uri())
    with pytest.raises(DataError, match="state.pt: not a tnn checkpoint file"):
        registry.log_checkpoint(logger, checkpoint)
    assert not marker.exists()


def test_a_spec_claiming_huge_widths_is_refused_before_allocating(checkpoint):
    import json
    spec = json.loads((checkpoint / "encoder.json").read_text())
    (checkpoint / "encoder.json").write_text(json.dumps({**spec, "audio_dim": 10**12}))
    with pytest.raises(DataError, match=r"encoder.json: not an encoder of this tnn \(ValueError: "
                                        r"widths \(1000000000000, 6\) differ from encoder.pt"):
        ck.load_encoder(checkpoint)


def test_a_payload_in_an_npz_source_never_runs(tmp_path, marker):
    path = tmp_path / "evil.npz"
    np.savez(path, audio=np.zeros((30, 4)), visual=np.zeros((30, 6)),
             labels=np.array([Payload(marker)] * 30, dtype=object))
    with pytest.raises(DataError, match=str(path)):
        load_source(f"npz:{path}")
    assert not marker.exists()


def test_a_payload_in_a_vegas_clip_never_runs(tmp_path, marker):
    root = tmp_path / "vegas"
    for sub in ("audio", "visual"):
        (root / sub).mkdir(parents=True)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "label"])
        for i in range(6):
            w.writerow([f"c{i}", i % 2])
            np.save(root / "audio" / f"c{i}.npy", np.ones((3, 4), np.float32))
            np.save(root / "visual" / f"c{i}.npy", np.ones((3, 6), np.float32))
    np.save(root / "visual" / "c3.npy", np.array([Payload(marker)], dtype=object),
            allow_pickle=True)
    with pytest.raises(DataError, match="c3.npy"):
        load_source(f"vegas:{root}")
    assert not marker.exists()


def _rewrite(archive: Path, edits: dict) -> None:
    """Rewrite the zip `archive` with members replaced by `edits[name](bytes)`."""
    import zipfile
    with zipfile.ZipFile(archive) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in members.items():
            suffix = next((k for k in edits if name.endswith(k)), None)
            z.writestr(name, edits[suffix](data) if suffix else data)


@pytest.fixture
def program(tmp_path) -> Path:
    from tnn.serve import export
    rng = np.random.default_rng(0)
    enc = Encoder(standardizer(rng.normal(size=(20, 4))), standardizer(rng.normal(size=(20, 6))))
    export.export_branch(enc, "audio", tmp_path / "exported")
    return tmp_path / "exported" / "program.pt2"


def _pickled_weight(marker: Path) -> dict:
    import io
    import json

    def config(data: bytes) -> bytes:
        meta = json.loads(data)
        first = next(iter(meta["config"].values()))
        first["use_pickle"] = True
        return json.dumps(meta).encode()
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    return {"weights/model_weights_config.json": config,
            "weights/weight_0": lambda data: buf.getvalue()}


def test_control_torch_export_load_runs_a_payload_in_a_program(program, marker):
    """Why `check_program` exists: torch.export.load (serve's load_branch, the pyfunc model)
    unpickles what the archive marks `use_pickle` with weights_only=False."""
    _rewrite(program, _pickled_weight(marker))
    try:
        torch.export.load(program)
    except Exception:  # the payload ran first; what torch makes of its result does not matter
        pass
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("edit", ["pickled-weight", "sample-inputs"])
def test_check_program_refuses_a_payload_in_an_exported_program(program, marker, edit):
    assert ck.check_program(program) == program  # a real export passes
    if edit == "pickled-weight":
        _rewrite(program, _pickled_weight(marker))
        message = (r"program.pt2(: entry 'encoder.audio_in.mean' is stored as a pickle; refused|"
                   r":program/data/weights/weight_0: holds objects other than tensors)")
    else:
        import io
        buf = io.BytesIO()
        torch.save(Payload(marker), buf)
        _rewrite(program, {"sample_inputs/model.pt": lambda data: buf.getvalue()})
        message = (r"program.pt2:program/data/sample_inputs/model.pt: holds objects other than "
                   r"tensors, or is corrupt \(UnpicklingError: Unsupported global: GLOBAL exec")
    with pytest.raises(DataError, match=message):
        ck.check_program(program)
    assert not marker.exists()


def test_load_branch_refuses_a_payload_in_an_exported_program(program, marker):
    from tnn.serve import export
    _rewrite(program, _pickled_weight(marker))
    with pytest.raises(DataError, match="program.pt2"):
        export.load_branch(program.parent)
    assert not marker.exists()


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """A smoke model registered as tnn@champion in a local store; (tracking uri, its artifacts)."""
    from tnn.tracking import registry
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    registry.smoke_model(uri)
    location = registry.resolve_uri("models:/tnn@champion", uri)[1]
    return uri, Path(location.removeprefix("file://"))


def test_load_encoders_refuses_model_code_or_programs_that_are_not_ours(registered, marker):
    """The model folder comes from the artifact store: MLflow would execute its code file and
    torch.export.load would unpickle its programs; `check_model_dir` refuses both first."""
    from tnn.tracking import registry
    uri, artifacts = registered
    assert registry.load_encoders("models:/tnn@champion", tracking_uri=uri).audio is not None
    code = artifacts / "pyfunc.py"
    original = code.read_bytes()
    code.write_bytes(original + f"\nopen({str(marker)!r}, 'w').write('ran')\n".encode())
    with pytest.raises(DataError, match="pyfunc.py: model code differs"):
        registry.load_encoders("models:/tnn@champion", tracking_uri=uri)
    code.write_bytes(original)
    (artifacts / "python_model.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(DataError, match="python_model.pkl: a pickle file"):
        registry.load_encoders("models:/tnn@champion", tracking_uri=uri)
    (artifacts / "python_model.pkl").unlink()
    _rewrite(artifacts / "artifacts" / "visual" / "program.pt2", _pickled_weight(marker))
    with pytest.raises(DataError, match="visual/program.pt2"):
        registry.load_encoders("models:/tnn@champion", tracking_uri=uri)
    assert not marker.exists()
