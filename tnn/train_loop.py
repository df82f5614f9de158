"""The TNN pipelines on Ray Train: data preparation, the worker loop, checkpoints, resume.

The only `ray.train` user. The single-process twin is `tnn.pipelines.fit_tnn`: same split
(test fold; a class-balanced validation split carved from the training folds), same input
stages, same network, loss and early stopping. What runs where:

    driver (`prepare`, `fit`)                         workers (`train_loop_per_worker`)
    fit set -> Ray Dataset (Pairs or shards)          get_dataset_shard("fit"), local batches
    one Ray Data pass: CCAStats per block, summed     prepare_model (DDP), global_batch_loss
      -> standardiser [+ cluster-CCA projection]      rank 0: val MAP over the whole split,
    map_batches: project; shuffle; cache                all-reduced so every rank stops alike
    val/test arrays + input stages -> object store    report() every epoch on every rank,
    TorchTrainer: gloo (CPU) | nccl (GPU),              the checkpoint from rank 0 only
      FailureConfig, local or s3:// storage

Differences from one process: dropout masks differ per rank; BatchNorm uses SyncBatchNorm on
GPUs, but on CPU (SyncBatchNorm needs CUDA) it normalises each rank's local batch and the
running statistics are averaged over ranks after every epoch. Without dropout and BatchNorm
the parameters equal one process's on the same global batches (tests/test_train_loop.py).

Checkpoints hold the net, optimiser, epoch, RNG states, early-stopping state (history, best
net), the resolved config (with the MLflow run id) and the encoder selected so far (input
stages with the CCA projection + net: `load_encoder`). A run restarted by `FailureConfig`, or
launched again with the same `run_name` and storage, resumes from its latest checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from tnn import data, shards, storage
from tnn import distributed as tdist
from tnn.cca import CCAStats, fit_cca
from tnn.checkpoints import (
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    widths,
)
from tnn.config import from_dict, to_dict
from tnn.encoder import Affine, Encoder
from tnn.errors import ConfigError, DataError
from tnn.folds import assign_folds, split, validation_split
from tnn.methods import _e2e_default
from tnn.metrics import cross_modal_scores
from tnn.pipelines import TNNConfig, build_net, cca_dim, loss_kwargs, net_out_dim
from tnn.sources import Pairs, is_shard_uri, load_source

RUN_INFO = "tnn_run.json"


@dataclasses.dataclass(frozen=True)
class MLflowConfig:
    enabled: bool = True
    tracking_uri: str | None = None
    """None: $MLFLOW_TRACKING_URI, else the embedded sqlite:///<local_dir>/mlflow.db."""
    local_dir: str = "./runs/mlflow"
    experiment: str = "tnn-train"
    run_id: str | None = None
    """Set by the job and kept with the run's storage, so a restart appends to the same run."""


