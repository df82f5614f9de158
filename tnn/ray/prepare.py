"""The driver's data plan for a Ray Train run: split, statistics, input stages, the
projected fit set. A `ray.data` edge (with `tnn.ray.dataset`); the worker loop is `tnn.ray.train_loop`.

    shard set -> Ray Dataset (shards read by `tnn.ray.dataset`)
      one Ray Data pass: `CCAStats` per block (`cca_stats_batch`), summed on the driver
      -> standardiser [+ cluster-CCA projection] (`tnn.methods.linear.input_maps_from_stats`)
      map_batches(`project_batch`); seeded shuffle; small blocks; materialised (cache)
    in-memory `Pairs` -> the same steps as numpy on the driver (its rows are here already;
      a Ray Data pass would spend ~20 s starting task workers for milliseconds of work),
      then the projected, shuffled blocks as one Ray Dataset (`in_memory_dataset`)
    val/test: in-memory `Pairs` (rank 0 scores the whole held-out parts)

The split is `fit_tnn`'s (`tnn.train.plan`: the test fold, then a class-balanced validation
split carved from the training folds). The transforms are plain functions of numpy / Arrow
batches; Arrow <-> numpy is `tnn.data.batches`, the shard index `tnn.data.reader`.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
import torch
from torch import nn

from tnn.core.cca import CCAStats
from tnn.data.batches import as_arrays, table_to_numpy, tensor_columns
from tnn.data.pairs import Pairs
from tnn.data.reader import shard_index
from tnn.data.sources import is_shard_uri
from tnn.errors import ConfigError, DataError
from tnn.methods.linear import input_maps_from_stats
from tnn.ray import dataset as data
from tnn.train.config import TrainJobConfig, network_config
from tnn.train.plan import split_ids, split_in_memory

# --- Ray Data transforms: plain functions of a batch -----------------------------------------

def cca_stats_batch(batch: dict, num_classes: int) -> dict[str, np.ndarray]:
    """One block (numpy batch: audio, visual, label) -> its `CCAStats` as ONE row (float64)."""
    b = as_arrays(batch)
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
    b = as_arrays(batch)
    with torch.no_grad():
        b["audio"] = audio_in(torch.tensor(b["audio"])).numpy()  # (B, Da')
        b["visual"] = visual_in(torch.tensor(b["visual"])).numpy()  # (B, Dv')
    return b


def select_ids(table: pa.Table, ids: pa.Array, keep: bool, drop_ids: bool = True) -> pa.Table:
    """Arrow batch -> the rows whose clip_id is (keep) / is not (not keep) in `ids`."""
    mask = pc.is_in(table["clip_id"], value_set=ids)
    table = table.filter(mask if keep else pc.invert(mask))
    return table.drop_columns(["clip_id"]) if drop_ids else table


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
    stats: CCAStats  # raw statistics of the fit set
    num_classes: int

    @property
    def dims(self) -> tuple[int, int]:
        return self.val.audio.shape[1], self.val.visual.shape[1]


def arrays_dataset(p: Pairs, blocks: int = 8, rows: np.ndarray | None = None):
    """In-memory rows -> a Ray Dataset of label, audio, visual (tensor columns) and row (the
    index of each row in the fit set: `rows`, else 0..n-1), cut into `blocks` near-equal blocks."""
    def fsl(x):
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).reshape(-1)),
                                                 x.shape[1])
    rows = np.arange(p.n) if rows is None else rows
    table = tensor_columns(pa.table({
        "label": pa.array(p.labels.astype(np.int64)), "audio": fsl(p.audio),
        "visual": fsl(p.visual), "row": pa.array(rows.astype(np.int64))}))
    edges = np.linspace(0, p.n, max(1, min(blocks, p.n)) + 1).astype(int)
    return ray.data.from_arrow([table.slice(a, b - a) for a, b in zip(edges[:-1], edges[1:])])


def epoch_blocks(cfg: TrainJobConfig, n_fit: int) -> int:
    """How many blocks shuffle="epoch" deals to the ranks: ~64 rows each, 8 a rank at least."""
    return int(np.clip(n_fit // 64, 8 * cfg.workers, 1024))


def in_memory_dataset(cfg: TrainJobConfig, fit: Pairs, audio_in: nn.Module,
                      visual_in: nn.Module):
    """The shard plan's projected, shuffled, cached fit set, built from in-memory rows on the
    driver: a seeded permutation (unless shuffle="local"), `project_batch`, then Arrow blocks in
    the object store (`epoch_blocks` of them for shuffle="epoch", dealt in a new order every
    epoch; else 8). The row column keeps each row's index in `fit`."""
    rows = np.arange(fit.n)
    if cfg.shuffle != "local":
        rows = np.random.default_rng(cfg.tnn.train.seed).permutation(fit.n)
    shuffled = fit.subset(rows)
    batch = project_batch({"audio": shuffled.audio, "visual": shuffled.visual}, audio_in, visual_in)
    projected = dataclasses.replace(shuffled, audio=batch["audio"], visual=batch["visual"])
    ds = arrays_dataset(projected, epoch_blocks(cfg, fit.n) if cfg.shuffle == "epoch" else 8,
                        rows)
    return ds.randomize_block_order() if cfg.shuffle == "epoch" else ds


