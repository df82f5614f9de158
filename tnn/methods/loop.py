"""THE epoch loop with early stopping on validation MAP, and its state.

Every trained network in tnn goes through `fit_epochs`: the TNN pipelines in one process
(`tnn.methods.tnn.train_network`), the deep CCA baselines (`tnn.methods.dcca.train_net`) and
the Ray Train worker (`tnn.ray.train_loop.train_loop_per_worker`, which resumes from the state
saved in its checkpoints and reports every epoch through `on_epoch`).

The state is a plain dict (saved in every checkpoint, `tnn.train.checkpoints`): epochs done,
per-epoch metrics, the best validation MAP with its epoch and weights, and once a run has
finished, its final result. The rule: run until `epochs` epochs are done or `patience` epochs
have passed without a better validation MAP; then `restore_best` puts the best weights back.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from torch import nn


def new_state(net: nn.Module | None = None) -> dict:
    """Epochs done, per-epoch metrics, the best validation MAP with its epoch and net, and
    once finished, the final result. With `net`, its current weights are the best so far
    (restored when no epoch scores above -inf)."""
    return {"epoch": 0, "history": [], "best": -np.inf, "best_epoch": 0,
            "best_net": None if net is None else _weights(net), "done": False, "final": None}


def should_stop(state: dict, epochs: int, patience: int) -> bool:
    """All epochs run, or `patience` epochs without a better val MAP (or the run is done).
    An epoch that improved never stops the run (patience <= 0 acts as 1, as `fit_tnn` did)."""
    return state["done"] or state["epoch"] >= epochs or (
        state["epoch"] > 0 and state["epoch"] - state["best_epoch"] >= max(patience, 1))


def update_best(state: dict, net: nn.Module, val_map: float) -> None:
    """Keep `net`'s weights (on the CPU) when `val_map` beats the best so far."""
    if val_map > state["best"]:
        state.update(best=val_map, best_epoch=state["epoch"], best_net=_weights(net))


def restore_best(state: dict, net: nn.Module) -> None:
    """Load the best epoch's weights into `net` (if any epoch was kept)."""
    if state["best_net"] is not None:
        net.load_state_dict(state["best_net"])


def fit_epochs(net: nn.Module, run_epoch: Callable[[int], dict],
               validate: Callable[[], float | dict], *, epochs: int, patience: int,
               state: dict | None = None,
               on_epoch: Callable[[dict, dict], None] | None = None) -> dict:
    """Train epoch by epoch until `should_stop`; returns the state (`new_state` if None).

    run_epoch(epoch): one training pass (epochs count from 1), returns its metrics.
    validate(): the validation MAP, or a dict of scores holding "val_map".
    Each epoch's metrics, {"epoch", **run_epoch, **validate}, are appended to the history and
    the best weights kept (`update_best`) before `on_epoch(state, metrics)` (logging, reports,
    checkpoints). A `state` from a checkpoint resumes after its last epoch. The best weights
    are not restored here (`restore_best`): a caller may still report the last epoch's.
    """
    state = new_state() if state is None else state
    while not should_stop(state, epochs, patience):
        epoch = state["epoch"] = state["epoch"] + 1
        metrics = {"epoch": epoch, **run_epoch(epoch)}
        scores = validate()
        metrics.update(scores if isinstance(scores, dict) else {"val_map": scores})
        state["history"].append(metrics)
        update_best(state, net, metrics["val_map"])
        if on_epoch is not None:
            on_epoch(state, metrics)
    return state


def _weights(net: nn.Module) -> dict:
    return {k: v.detach().clone().cpu() for k, v in net.state_dict().items()}