@dataclasses.dataclass(frozen=True)
class TrainJobConfig:
    data: str = "uci-mfeat"
    """A `tnn.sources` spec (held in memory) or a shard URI (streamed through Ray Data)."""
    test_fold: int = 0
    folds: int = 5
    """Folds of in-memory sources (shards keep the folds they were written with)."""
    seed: int = 0
    """Fold assignment seed (in-memory sources)."""
    subset: int = 0
    """Keep a class-balanced subset of this many clips before splitting (0 = all)."""
    tnn: TNNConfig = dataclasses.field(default_factory=_e2e_default)
    """The method; train.batch_size is the global batch (split evenly over workers)."""
    workers: int = 2
    use_gpu: bool = False
    """One GPU per worker and NCCL; a flag, since the driver may sit on a CPU-only node."""
    cpus_per_worker: float = 0.5
    """0.5 leaves a CPU for Ray Data next to 2 workers on a 2-CPU node (1 would deadlock)."""
    read_cpus: float = 0.5
    """CPUs per Ray Data read / map task."""
    shuffle_buffer: int = 4096
    """Rows in each worker's local shuffle buffer (0: no shuffle)."""
    cache: bool = True
    """Materialise the projected fit set in the object store (epochs skip reading shards)."""
    shuffle: str = "epoch"
    """Mixing across ranks. All but "local" shuffle the fit set once (seeded, all-to-all) before
    caching; "epoch" then deals small blocks to the ranks in a new order every epoch, so each
    rank's rows change as under one process's permutation; "once" keeps each rank's rows;
    "local" only mixes within each worker's buffer (class-sorted sources then give every rank
    class-skewed batches: 2 points of MAP lost through BatchNorm's per-rank statistics)."""
    storage_path: str = "./runs"
    """Checkpoints: a local directory or s3://bucket/prefix."""
    run_name: str | None = None
    """None: tnn-train-<time>. Launching again with the same name resumes that run."""
    max_failures: int = 0
    checkpoints_to_keep: int = 2
    report_poll_s: float = 0.25
    """How often the Train controller collects reports (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S,
    unless set): a report waits for it, so Ray's 2 s default caps runs at one epoch per 2 s."""
    test_curve: bool = True
    """Also log test-fold MAP per epoch (curves only; selection uses validation)."""
    fail_at_epoch: int = 0
    """Fault injection for tests: the last rank raises once at the start of this epoch."""
    mlflow: MLflowConfig = dataclasses.field(default_factory=MLflowConfig)

    def __post_init__(self) -> None:
        t = self.tnn.train
        if self.workers < 1 or t.batch_size % self.workers:
            raise ConfigError(f"workers={self.workers} must be >= 1 and divide "
                              f"tnn.train.batch_size={t.batch_size} (the global batch)")
        if self.tnn.ensemble != 1:
            raise ConfigError("tnn.ensemble > 1 is single-process only (jobs.crossval)")
        if not 0 <= self.test_fold < self.folds:
            raise ConfigError(f"test_fold={self.test_fold} must lie in 0..{self.folds - 1}")
        if self.shuffle not in ("epoch", "once", "local"):
            raise ConfigError(f"shuffle={self.shuffle!r}: expected epoch, once or local")
        if self.cpus_per_worker <= 0 or self.read_cpus <= 0 or self.subset < 0:
            raise ConfigError("cpus_per_worker and read_cpus must be > 0, subset >= 0")


# --- Ray Data transforms: plain functions of a batch -----------------------------------------

def cca_stats_batch(batch: dict, num_classes: int) -> dict[str, np.ndarray]:
    """One block (numpy batch: audio, visual, label) -> its `CCAStats` as ONE row (float64)."""
    b = data.as_arrays(batch)
    stats = CCAStats.from_arrays(b["audio"], b["visual"], b["label"], num_classes)
    return {k: np.asarray(v)[None] for k, v in stats.to_dict().items()}


def sum_stats(rows) -> CCAStats:
    """Add the per-block rows of `cca_stats_batch` (numpy batches of any size)."""
    total: dict[str, np.ndarray] = {}
    for batch in rows:
        for key, value in batch.items():
            total[key] = total.get(key, 0) + np.asarray(value, np.float64).sum(axis=0)
    if not total:
        raise DataError("the fit set is empty")
    return CCAStats.from_dict(total)


def project_batch(batch: dict, audio_in: nn.Module, visual_in: nn.Module) -> dict:
    """Raw features -> the network's inputs (standardised [+ projected]), float32."""
    b = data.as_arrays(batch)
    with torch.no_grad():
        b["audio"] = audio_in(torch.tensor(b["audio"])).numpy()  # (B, Da')
        b["visual"] = visual_in(torch.tensor(b["visual"])).numpy()  # (B, Dv')
    return b


def select_ids(table: pa.Table, ids: pa.Array, keep: bool, drop_ids: bool = True) -> pa.Table:
    """Arrow batch -> the rows whose clip_id is (keep) / is not (not keep) in `ids`."""
    mask = pc.is_in(table["clip_id"], value_set=ids)
    table = table.filter(mask if keep else pc.invert(mask))
    return table.drop_columns(["clip_id"]) if drop_ids else table


