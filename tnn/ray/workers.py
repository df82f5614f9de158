"""What the Ray Train worker loops share (`tnn.ray.train_loop` for the TNN pipelines,
`tnn.ray.label_loop` for tnn-label): seeds, held-out scores, BatchNorm statistics across ranks,
rank 0's channel to the driver (`tnn.ray.progress`: epochs, a resume, final scores; the
driver logs them to MLflow and prints them), and the report that carries rank 0's
checkpoint. Workers get no MLflow tracking URI (`worker_config`)."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from typing import Callable

import numpy as np
import ray.train
import torch
from torch import nn

from tnn.config import to_dict
from tnn.core.encoder import Encoder
from tnn.core.metrics import cross_modal_scores
from tnn.data.pairs import Pairs
from tnn.errors import redact
from tnn.methods.loop import fit_epochs
from tnn.ray.progress import send
from tnn.train import distributed as tdist
from tnn.train.checkpoints import load_state, save_checkpoint
from tnn.train.config import TrainJobConfig


@dataclasses.dataclass
class WorkerRun:
    """One worker's view of the run: what both loops hold (each loop's `_Run` adds its own)."""

    cfg: TrainJobConfig
    inputs: dict
    rank: int
    world: int
    device: torch.device
    net: nn.Module  # the unwrapped network (state dicts, evaluation)
    model: nn.Module  # `net` as prepared by Ray (DDP when world > 1)
    opt: torch.optim.Optimizer
    state: dict
    channel: object  # rank 0's queue to the driver (`tnn.ray.progress`), else None
    resumed: bool
    sync_bn: bool


def resume_state(checkpoint: ray.train.Checkpoint) -> dict:
    """The training state (`load_state`) of the checkpoint a (re)started worker resumes from.
    A checkpoint on remote storage is downloaded into a temporary folder of this process's
    own, removed after reading: `Checkpoint.as_directory` shares one folder per node among the
    workers and deletes it when its last reader leaves, so a worker arriving just after that
    finds it gone ("Checkpoint directory ... does not exist, even though it should have been
    created by another process": seen on 2 workers of one node restarting under load)."""
    from pyarrow import fs
    if isinstance(checkpoint.filesystem, fs.LocalFileSystem):
        return load_state(checkpoint.path)
    with tempfile.TemporaryDirectory(prefix="tnn-resume-") as d:
        return load_state(checkpoint.to_directory(d))


def seed_of(*parts: int) -> int:
    """One 32-bit seed from (train seed, epoch, rank, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def scores(encoder: Encoder, held: Pairs, prefix: str) -> dict:
    """Retrieval scores over the whole held-out part (on the CPU, where `Encoder.embed_*` run)."""
    if any(t.device.type != "cpu" for t in (*encoder.parameters(), *encoder.buffers())):
        encoder = copy.deepcopy(encoder).cpu()
    s = cross_modal_scores(encoder.embed_audio(held.audio), encoder.embed_visual(held.visual),
                           held.labels)
    out = {f"{prefix}_{k}": float(s[k]) for k in ("a2v_map", "v2a_map", "mrr1_a2v", "mrr1_v2a")}
    return {**out, f"{prefix}_map": 0.5 * (out[f"{prefix}_a2v_map"] + out[f"{prefix}_v2a_map"])}


def shared_val_map(val_map: float | None, device: torch.device) -> float:
    """Rank 0's validation MAP on every rank (the others pass None): one all-reduce, so that
    every rank takes the same early-stopping decision."""
    return float(tdist.all_reduce_sum(torch.tensor(val_map or 0.0, dtype=torch.float64,
                                                   device=device)))


def average_buffers(net: nn.Module) -> None:
    """Local BatchNorm statistics -> their mean over ranks (CPU runs, no SyncBatchNorm)."""
    with torch.no_grad():
        for buf in net.buffers():
            if buf.is_floating_point():
                buf.copy_(tdist.all_reduce_sum(buf) / tdist.world_size())


def worker_config(cfg: TrainJobConfig) -> dict:
    """The job config as shipped to the workers: the MLflow tracking URI redacted (only the
    driver talks to MLflow; the checkpoints' config.json is redacted alike)."""
    out = to_dict(cfg)
    if out["mlflow"].get("tracking_uri"):
        out["mlflow"]["tracking_uri"] = redact(out["mlflow"]["tracking_uri"])
    return out


def channel_of(config: dict, rank: int, resumed: dict | None):
    """Rank 0's channel to the driver (None elsewhere, or when the driver keeps none). A
    launch that resumes the unfinished state `resumed` (from a checkpoint) sends its epoch and
    its epochs' metrics: the driver logs `resumed_from_epoch` and any epoch the run's MLflow
    history lacks (a driver killed while its queue still held epochs never logged them)."""
    channel = config.get("progress") if rank == 0 else None
    if resumed is not None:
        send(channel, "resumed", {"epoch": resumed["epoch"], "history": resumed["history"]})
    return channel


def report(metrics: dict, rank: int, state: dict, cfg: TrainJobConfig,
           encoder: Encoder | None, num_classes: int) -> None:
    """Every rank reports (a barrier); rank 0 attaches the checkpoint: `state` and `encoder`
    (`tnn.train.checkpoints`), named after the epoch (`-final` once the run is done)."""
    if rank != 0:
        ray.train.report(metrics)
        return
    name = f"epoch-{state['epoch']:04d}" + ("-final" if state["done"] else "")
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(d, state, to_dict(cfg), encoder, cfg.tnn, num_classes)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=name)


def run_epochs(run, train_one: Callable[[int], dict], evaluate: Callable[[object], dict],
               report_epoch: Callable[[object, dict], None], *, seed: int, epochs: int,
               patience: int) -> None:
    """The epoch loop both worker loops share, through `tnn.methods.loop.fit_epochs`: the
    injected failure (`fail_at_epoch`, last rank, first launch only), per-epoch seeds (dropout
    masks resume alike), `train_one(epoch)`, BatchNorm statistics averaged over ranks (no
    SyncBatchNorm), validation with the elapsed time, and each epoch's metrics to the driver
    (rank 0's channel) and `report_epoch(run, metrics)`. `run` is the loop's per-worker state
    (cfg, rank, world, net, state, channel, resumed, sync_bn)."""
    started = time.perf_counter()

    def one_epoch(epoch: int) -> dict:
        if run.cfg.fail_at_epoch == epoch and not run.resumed and run.rank == run.world - 1:
            raise RuntimeError(f"injected failure at epoch {epoch} (fail_at_epoch)")
        torch.manual_seed(seed_of(seed, epoch, run.rank))
        metrics = train_one(epoch)
        if run.world > 1 and not run.sync_bn:
            average_buffers(run.net)
        return metrics

    def on_epoch(state: dict, metrics: dict) -> None:
        send(run.channel, "epoch", metrics)
        report_epoch(run, metrics)

    fit_epochs(run.net, one_epoch,
               lambda: {**evaluate(run), "elapsed_s": time.perf_counter() - started},
               epochs=epochs, patience=patience, state=run.state, on_epoch=on_epoch)
