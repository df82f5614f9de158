"""tnn-label on Ray Train (method=tnn-label): the network under DDP, then the readout on rank 0.

The single-process twin is `tnn.methods.label.fit_label`: same split (`tnn.train.plan` with
tnn_label's val_fraction and seed), standardised inputs (`tnn.ray.prepare` through
`tnn.train.config.network_config`), `ProxyNet` initialised from the same seed, Adam with the
cosine schedule stepped per batch, early stopping on the validation MAP of the network's
posterior readout at scale s (`tnn.methods.loop.fit_epochs`, best epoch restored).

    workers: local batches of the fit shard -> DDP(ProxyNet) -> `global_proxy_loss` (proxy CE
      over the gathered global batch + the cross-modal triplet term of local anchors against
      the global refs; the proxies are DDP parameters) -> Adam, cosine step
    rank 0, every epoch: validation MAP (all-reduced: one stopping decision), checkpoint with
      the deep readout encoder of the best epoch so far
    rank 0, at the end: `tnn.train.label_readout.choose_readout`: readout scale, cluster-KCCA
      posterior, kernel ridge classifier, mixture weights and c-kcca fallback chosen on
      validation; the final checkpoint
      holds that encoder (`tnn.train.module_spec` describes it; `tnn.serve.export` exports it)

The closed-form parts are fitted on at most `readout_rows` fit rows (`readout_sample`, taken by the
driver from the projected fit set): the kernel parts are O(n m (D + m)) and the data sets this path
is for may not fit one process. BatchNorm, dropout, resumption and fault injection are as in
`tnn.ray.train_loop` (the scheduler state is checkpointed too).
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from tnn.config import from_dict
from tnn.core.folds import validation_split
from tnn.data.pairs import Pairs
from tnn.methods.label import ProxyNet
from tnn.methods.loop import new_state, restore_best
from tnn.methods.tnn import check_finite
from tnn.ray import local_shard
from tnn.ray.prepare import Prepared
from tnn.ray.progress import send
from tnn.ray.workers import (WorkerRun, channel_of, report, resume_state, run_epochs, scores,
                             seed_of, shared_val_map)
from tnn.train import distributed as tdist
from tnn.train.checkpoints import rng_state, set_rng_state
from tnn.train.config import TrainJobConfig
from tnn.train.label_readout import choose_readout, deep_encoder
from tnn.train.proxy import global_proxy_loss


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker of a tnn-label run (`config` as `tnn.ray.train_loop`'s)."""
    run = _start(config)
    if run.state["done"]:  # a finished run launched again: report its result, train nothing
        ray.train.report(run.state["final"])
        return
    lab, shard = run.cfg.tnn_label, ray.train.get_dataset_shard("fit")
    held = local_shard.holder(run.cfg.shard_in_memory, run.world, run.cfg.shuffle,
                              run.inputs["n_fit"], run.inputs["dims"])
    run_epochs(run, lambda epoch: label_epoch(run, shard, config["local_batch"], epoch, held),
               _evaluate, _report, seed=lab.seed, epochs=lab.epochs, patience=lab.patience)
    _finish(run)


@dataclasses.dataclass
class _Run(WorkerRun):
    """One worker's view of the run: `WorkerRun` (`net` is the `ProxyNet`: state dicts,
    evaluation, the proxies) plus the cosine LR schedule (per batch), or None."""

    sched: object