def split_shards(cfg: TrainJobConfig):
    """(fit Dataset, n_fit, val Pairs, test Pairs) of a shard set; the split of `read_pairs` +
    `fit_tnn`. Only clip ids, labels and folds come to the driver, then the held-out rows."""
    man, ids, labels, folds = shard_index(cfg.data)
    if man.folds != cfg.folds:
        raise ConfigError(f"{cfg.data} has {man.folds} folds; set folds={man.folds}")
    fit_ids, val_ids, test_ids = (pa.array(x) for x in split_ids(cfg, ids, labels, folds))
    held_ids = pa.concat_arrays([val_ids, test_ids])
    read = dict(check="manifest", num_cpus=cfg.read_cpus)
    held = data.dataset(cfg.data, **read).map_batches(
        select_ids, batch_format="pyarrow", batch_size=None, num_cpus=cfg.read_cpus,
        fn_kwargs={"ids": held_ids, "keep": True, "drop_ids": False})
    rows = [table_to_numpy(t)
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
    """Split, statistics, input stages, the projected (cached) fit set."""
    cfg = network_config(cfg)  # tnn-label: standardised inputs, its own split and batch
    project, shards = cfg.tnn.pipeline == "two-stage", is_shard_uri(cfg.data)
    start = time.perf_counter()
    if shards:
        fit_ds, n_fit, val, test = split_shards(cfg)
        stats = dataset_stats(fit_ds, val.num_classes, cfg.read_cpus)
        if int(stats.n) != n_fit:
            raise DataError(f"{cfg.data}: the statistics pass saw {stats.n:.0f} rows, "
                            f"expected {n_fit}")
    else:
        fit, val, test = split_in_memory(cfg)
        n_fit, stats = fit.n, CCAStats.from_arrays(fit.audio, fit.visual, fit.labels,
                                                   val.num_classes)
    audio_in, visual_in = input_maps_from_stats(stats, cfg.tnn.cca, val.num_classes,
                                                project=project)
    log(f"train: fit {n_fit}, val {val.n}, test {test.n} clips; statistics "
        f"{'pass ' if shards else ''}and {'cluster-CCA fit' if project else 'standardiser'} "
        f"in {time.perf_counter() - start:.1f} s")
    if not shards:
        fit_ds = in_memory_dataset(cfg, fit, audio_in, visual_in)
        return Prepared(fit_ds, n_fit, val, test, audio_in, visual_in, stats, val.num_classes)
    fit_ds = fit_ds.map_batches(project_batch, batch_format="numpy", num_cpus=cfg.read_cpus,
                                fn_kwargs={"audio_in": audio_in, "visual_in": visual_in})
    if cfg.shuffle != "local":  # sources are often sorted by class
        fit_ds = fit_ds.random_shuffle(seed=cfg.tnn.train.seed, num_cpus=cfg.read_cpus)
    if cfg.shuffle == "epoch":  # small blocks, dealt to the ranks in a new order every epoch
        fit_ds = fit_ds.repartition(epoch_blocks(cfg, n_fit))
    if cfg.cache:
        fit_ds = fit_ds.materialize()
    if cfg.shuffle == "epoch":  # lazy, so it runs every epoch (unseeded: a seed repeats)
        fit_ds = fit_ds.randomize_block_order()
    return Prepared(fit_ds, n_fit, val, test, audio_in, visual_in, stats, val.num_classes)
