"""The TNN pipelines on Ray Train: the worker loop and the driver's `fit`.

The only `ray.train` user. The single-process twin is `tnn.methods.tnn.fit_tnn`: same split,
input stages, network, loss and early stopping (both run `tnn.methods.loop.fit_epochs`). What
runs where:

    driver                                            workers (`train_loop_per_worker`)
    `tnn.ray.prepare.prepare`: split, statistics      get_dataset_shard("fit"), local batches
      (a Ray Data pass for shards), input stages,     prepare_model (DDP), global_batch_loss
      projected and cached fit set                    rank 0: val MAP over the whole split,
    `fit`: val/test + input stages -> object store;     all-reduced so every rank stops alike
      TorchTrainer: gloo (CPU) | nccl (GPU),          report() every epoch on every rank,
      FailureConfig, local or s3:// storage             the checkpoint from rank 0 only

Differences from one process: dropout masks differ per rank; BatchNorm uses SyncBatchNorm on
GPUs, but on CPU (SyncBatchNorm needs CUDA) it normalises each rank's local batch and the
running statistics are averaged over ranks after every epoch. Without dropout and BatchNorm
the parameters equal one process's on the same global batches (tests/ray/test_train_loop.py).

Rank 0 sends each epoch's metrics, a resume and the final scores to the driver
(`tnn.ray.progress`), which prints one line per epoch and logs them into the job's MLflow run:
workers never talk to MLflow and get the config with the tracking URI redacted.

Checkpoints (`tnn.train.checkpoints`) hold the net, optimiser, epoch, RNG states, early-stopping
state (`tnn.methods.loop`: history, best net), the resolved config (with the MLflow run id) and
the encoder selected so far (input stages with the CCA projection + net: `load_encoder`). A
run restarted by `FailureConfig`, or launched again with the same `run_name` and storage,
resumes from its latest checkpoint. The driver's data plan is `tnn.ray.prepare`. With
method=tnn-label, `fit` runs `tnn.ray.label_loop` instead (the helpers both loops share are in
`tnn.ray.workers`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from tnn.config import from_dict
from tnn.core.encoder import Encoder
from tnn.errors import ConfigError
from tnn.methods.loop import new_state, restore_best
from tnn.methods.tnn import build_net, check_finite, loss_kwargs, net_out_dim
from tnn.ray import label_loop, local_shard
from tnn.ray.prepare import Prepared
from tnn.ray.progress import Channel, TrainWatch, send
from tnn.ray.workers import (WorkerRun, channel_of, report, resume_state, run_epochs, scores,
                             seed_of, shared_val_map, worker_config)
from tnn.train import distributed as tdist
from tnn.train.checkpoints import rng_state, set_rng_state, storage_of, widths
from tnn.train.config import TrainJobConfig

# --- the worker loop -------------------------------------------------------------------------

def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker. `config`: {"job": resolved TrainJobConfig dict, "inputs":
    ObjectRef of `worker_inputs`, "local_batch": rows per rank per step, optional
    "record_rows": a directory where each rank saves the fit-set row ids of its batches}."""
    run = _start(config)
    if run.state["done"]:  # a finished run launched again: report its result, train nothing
        ray.train.report(run.state["final"])
        return
    t, shard = run.cfg.tnn.train, ray.train.get_dataset_shard("fit")
    rows_seen = [] if config.get("record_rows") else None
    held = local_shard.holder(run.cfg.shard_in_memory, run.world, run.cfg.shuffle,
                              run.inputs["n_fit"], run.inputs["dims"])

    def train_one(epoch: int) -> dict:
        return train_epoch(run.model, run.opt, shard, run.loss_kwargs, config["local_batch"],
                           (t.seed, epoch, run.rank), run.cfg.shuffle_buffer, run.device,
                           rows_seen, held)

    run_epochs(run, train_one, _evaluate, _report, seed=t.seed, epochs=t.epochs,
               patience=t.patience)
    _finish(run)
    if config.get("record_rows"):
        np.save(Path(config["record_rows"]) / f"rows-rank{run.rank}.npy", np.stack(rows_seen))


@dataclasses.dataclass
class _Run(WorkerRun):
    """One worker's view of the run: `WorkerRun` plus the encoder and the loss settings."""

    encoder: Encoder
    loss_kwargs: dict


