"""Checkpoint files of a TNN run and the encoder they carry (no Ray: readable anywhere).

A checkpoint directory holds `state.pt` (training state: net, optimiser, epoch, RNG states,
early-stopping history, best net, the final result), `config.json` (the resolved job config)
and the selected encoder as `encoder.pt` (state dict) + `encoder.json` (`encoder_spec`), from
which `load_encoder` rebuilds the modules without the training code. The early-stopping part
of the state is `tnn.methods.loop`'s.

The run's note beside Ray's run folder (`RUN_INFO`: the MLflow run id, so a relaunched run
appends to the same MLflow run) is written and read here too, with `storage_of`, the
(path, filesystem) a Ray `RunConfig` takes for local or s3:// storage.
"""

from __future__ import annotations

import json
import os
import random
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tnn.config import from_dict, to_dict
from tnn.core.encoder import Affine, Encoder
from tnn.data import storage
from tnn.methods.tnn import TNNConfig, build_net

RUN_INFO = "tnn_run.json"


def widths(dims: tuple[int, int], num_classes: int):
    """What `build_net` reads of a fit set: one row of each width, and the class count."""
    return types.SimpleNamespace(audio=np.zeros((1, dims[0]), np.float32),
                                 visual=np.zeros((1, dims[1]), np.float32), num_classes=num_classes)


def encoder_spec(encoder: Encoder, tnn: TNNConfig, num_classes: int) -> dict:
    """A small JSON description from which `load_encoder` rebuilds the modules."""
    def shapes(m):
        return [list(a.weight.shape) for a in (m if isinstance(m, nn.Sequential) else [m])]
    return {"format": 1, "audio_dim": encoder.audio_dim, "visual_dim": encoder.visual_dim,
            "audio_in": shapes(encoder.audio_in), "visual_in": shapes(encoder.visual_in),
            "num_classes": num_classes, "net": None if encoder.net is None else to_dict(tnn)}


def load_encoder(path: str | os.PathLike) -> Encoder:
    """The `Encoder` saved in a checkpoint directory (encoder.json + encoder.pt)."""
    spec = json.loads((Path(path) / "encoder.json").read_text())

    def affines(shapes):
        parts = [Affine(np.zeros(i), np.zeros((i, o))) for i, o in shapes]
        return parts[0] if len(parts) == 1 else nn.Sequential(*parts)
    a_in, v_in = affines(spec["audio_in"]), affines(spec["visual_in"])
    net = None
    if spec["net"] is not None:
        net = build_net(from_dict(TNNConfig, spec["net"]), a_in, v_in,
                        widths((spec["audio_dim"], spec["visual_dim"]), spec["num_classes"]))
    encoder = Encoder(a_in, v_in, net, spec["audio_dim"], spec["visual_dim"])
    encoder.load_state_dict(torch.load(Path(path) / "encoder.pt", weights_only=True))
    return encoder.eval()


def save_checkpoint(path, state: dict, config: dict, encoder: Encoder, tnn: TNNConfig,
                    num_classes: int) -> None:
    """state.pt (training state), config.json (resolved), encoder.pt + encoder.json."""
    path = Path(path)
    torch.save(state, path / "state.pt")
    (path / "config.json").write_text(json.dumps(config, indent=1))
    torch.save({k: v.detach().cpu() for k, v in encoder.state_dict().items()}, path / "encoder.pt")
    spec = encoder_spec(encoder, tnn, num_classes)
    (path / "encoder.json").write_text(json.dumps(spec, indent=1))


def load_state(path) -> dict:
    return torch.load(Path(path) / "state.pt", weights_only=False)  # our own file: RNG tuples


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# --- the run's note and storage -------------------------------------------------------------

def storage_of(path: str):
    """(storage_path, storage_filesystem) for RunConfig: s3:// via tnn.data.storage, else absolute."""
    if storage.is_s3(path):
        bucket, key = storage.split_s3(path)
        return f"{bucket}/{key}".rstrip("/"), storage.s3_filesystem()
    return os.path.abspath(os.path.expanduser(path)), None


def read_run_info(storage_path: str, run_name: str) -> dict | None:
    """The job's note beside Ray's run folder (MLflow run id), or None for a new run."""
    fs, root = storage.filesystem(storage.join(storage.join(storage_path, run_name), RUN_INFO))
    try:
        with fs.open_input_stream(root) as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError):
        return None


def write_run_info(storage_path: str, run_name: str, info: dict) -> None:
    uri = storage.join(storage_path, run_name)
    fs, root = storage.filesystem(uri)
    if not storage.is_s3(uri):
        fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{RUN_INFO}") as f:
        f.write(json.dumps(info, indent=1).encode())
