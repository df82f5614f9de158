"""The config of a TNN run on Ray Train (`jobs.train`, `tnn.ray.train_loop`); no Ray needed to load it.

`TrainJobConfig` is the resolved job config: data and split, the method (`method`: the TNN
pipelines of the `tnn` section, or tnn-label with the `tnn_label` section), the workers and
their resources, the Ray Data plan, checkpoint storage, and MLflow. It travels to the workers
as a dict (`tnn.config.to_dict` / `from_dict`) and is saved with every checkpoint.
`network_config` gives the `tnn` section the data plan (`tnn.ray.prepare`, `tnn.train.plan`)
reads for either method.
"""

from __future__ import annotations

import dataclasses

from tnn.errors import ConfigError
from tnn.methods import e2e_default
from tnn.methods.label import LabelConfig, label_default
from tnn.methods.tnn import TNNConfig, TrainConfig

METHODS = ("tnn", "tnn-label")


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
    """A `tnn.data.sources` spec (held in memory) or a shard URI (streamed through Ray Data)."""
    test_fold: int = 0
    folds: int = 5
    """Folds of in-memory sources (shards keep the folds they were written with)."""
    seed: int = 0
    """Fold assignment seed (in-memory sources)."""
    subset: int = 0
    """Keep a class-balanced subset of this many clips before splitting (0 = all)."""
    method: str = "tnn"
    """tnn: the `tnn` section (tnn-e2e, or tnn-c-cca with tnn.pipeline=two-stage); tnn-label:
    the `tnn_label` section (`tnn.methods.label`; the `tnn` section is then not read)."""
    tnn: TNNConfig = dataclasses.field(default_factory=e2e_default)
    """The TNN pipelines; train.batch_size is the global batch (split evenly over workers)."""
    tnn_label: LabelConfig = dataclasses.field(default_factory=label_default)
    """tnn-label (method=tnn-label); batch_size is the global batch."""
    readout_rows: int = 20000
    """tnn-label: the kernel part of the readout (cluster-KCCA, O(n m) with m landmarks) is
    fitted on at most this many fit rows, a seeded random sample (all rows when fewer)."""
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
    shard_in_memory: str = "auto"
    """"auto": a worker whose rows stay the same every epoch (one worker, or shuffle="once")
    reads its shard once into memory (if it takes <= 1/4 of the node's available memory) and
    permutes it each epoch, skipping Ray Data's per-epoch start (`tnn.ray.local_shard`);
    "never": always stream from the object store."""
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
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        label = self.method == "tnn-label"
        batch = self.tnn_label.batch_size if label else self.tnn.train.batch_size
        if self.workers < 1 or batch % self.workers:
            raise ConfigError(f"workers={self.workers} must be >= 1 and divide "
                              f"{'tnn_label' if label else 'tnn.train'}.batch_size={batch} "
                              "(the global batch)")
        if self.tnn.ensemble != 1:
            raise ConfigError("tnn.ensemble > 1 is single-process only (jobs.crossval)")
        if not 0 <= self.test_fold < self.folds:
            raise ConfigError(f"test_fold={self.test_fold} must lie in 0..{self.folds - 1}")
        if self.shuffle not in ("epoch", "once", "local"):
            raise ConfigError(f"shuffle={self.shuffle!r}: expected epoch, once or local")
        if self.shard_in_memory not in ("auto", "never"):
            raise ConfigError(f"shard_in_memory={self.shard_in_memory!r}: expected auto or never")
        if self.cpus_per_worker <= 0 or self.read_cpus <= 0 or self.subset < 0:
            raise ConfigError("cpus_per_worker and read_cpus must be > 0, subset >= 0")
        if self.readout_rows < 2:
            raise ConfigError(f"readout_rows={self.readout_rows} must be >= 2")


def network_config(cfg: TrainJobConfig) -> TrainJobConfig:
    """`cfg` with the `tnn` section the data plan reads: itself for method tnn; for tnn-label,
    an e2e section (standardised inputs, no projection) with tnn_label's standardisation
    (cca), global batch, validation split (val_fraction, seed) and epochs/patience."""
    if cfg.method != "tnn-label":
        return cfg
    lab = cfg.tnn_label
    train = TrainConfig(epochs=lab.epochs, batch_size=lab.batch_size, lr=lab.lr,
                        weight_decay=lab.weight_decay, margin=lab.margin, distance="cosine",
                        val_fraction=lab.val_fraction, patience=lab.patience, seed=lab.seed)
    return dataclasses.replace(cfg, tnn=TNNConfig(pipeline="e2e", preset="wide_bn",
                                                  cca=lab.cca, train=train))