# --- closed-form input stages from summed statistics -----------------------------------------

def standardized_stats(stats: CCAStats, scale: bool = True, eps: float = 1e-6):
    """Means m, scales s and the statistics of the rows z = (x - m) s, all from raw `stats`.

    m = sum_x / n, s = 1 / (population std), constant features 1 (`tnn.encoder.standardizer`;
    scale=False: s = 1). With sum_x = n m: Z'Z = S (X'X - n m m') S, Z'W = S (X'Y - n m m_y')
    S_y, sum_z = (sum_x - n m) s (zero up to rounding), class sums (Sx_c - n_c m) s. Float64.
    """
    n = stats.n
    mx, my = stats.sum_x / n, stats.sum_y / n

    def inv_std(sq, m):
        std = np.sqrt(np.maximum(np.diag(sq) / n - m * m, 0.0))
        return 1.0 / np.where(std > eps, std, 1.0) if scale else np.ones_like(m)

    sx, sy = inv_std(stats.xx, mx), inv_std(stats.yy, my)
    cov = lambda xy, a, b, sa, sb: sa[:, None] * (xy - n * np.outer(a, b)) * sb  # noqa: E731
    z = CCAStats(n, (stats.sum_x - n * mx) * sx, (stats.sum_y - n * my) * sy,
                 cov(stats.xx, mx, mx, sx, sx), cov(stats.yy, my, my, sy, sy),
                 cov(stats.xy, mx, my, sx, sy), stats.class_n,
                 (stats.class_sum_x - stats.class_n[:, None] * mx) * sx,
                 (stats.class_sum_y - stats.class_n[:, None] * my) * sy)
    return (mx, sx), (my, sy), z


def input_maps_from_stats(stats: CCAStats, tnn: TNNConfig,
                          num_classes: int) -> tuple[nn.Module, nn.Module]:
    """`tnn.pipelines.input_maps` from summed statistics: standardiser, then for the
    two-stage pipeline the cluster-CCA projection fitted on the standardised statistics."""
    (mx, sx), (my, sy), z = standardized_stats(stats, scale=tnn.cca.standardize)
    a_std, v_std = Affine(mx, np.diag(sx)), Affine(my, np.diag(sy))
    if tnn.pipeline != "two-stage":
        return a_std, v_std
    k = cca_dim(tnn.cca, num_classes, len(mx), len(my))
    proj = fit_cca(z, k, ridge=tnn.cca.ridge, beta=tnn.cca.beta,
                   scale_by_corr=tnn.cca.scale_by_corr)
    return (nn.Sequential(a_std, Affine(proj.mean_x, proj.A)),
            nn.Sequential(v_std, Affine(proj.mean_y, proj.B)))


def dataset_stats(ds, num_classes: int, num_cpus: float = 0.5) -> CCAStats:
    """One distributed pass: `cca_stats_batch` per block (Ray Data), the rows added here."""
    rows = ds.map_batches(cca_stats_batch, batch_size=None, batch_format="numpy",
                          fn_kwargs={"num_classes": num_classes}, num_cpus=num_cpus)
    return sum_stats(rows.iter_batches(batch_size=None, batch_format="numpy"))


# --- the driver's data plan ------------------------------------------------------------------

@dataclasses.dataclass
class Prepared:
    """What the trainer needs: the projected fit set and the in-memory held-out parts."""

    fit: object  # ray.data.Dataset: label, audio, visual (network inputs) [, row]
    n_fit: int
    val: Pairs
    test: Pairs
    audio_in: nn.Module
    visual_in: nn.Module
    stats: CCAStats  # raw statistics of the fit set (the distributed pass)
    num_classes: int

    @property
    def dims(self) -> tuple[int, int]:
        return self.val.audio.shape[1], self.val.visual.shape[1]