def _start(config: dict) -> _Run:
    """Network (initialised as `fit_tnn` does), DDP, Adam, and the state of a checkpoint."""
    torch.set_num_threads(int(config.get("threads", 1)))
    cfg, inputs = from_dict(TrainJobConfig, config["job"]), ray.get(config["inputs"])
    ctx, device, t = ray.train.get_context(), ray.train.torch.get_device(), cfg.tnn.train
    a_in, v_in = inputs["audio_in"], inputs["visual_in"]
    dims, classes = inputs["dims"], inputs["num_classes"]
    torch.manual_seed(t.seed)
    net = build_net(cfg.tnn, a_in, v_in, widths(dims, classes))
    state, checkpoint = new_state(), ray.train.get_checkpoint()
    if checkpoint is not None:
        state = resume_state(checkpoint)
        net.load_state_dict(state["net"])
    sync_bn = ctx.get_world_size() > 1 and device.type == "cuda"  # SyncBatchNorm needs CUDA
    if sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model = ray.train.torch.prepare_model(  # BatchNorm buffers stay per rank (`_average_buffers`)
        net, parallel_strategy_kwargs={"forward_sync_buffers": False})
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if checkpoint is not None:
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    channel = channel_of(config, ctx.get_world_rank(),
                         state if checkpoint is not None and not state["done"] else None)
    return _Run(cfg, inputs, ctx.get_world_rank(), ctx.get_world_size(), device, net, model, opt,
                state, channel, checkpoint is not None, sync_bn,
                encoder=Encoder(a_in, v_in, net, *dims),
                loss_kwargs=loss_kwargs(cfg.tnn, classes, net_out_dim(cfg.tnn, classes)))


def train_epoch(model, opt, shard, kwargs, local_batch, seed, shuffle_buffer, device,
                rows_seen=None, held: dict | None = None) -> dict:
    """One pass over this rank's shard through the global-batch loss; mean terms, samples/s,
    the wait for the first batch, the CPU seconds of this worker process in the epoch
    (`train_cpu_s`: below `train_s` when other processes held the CPU, bench/train_scaling).
    `seed`: (train seed, epoch, rank); `held`: the worker's
    `tnn.ray.local_shard.holder` (None: stream). A NaN or inf output, loss or parameter stops
    the run (`check_finite`) before the epoch's checkpoint, so the last one stays good."""
    model.train()
    sums, steps, start, first, cpu = {}, 0, time.perf_counter(), None, time.process_time()
    for batch in local_shard.epoch_batches(held or {"local": False}, shard, local_batch,
                                           seed_of(*seed), device, shuffle_buffer):
        first = time.perf_counter() - start if first is None else first
        out = model(batch["audio"], batch["visual"])
        check_finite(seed[1], steps + 1, **out)
        terms = tdist.global_batch_loss(out["audio_emb"], out["visual_emb"],
                                        batch["label"].long(), rows=local_batch, **kwargs)
        check_finite(seed[1], steps + 1, loss=terms["total"])
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        steps += 1
        for key in ("total", "triplet", "cca"):
            sums[key] = sums.get(key, 0.0) + float(terms[key].detach())
        if rows_seen is not None and "row" in batch:
            rows_seen.append(batch["row"].cpu().numpy())
    check_finite(seed[1], steps, **dict(model.named_parameters()))  # before a checkpoint
    seconds = time.perf_counter() - start
    return {**{k: v / max(steps, 1) for k, v in sums.items()}, "steps": steps,
            "train_s": seconds, "train_cpu_s": time.process_time() - cpu,
            "first_batch_s": first or 0.0,
            "samples_per_s": steps * local_batch * tdist.world_size() / seconds}


def _evaluate(run: _Run) -> dict:
    """Rank 0 scores the whole validation (and, for curves, test) part; its validation MAP is
    all-reduced so that every rank takes the same early-stopping decision."""
    out = {}
    if run.rank == 0:
        out.update(scores(run.encoder, run.inputs["val"], "val"))
        if run.cfg.test_curve:
            out.update(scores(run.encoder, run.inputs["test"], "test"))
    out["val_map"] = shared_val_map(out.get("val_map"), run.device)
    return out


def _report(run: _Run, metrics: dict, selected: Encoder | None = None) -> None:
    """Every rank reports (a barrier); rank 0 attaches the checkpoint. `selected`: the final
    encoder (else the best epoch's so far); the final report keeps the last epoch's net."""
    if run.rank == 0 and selected is None:
        run.state.update(net={k: v.detach().cpu() for k, v in run.net.state_dict().items()},
                         optimizer=run.opt.state_dict(), rng=rng_state())
        selected = _best_encoder(run.encoder, run.state)
    report(metrics, run.rank, run.state, run.cfg, selected, run.inputs["num_classes"])