def _start(config: dict) -> _Run:
    """`ProxyNet` (initialised as `train_proxy_net` does), DDP, Adam + schedule, checkpoint."""
    torch.set_num_threads(int(config.get("threads", 1)))
    cfg, inputs = from_dict(TrainJobConfig, config["job"]), ray.get(config["inputs"])
    ctx, device, lab = ray.train.get_context(), ray.train.torch.get_device(), cfg.tnn_label
    torch.manual_seed(lab.seed)
    net = ProxyNet(*inputs["dims"], inputs["num_classes"], lab)
    state, checkpoint = new_state(net), ray.train.get_checkpoint()
    if checkpoint is not None:
        state = resume_state(checkpoint)
        net.load_state_dict(state["net"])
    sync_bn = ctx.get_world_size() > 1 and device.type == "cuda"  # SyncBatchNorm needs CUDA
    if sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model = ray.train.torch.prepare_model(  # BatchNorm buffers stay per rank (`average_buffers`)
        net, parallel_strategy_kwargs={"forward_sync_buffers": False})
    opt = torch.optim.Adam(model.parameters(), lr=lab.lr, weight_decay=lab.weight_decay)
    steps = max(1, inputs["n_fit"] // (config["local_batch"] * ctx.get_world_size()))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, lab.epochs * steps)) \
        if lab.lr_schedule == "cosine" else None
    if checkpoint is not None:
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    channel = channel_of(config, ctx.get_world_rank(),
                         state if checkpoint is not None and not state["done"] else None)
    return _Run(cfg, inputs, ctx.get_world_rank(), ctx.get_world_size(), device, net, model, opt,
                state, channel, checkpoint is not None, sync_bn, sched=sched)


def label_epoch(run: _Run, shard, local_batch: int, epoch: int, held: dict | None = None) -> dict:
    """One pass over this rank's shard through the global-batch proxy loss; mean terms,
    samples/s, the wait for the first batch. `held`: as in `tnn.ray.train_loop.train_epoch`.
    A NaN or inf output, loss or parameter stops the run (`check_finite`)."""
    run.model.train()
    lab, buffer = run.cfg.tnn_label, run.cfg.shuffle_buffer
    sums, steps, start, first = {}, 0, time.perf_counter(), None
    for batch in local_shard.epoch_batches(held or {"local": False}, shard, local_batch,
                                           seed_of(lab.seed, epoch, run.rank), run.device, buffer):
        first = time.perf_counter() - start if first is None else first
        out = run.model(batch["audio"], batch["visual"])
        check_finite(epoch, steps + 1, **out)
        terms = global_proxy_loss(out["audio_emb"], out["visual_emb"], batch["label"].long(),
                                  run.net.proxies, lab.scale, w_proxy=lab.w_proxy,
                                  w_triplet=lab.w_triplet, margin=lab.margin, rows=local_batch)
        check_finite(epoch, steps + 1, loss=terms["total"])
        run.opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        run.opt.step()
        if run.sched is not None:
            run.sched.step()
        steps += 1
        for key in ("total", "triplet", "proxy"):
            sums[key] = sums.get(key, 0.0) + float(terms[key].detach())
    check_finite(epoch, steps, **dict(run.model.named_parameters()))  # before a checkpoint
    seconds = time.perf_counter() - start
    return {**{k: v / max(steps, 1) for k, v in sums.items()}, "steps": steps, "train_s": seconds,
            "first_batch_s": first or 0.0,
            "samples_per_s": steps * local_batch * tdist.world_size() / seconds}


def _deep(run: _Run, net: ProxyNet):
    i = run.inputs
    return deep_encoder(net, i["audio_in"], i["visual_in"], i["dims"], run.cfg.tnn_label.scale)


def _evaluate(run: _Run) -> dict:
    """Rank 0 scores the network's posterior readout on the whole validation (and, for
    curves, test) part; the validation MAP is shared so that every rank stops alike."""
    out = {}
    if run.rank == 0:
        out.update(scores(_deep(run, run.net), run.inputs["val"], "val"))
        if run.cfg.test_curve:
            out.update(scores(_deep(run, run.net), run.inputs["test"], "test"))
    out["val_map"] = shared_val_map(out.get("val_map"), run.device)
    return out


def _report(run: _Run, metrics: dict, selected=None) -> None:
    """Every rank reports; rank 0 saves the training state and the encoder (`selected`, else
    the deep readout of the best epoch so far)."""
    if run.rank == 0 and selected is None:
        run.state.update(net={k: v.detach().cpu() for k, v in run.net.state_dict().items()},
                         optimizer=run.opt.state_dict(), rng=rng_state(),
                         scheduler=None if run.sched is None else run.sched.state_dict())
        best = copy.deepcopy(run.net).cpu()
        if run.state["best_net"] is not None:
            best.load_state_dict(run.state["best_net"])
        selected = _deep(run, best.eval())
    report(metrics, run.rank, run.state, run.cfg, selected, run.inputs["num_classes"])


def _finish(run: _Run) -> None:
    """Rank 0: best epoch restored, the readout chosen on validation (`choose_readout`),
    validation and test scores of the final encoder; the final report on every rank."""
    state, encoder = run.state, None
    final = {"epoch": state["epoch"], "done": 1, "best_epoch": state["best_epoch"]}
    if run.rank == 0:
        restore_best(state, run.net)
        net, i = copy.deepcopy(run.net).cpu().eval(), run.inputs
        encoder, choice = choose_readout(net, i["audio_in"], i["visual_in"], i["readout_fit"],
                                         i["val"], run.cfg.tnn_label,
                                         log=lambda s: send(run.channel, "line", s.strip()))
        final.update(**choice, **scores(encoder, i["val"], "val"),
                     **scores(encoder, i["test"], "test"))
        send(run.channel, "final", final)
    state.update(done=True, final=final)
    _report(run, final, selected=encoder)


# --- the driver ------------------------------------------------------------------------------

def worker_inputs(cfg: TrainJobConfig, prep: Prepared) -> dict:
    """`tnn.ray.train_loop.worker_inputs` plus the fit-set size and the readout sample."""
    return {"audio_in": prep.audio_in, "visual_in": prep.visual_in, "dims": prep.dims,
            "val": prep.val, "test": prep.test, "num_classes": prep.num_classes,
            "n_fit": prep.n_fit,
            "readout_fit": readout_sample(prep, cfg.readout_rows, cfg.tnn_label.seed)}


def readout_sample(prep: Prepared, cap: int, seed: int) -> Pairs:
    """At most `cap` rows of the projected fit set as `Pairs` (standardised features): every
    row (in fit-set order when the set has row ids) when it has no more, else a seeded random
    sample (Ray Data) cut to `cap` rows class-balanced."""
    ds = prep.fit if prep.n_fit <= cap else prep.fit.random_sample(
        min(1.0, 1.1 * cap / prep.n_fit), seed=seed)
    parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols["row"], kind="stable") if "row" in cols else \
        np.lexsort((*cols["audio"][:, :8].T[::-1], cols["label"]))  # a fixed order
    cols = {k: v[order] for k, v in cols.items()}
    if len(order) > cap:
        keep = validation_split(cols["label"], cap / len(order), seed)[1]  # about cap rows
        keep = np.sort(np.random.default_rng(seed).permutation(keep)[:cap])
        cols = {k: v[keep] for k, v in cols.items()}
    ids = np.array([f"r{i}" for i in (cols["row"] if "row" in cols else range(len(cols["label"])))])
    return Pairs(cols["audio"].astype(np.float32), cols["visual"].astype(np.float32),
                 cols["label"].astype(np.int64), ids, prep.val.class_names, "readout sample")