def arrays_dataset(p: Pairs, blocks: int = 8):
    """In-memory rows -> a Ray Dataset of label, audio, visual (tensor columns) and row index."""
    def fsl(x):
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).reshape(-1)),
                                                 x.shape[1])
    table = data.tensor_columns(pa.table({
        "label": pa.array(p.labels.astype(np.int64)), "audio": fsl(p.audio),
        "visual": fsl(p.visual), "row": pa.array(np.arange(p.n, dtype=np.int64))}))
    size = -(-p.n // max(1, min(blocks, p.n)))
    return ray.data.from_arrow([table.slice(i, size) for i in range(0, p.n, size)])


def split_in_memory(cfg: TrainJobConfig) -> tuple[Pairs, Pairs, Pairs]:
    """(fit, val, test) exactly as `jobs.crossval` + `fit_tnn` split an in-memory source."""
    pairs = load_source(cfg.data)
    if cfg.subset and cfg.subset < pairs.n:
        pairs = pairs.subset(validation_split(pairs.labels, cfg.subset / pairs.n, cfg.seed)[1])
    folds = pairs.folds if pairs.folds is not None and len(np.unique(pairs.folds)) == cfg.folds \
        else assign_folds(pairs.labels, cfg.folds, cfg.seed)
    tr, te = split(folds, cfg.test_fold)
    train = pairs.subset(tr)
    t = cfg.tnn.train
    fit_idx, val_idx = validation_split(train.labels, t.val_fraction, t.seed)
    return train.subset(fit_idx), train.subset(val_idx), pairs.subset(te)


def shard_index(uri: str) -> tuple[shards.Manifest, np.ndarray, np.ndarray, np.ndarray]:
    """(manifest, clip_ids, labels, folds) in manifest order: small columns, read directly."""
    man = shards.read_manifest(uri)
    fs, root = storage.filesystem(uri)
    cols = {"clip_id": [], "label": [], "fold": []}
    for name, rows in man.shards:
        pf = shards.open_shard(fs, f"{root}/{name}", storage.join(uri, name))
        shards.check_file(pf, man, storage.join(uri, name), rows)
        table = pf.read(columns=list(cols))
        for key in cols:
            cols[key].append(table[key].to_numpy(zero_copy_only=False))
    ids, labels, folds = (np.concatenate(cols[k]) for k in cols)
    return man, ids.astype(str), labels.astype(np.int64), folds.astype(np.int64)


def split_shards(cfg: TrainJobConfig):
    """(fit Dataset, n_fit, val Pairs, test Pairs) of a shard set; the split of `read_pairs` +
    `fit_tnn`. Only clip ids, labels and folds come to the driver, then the held-out rows."""
    man, ids, labels, folds = shard_index(cfg.data)
    if man.folds != cfg.folds:
        raise ConfigError(f"{cfg.data} has {man.folds} folds; set folds={man.folds}")
    if cfg.subset and cfg.subset < len(ids):
        keep = validation_split(labels, cfg.subset / len(ids), cfg.seed)[1]
        ids, labels, folds = ids[keep], labels[keep], folds[keep]
    tr, te = split(folds, cfg.test_fold)
    fit_idx, val_idx = validation_split(labels[tr], cfg.tnn.train.val_fraction, cfg.tnn.train.seed)
    fit_ids, val_ids = pa.array(ids[tr][fit_idx]), pa.array(ids[tr][val_idx])
    held_ids = pa.concat_arrays([val_ids, pa.array(ids[te])])
    read = dict(check="manifest", num_cpus=cfg.read_cpus)
    held = data.dataset(cfg.data, **read).map_batches(
        select_ids, batch_format="pyarrow", batch_size=None, num_cpus=cfg.read_cpus,
        fn_kwargs={"ids": held_ids, "keep": True, "drop_ids": False})
    rows = [data.table_to_numpy(t)
            for t in held.iter_batches(batch_size=None, batch_format="pyarrow")]
    rows = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    order = np.argsort(rows["clip_id"].astype(str))
    pairs = Pairs(rows["audio"][order], rows["visual"][order], rows["label"][order],
                  rows["clip_id"][order].astype(str), man.class_names, cfg.data)
    is_test = rows["fold"][order] == cfg.test_fold
    keep = bool(cfg.subset)  # else the (smaller) validation ids are dropped from the folds
    fit = data.dataset(cfg.data, exclude_folds=[cfg.test_fold], columns=(
        "clip_id", "label", "audio", "visual"), **read).map_batches(
        select_ids, batch_format="pyarrow", batch_size=None, num_cpus=cfg.read_cpus,
        fn_kwargs={"ids": fit_ids if keep else val_ids, "keep": keep})
    val, test = pairs.subset(np.flatnonzero(~is_test)), pairs.subset(np.flatnonzero(is_test))
    return fit, len(fit_ids), val, test


def prepare(cfg: TrainJobConfig, log=print) -> Prepared:
    """Split, one statistics pass, input stages, the projected (cached) fit set."""
    if is_shard_uri(cfg.data):
        fit_ds, n_fit, val, test = split_shards(cfg)
    else:
        fit, val, test = split_in_memory(cfg)
        fit_ds, n_fit = arrays_dataset(fit), fit.n
    num_classes = val.num_classes
    start = time.perf_counter()
    stats = dataset_stats(fit_ds, num_classes, cfg.read_cpus)
    if int(stats.n) != n_fit:
        raise DataError(f"{cfg.data}: the statistics pass saw {stats.n:.0f} rows, expected {n_fit}")
    audio_in, visual_in = input_maps_from_stats(stats, cfg.tnn, num_classes)
    log(f"train: fit {n_fit}, val {val.n}, test {test.n} clips; statistics pass and "
        f"{'cluster-CCA fit' if cfg.tnn.pipeline == 'two-stage' else 'standardiser'} in "
        f"{time.perf_counter() - start:.1f} s")
    fit_ds = fit_ds.map_batches(project_batch, batch_format="numpy", num_cpus=cfg.read_cpus,
                                fn_kwargs={"audio_in": audio_in, "visual_in": visual_in})
    if cfg.shuffle != "local":  # sources are often sorted by class
        fit_ds = fit_ds.random_shuffle(seed=cfg.tnn.train.seed, num_cpus=cfg.read_cpus)
    if cfg.shuffle == "epoch":  # small blocks, dealt to the ranks in a new order every epoch
        fit_ds = fit_ds.repartition(int(np.clip(n_fit // 64, 8 * cfg.workers, 1024)))
    if cfg.cache:
        fit_ds = fit_ds.materialize()
    if cfg.shuffle == "epoch":  # lazy, so it runs every epoch (unseeded: a seed repeats)
        fit_ds = fit_ds.randomize_block_order()
    return Prepared(fit_ds, n_fit, val, test, audio_in, visual_in, stats, num_classes)


# --- early-stopping state -------------------------------------------------------------------

def new_state() -> dict:
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


# --- the worker loop -------------------------------------------------------------------------

def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker. `config`: {"job": resolved TrainJobConfig dict, "inputs":
    ObjectRef of `worker_inputs`, "local_batch": rows per rank per step, optional
    "record_rows": a directory where each rank saves the fit-set row ids of its batches}."""
    run = _start(config)
    if run.state["done"]:  # a finished run launched again: report its result, train nothing
        ray.train.report(run.state["final"])
        return
    t, shard, rows_seen = run.cfg.tnn.train, ray.train.get_dataset_shard("fit"), []
    started = time.perf_counter()
    while not should_stop(run.state, t.epochs, t.patience):
        epoch = run.state["epoch"] = run.state["epoch"] + 1
        if run.cfg.fail_at_epoch == epoch and not run.resumed and run.rank == run.world - 1:
            raise RuntimeError(f"injected failure at epoch {epoch} (fail_at_epoch)")
        torch.manual_seed(_seed(t.seed, epoch, run.rank))  # dropout masks: resumable
        metrics = {"epoch": epoch, **train_epoch(
            run.model, run.opt, shard, run.loss_kwargs, config["local_batch"],
            (t.seed, epoch, run.rank), run.cfg.shuffle_buffer, run.device, rows_seen)}
        if run.world > 1 and not run.sync_bn:
            _average_buffers(run.net)  # local BatchNorm statistics -> their mean over ranks
        metrics.update(_evaluate(run), elapsed_s=time.perf_counter() - started)
        run.state["history"].append(metrics)
        update_best(run.state, run.net, metrics["val_map"])
        if run.logger:
            run.logger.metrics(metrics, step=epoch)
        _report(run, metrics)
    _finish(run)
    if config.get("record_rows"):
        np.save(Path(config["record_rows"]) / f"rows-rank{run.rank}.npy", np.stack(rows_seen))


@dataclasses.dataclass
class _Run:
    """One worker's view of the run."""

    cfg: TrainJobConfig
    inputs: dict
    rank: int
    world: int
    device: torch.device
    net: nn.Module  # the unwrapped network (state dicts, evaluation)
    model: nn.Module  # `net` as prepared by Ray (DDP when world > 1)
    opt: torch.optim.Optimizer
    encoder: Encoder
    state: dict
    loss_kwargs: dict
    logger: object
    resumed: bool
    sync_bn: bool


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
        with checkpoint.as_directory() as d:
            state = load_state(d)
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
    logger = _epoch_logger(cfg) if ctx.get_world_rank() == 0 else None
    if logger and checkpoint is not None and not state["done"]:
        logger.metrics({"resumed_from_epoch": state["epoch"]}, step=state["epoch"])
    return _Run(cfg, inputs, ctx.get_world_rank(), ctx.get_world_size(), device, net, model, opt,
                Encoder(a_in, v_in, net, *dims), state,
                loss_kwargs(cfg.tnn, classes, net_out_dim(cfg.tnn, classes)), logger,
                checkpoint is not None, sync_bn)


def train_epoch(model, opt, shard, kwargs, local_batch, seed, shuffle_buffer, device,
                rows_seen=None) -> dict:
    """One pass over this rank's shard through the global-batch loss; mean terms, samples/s."""
    model.train()
    sums, steps, start = {}, 0, time.perf_counter()
    for batch in shard.iter_torch_batches(
            batch_size=local_batch, drop_last=True, device=device,
            local_shuffle_buffer_size=shuffle_buffer or None,
            local_shuffle_seed=_seed(*seed) if shuffle_buffer else None):
        out = model(batch["audio"], batch["visual"])
        terms = tdist.global_batch_loss(out["audio_emb"], out["visual_emb"],
                                        batch["label"].long(), **kwargs)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        steps += 1
        for key in ("total", "triplet", "cca"):
            sums[key] = sums.get(key, 0.0) + float(terms[key].detach())
        if rows_seen is not None and "row" in batch:
            rows_seen.append(batch["row"].cpu().numpy())
    seconds = time.perf_counter() - start
    return {**{k: v / max(steps, 1) for k, v in sums.items()}, "steps": steps,
            "train_s": seconds, "samples_per_s": steps * local_batch * tdist.world_size() / seconds}


def _evaluate(run: _Run) -> dict:
    """Rank 0 scores the whole validation (and, for curves, test) part; its validation MAP is
    all-reduced so that every rank takes the same early-stopping decision."""
    out = {}
    if run.rank == 0:
        out.update(_scores(run.encoder, run.inputs["val"], "val"))
        if run.cfg.test_curve:
            out.update(_scores(run.encoder, run.inputs["test"], "test"))
    out["val_map"] = float(tdist.all_reduce_sum(torch.tensor(
        out.get("val_map", 0.0), dtype=torch.float64, device=run.device)))
    return out


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _scores(encoder: Encoder, held: Pairs, prefix: str) -> dict:
    """Retrieval scores over the whole held-out part (on the CPU, where `Encoder.embed_*` run)."""
    if any(p.device.type != "cpu" for p in encoder.parameters()):
        encoder = copy.deepcopy(encoder).cpu()
    s = cross_modal_scores(encoder.embed_audio(held.audio), encoder.embed_visual(held.visual),
                           held.labels)
    out = {f"{prefix}_{k}": float(s[k]) for k in ("a2v_map", "v2a_map", "mrr1_a2v", "mrr1_v2a")}
    return {**out, f"{prefix}_map": 0.5 * (out[f"{prefix}_a2v_map"] + out[f"{prefix}_v2a_map"])}


def _average_buffers(net: nn.Module) -> None:
    with torch.no_grad():
        for buf in net.buffers():
            if buf.is_floating_point():
                buf.copy_(tdist.all_reduce_sum(buf) / tdist.world_size())


def _epoch_logger(cfg: TrainJobConfig):
    if not (cfg.mlflow.enabled and cfg.mlflow.run_id and cfg.mlflow.tracking_uri):
        return None
    from tnn.tracking import RunLogger
    return RunLogger(cfg.mlflow.tracking_uri, cfg.mlflow.run_id)


def _report(run: _Run, metrics: dict, selected: Encoder | None = None) -> None:
    """Every rank reports (a barrier); rank 0 attaches the checkpoint. `selected`: the final
    encoder (else the best epoch's so far); the final report keeps the last epoch's net."""
    if run.rank != 0:
        ray.train.report(metrics)
        return
    if selected is None:
        run.state.update(net={k: v.detach().cpu() for k, v in run.net.state_dict().items()},
                         optimizer=run.opt.state_dict(), rng=rng_state())
        selected = _best_encoder(run.encoder, run.state)
    name = f"epoch-{run.state['epoch']:04d}" + ("-final" if run.state["done"] else "")
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(d, run.state, to_dict(run.cfg), selected, run.cfg.tnn,
                        run.inputs["num_classes"])
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=name)


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
        if state["best_net"] is not None:
            run.net.load_state_dict(state["best_net"])
        if run.cfg.tnn.pipeline == "two-stage":
            first = Encoder(encoder.audio_in, encoder.visual_in, None, *run.inputs["dims"])
            if _scores(first, run.inputs["val"], "val")["val_map"] >= state["best"]:
                encoder = first
        final.update(first_stage_only=int(encoder.net is None),
                     **_scores(encoder, run.inputs["val"], "val"),
                     **_scores(encoder, run.inputs["test"], "test"))
        if run.logger:
            run.logger.metrics({f"final_{k}": v for k, v in final.items()}, step=state["epoch"])
    state.update(done=True, final=final)
    _report(run, final, selected=encoder)


# --- the driver ------------------------------------------------------------------------------

def storage_of(path: str):
    """(storage_path, storage_filesystem) for RunConfig: s3:// via tnn.storage, else absolute."""
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


def worker_inputs(prep: Prepared) -> dict:
    return {"audio_in": prep.audio_in, "visual_in": prep.visual_in, "dims": prep.dims,
            "val": prep.val, "test": prep.test, "num_classes": prep.num_classes}


def fit(cfg: TrainJobConfig, prep: Prepared, record_rows: str | None = None,
        callbacks: list | None = None):
    """Run (or resume) `cfg.run_name` on Ray Train; returns the `ray.train.Result`.
    `callbacks`: Ray Train `UserCallback`s (e.g. Tune's `TuneReportCallback` in a trial)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    if not cfg.run_name:
        raise ConfigError("fit needs a run_name (jobs.train picks one)")
    local_batch = max(1, min(cfg.tnn.train.batch_size, prep.n_fit) // cfg.workers)
    path, fs = storage_of(cfg.storage_path)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(cfg.report_poll_s))
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": to_dict(cfg), "inputs": ray.put(worker_inputs(prep)),
                           "local_batch": local_batch, "record_rows": record_rows},
        torch_config=TorchConfig(backend=tdist.backend_for("cuda" if cfg.use_gpu else "cpu")),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.run_name, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
            callbacks=callbacks or None),
        datasets={"fit": prep.fit})
    return trainer.fit()