def _best_encoder(encoder: Encoder, state: dict) -> Encoder:
    best = Encoder(encoder.audio_in, encoder.visual_in, copy.deepcopy(encoder.net),
                   encoder.audio_dim, encoder.visual_dim)
    if state["best_net"] is not None:
        best.net.load_state_dict(state["best_net"])
    return best


def _finish(run: _Run) -> None:
    """Restore the best epoch; the two-stage pipeline keeps its first stage alone when that
    scores higher on validation (as `fit_tnn`); test-fold scores; the final report."""
    state, encoder = run.state, run.encoder
    final = {"epoch": state["epoch"], "done": 1, "best_epoch": state["best_epoch"]}
    if run.rank == 0:
        restore_best(state, run.net)
        if run.cfg.tnn.pipeline == "two-stage":
            first = Encoder(encoder.audio_in, encoder.visual_in, None, *run.inputs["dims"])
            if scores(first, run.inputs["val"], "val")["val_map"] >= state["best"]:
                encoder = first
        final.update(first_stage_only=int(encoder.net is None),
                     **scores(encoder, run.inputs["val"], "val"),
                     **scores(encoder, run.inputs["test"], "test"))
        send(run.channel, "final", final)
    state.update(done=True, final=final)
    _report(run, final, selected=encoder)


# --- the driver ------------------------------------------------------------------------------

def worker_inputs(prep: Prepared) -> dict:
    return {"audio_in": prep.audio_in, "visual_in": prep.visual_in, "dims": prep.dims,
            "val": prep.val, "test": prep.test, "num_classes": prep.num_classes,
            "n_fit": prep.n_fit}


def fit(cfg: TrainJobConfig, prep: Prepared, record_rows: str | None = None,
        callbacks: list | None = None, watch: bool = True, log=print):
    """Run (or resume) `cfg.run_name` on Ray Train; returns the `ray.train.Result`.
    `callbacks`: Ray Train `UserCallback`s (e.g. Tune's `TuneReportCallback` in a trial).
    method=tnn-label runs `tnn.ray.label_loop` (`prep` from `prepare` of the same config).
    `watch`: rank 0's epochs come back to this process (`tnn.ray.progress`), which prints a
    line per epoch (`log`) and logs them into MLflow run `cfg.mlflow.run_id` (if set); a Tune
    trial passes False (the search's driver logs its results). The workers' config carries
    no tracking URI (`worker_config`)."""
    if not cfg.run_name:
        raise ConfigError("fit needs a run_name (jobs.train picks one)")
    if not watch:
        return _trainer(cfg, prep, record_rows, callbacks, None).fit()
    epochs = cfg.tnn_label.epochs if cfg.method == "tnn-label" else cfg.tnn.train.epochs
    with Channel(TrainWatch(epochs, _driver_logger(cfg), log=log)) as queue:
        return _trainer(cfg, prep, record_rows, callbacks, queue).fit()


def _trainer(cfg: TrainJobConfig, prep: Prepared, record_rows, callbacks, queue):
    """The TorchTrainer of `fit` (`queue`: rank 0's channel to the driver, or None)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    label = cfg.method == "tnn-label"
    batch = cfg.tnn_label.batch_size if label else cfg.tnn.train.batch_size
    local_batch = max(1, min(batch, prep.n_fit) // cfg.workers)
    loop, inputs = (label_loop.train_loop_per_worker, label_loop.worker_inputs(cfg, prep)) \
        if label else (train_loop_per_worker, worker_inputs(prep))
    path, fs = storage_of(cfg.storage_path)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(cfg.report_poll_s))
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    return TorchTrainer(
        loop,
        train_loop_config={"job": worker_config(cfg), "inputs": ray.put(inputs),
                           "local_batch": local_batch, "record_rows": record_rows,
                           "progress": queue},
        torch_config=TorchConfig(backend=tdist.backend_for("cuda" if cfg.use_gpu else "cpu")),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.run_name, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
            callbacks=callbacks or None),
        datasets={"fit": prep.fit})


def _driver_logger(cfg: TrainJobConfig):
    """The driver's logger of the job's MLflow run, or None (MLflow off, or no run id)."""
    m = cfg.mlflow
    if not (m.enabled and m.run_id and m.tracking_uri):
        return None
    from tnn.tracking.runs import RunLogger
    return RunLogger(m.tracking_uri, m.run_id)
