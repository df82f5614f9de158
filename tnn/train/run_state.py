"""What a TNN run keeps across epochs and restarts, without Ray: the early-stopping state
(saved in every checkpoint, `tnn.train.checkpoints`) and the job's note beside Ray's run folder
(the MLflow run id, so a relaunched run appends to the same MLflow run).
"""

from __future__ import annotations

import json
import os

import numpy as np
from torch import nn

from tnn.data import storage

RUN_INFO = "tnn_run.json"


def new_state() -> dict:
    """Epochs done, per-epoch metrics, the best validation MAP with its epoch and net, and
    once finished, the final result."""
    return {"epoch": 0, "history": [], "best": -np.inf, "best_epoch": 0, "best_net": None,
            "done": False, "final": None}


def should_stop(state: dict, epochs: int, patience: int) -> bool:
    """`fit_tnn`'s rule: all epochs run, or `patience` epochs without a better val MAP."""
    return state["done"] or state["epoch"] >= epochs or (
        state["epoch"] > 0 and state["epoch"] - state["best_epoch"] >= patience)


def update_best(state: dict, net: nn.Module, val_map: float) -> None:
    if val_map > state["best"]:
        state.update(best=val_map, best_epoch=state["epoch"],
                     best_net={k: v.detach().clone().cpu() for k, v in net.state_dict().items()})


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
