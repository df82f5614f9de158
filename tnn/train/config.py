"""The config of a TNN run on Ray Train (`jobs.train`, `tnn.ray.train_loop`); no Ray needed to load it.

`TrainJobConfig` is the resolved job config: data and split, the method (`TNNConfig`), the
workers and their resources, the Ray Data plan, checkpoint storage, and MLflow. It travels to
the workers as a dict (`tnn.config.to_dict` / `from_dict`) and is saved with every checkpoint.
"""

from __future__ import annotations

import dataclasses

from tnn.errors import ConfigError
from tnn.methods import e2e_default
from tnn.methods.tnn import TNNConfig


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
    tnn: TNNConfig = dataclasses.field(default_factory=e2e_default)
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

