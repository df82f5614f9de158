"""Search spaces for `jobs.tune` (`tune_spaces/*.yaml`): typed config, checks, resources.

A space names a method (the base TNNConfig: tnn-c-cca or tnn-e2e), the `TrainJobConfig`
overrides every trial shares (`base`), the searched keys (`params`: grid, choice, uniform or
loguniform over dotted TrainJobConfig keys), the metric (a validation score; selection never
looks at the test fold), the scheduler (ASHA over per-epoch reports) and the budget (trials,
concurrency, resources per trial). `check` refuses a space no trial could run before Ray
starts: unknown keys or wrong types (via `tnn.config.from_dict` on every grid point), a
margin <= 0, a CCA dimension above classes - 1 or the feature widths, an ASHA `max_t` that
would cut trials before they log their model.

Resources (`concurrency`; ENVIRONMENT.md, "Tune"): a trial's driver holds one unit of the
custom logical resource `trial_slot` (a CPU share of 0 is refused by Ray and 0.01 deadlocks
Ray Data); its Train workers hold `cpus_per_worker` (and a GPU each with `use_gpu`); one CPU per
trial is left for its Ray Data tasks (listing shards needs a whole CPU). On a cluster without
`trial_slot` each trial driver reserves one CPU instead. No Ray import here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

from tnn.config import from_dict, load, merge, to_dict
from tnn.errors import ConfigError
from tnn.methods import e2e_default, two_stage_default

METHODS = {"tnn-c-cca": two_stage_default, "tnn-e2e": e2e_default}
METRICS = ("val_map", "val_a2v_map", "val_v2a_map", "val_mrr1_a2v", "val_mrr1_v2a")
SCORES = METRICS + ("test_map", "test_a2v_map", "test_v2a_map", "test_mrr1_a2v", "test_mrr1_v2a")
KINDS = ("grid", "choice", "uniform", "loguniform")
FIXED = ("run_name", "workers", "cpus_per_worker", "use_gpu", "mlflow")
"""TrainJobConfig keys a space may not set: per trial, from the budget, or from the job."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched key: one of grid / choice (values) or uniform / loguniform (low, high)."""

    key: str
    """A dotted TrainJobConfig key, e.g. tnn.train.margin or tnn.cca.dim."""
    grid: tuple[Any, ...] | None = None
    choice: tuple[Any, ...] | None = None
    uniform: tuple[float, ...] | None = None
    loguniform: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"params {self.key}: give exactly one of {', '.join(KINDS)}")
        values = getattr(self, given[0])
        if not values:
            raise ConfigError(f"params {self.key}: {given[0]} is empty")
        if given[0] in ("uniform", "loguniform") and not (
                len(values) == 2 and values[0] < values[1]):
            raise ConfigError(f"params {self.key}: {given[0]} needs [low, high] with low < high")
        if given[0] == "loguniform" and values[0] <= 0:
            raise ConfigError(f"params {self.key}: loguniform needs low > 0")

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def values(self) -> tuple:
        """The candidate values (grid, choice) or the range's ends (uniform, loguniform)."""
        return tuple(getattr(self, self.kind))


@dataclasses.dataclass(frozen=True)
class Scheduler:
    name: str = "asha"
    """asha (stop poor trials at rungs of reported epochs) or fifo (run every trial out)."""
    max_t: int = 0
    """Epoch reports a trial may make; 0 = epochs + 1 (must exceed epochs, see module doc)."""
    grace_period: int = 1
    """Epochs before a trial can be stopped."""
    reduction_factor: float = 3.0

    def __post_init__(self) -> None:
        if self.name not in ("asha", "fifo"):
            raise ConfigError(f"scheduler.name={self.name!r}: expected asha or fifo")
        if self.grace_period < 1 or self.reduction_factor <= 1 or self.max_t < 0:
            raise ConfigError("scheduler: need grace_period >= 1, reduction_factor > 1, max_t >= 0")


@dataclasses.dataclass(frozen=True)
class Budget:
    num_samples: int = 1
    """Tune's num_samples: repeats of the grid (random keys are drawn anew each time)."""
    max_concurrent_trials: int = 0
    """0: as many as the cluster's CPUs, GPUs and trial slots hold (`concurrency`)."""
    workers: int = 1
    """Ray Train workers per trial (a 2-CPU machine fits one trial of one 0.5-CPU worker)."""
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    """One GPU per worker (NCCL)."""

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_concurrent_trials < 0 or self.workers < 1 \
                or self.cpus_per_worker <= 0:
            raise ConfigError("budget: need num_samples >= 1, max_concurrent_trials >= 0, "
                              "workers >= 1, cpus_per_worker > 0")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    method: str = "tnn-c-cca"
    """The base TNNConfig: tnn-c-cca (two-stage) or tnn-e2e (`tnn.methods`)."""
    base: dict = dataclasses.field(default_factory=dict)
    """TrainJobConfig overrides shared by every trial (data, subset, tnn.train.epochs, ...)."""
    params: tuple[Param, ...] = ()
    metric: str = "val_map"
    """A validation score reported every epoch (selection never looks at the test fold)."""
    mode: str = "max"
    scheduler: Scheduler = dataclasses.field(default_factory=Scheduler)
    budget: Budget = dataclasses.field(default_factory=Budget)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        if not isinstance(self.base, dict):
            raise ConfigError(f"base: expected a mapping of TrainJobConfig keys; got {self.base!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric={self.metric!r}: expected one of {', '.join(METRICS)}")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"mode={self.mode!r}: expected max or min")
        keys = [p.key for p in self.params]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"params: a key appears twice in {keys}")
        for key in list(self.base) + keys:
            if key.split(".")[0] in FIXED:
                raise ConfigError(f"{key}: set by the tuning job (budget, --experiment, trial "
                                  f"names), not by the space")

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.params if p.kind == "grid")

    @property
    def trials(self) -> int:
        return self.budget.num_samples * self.grid_size


def space_dict(space: SearchSpace) -> dict:
    """The space as plain dicts and lists (printed, logged, saved with the results)."""
    return {**to_dict(space), "params": [
        {"key": p.key, p.kind: list(p.values)} for p in space.params]}


def load_space(path: str, overrides: list[str] | None = None) -> SearchSpace:
    try:
        return load(SearchSpace, [path], overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def space_overrides(sets: list[str]) -> tuple[list[str], list[str]]:
    """(`--set` items for `load_space`, deprecation notes). A TrainJobConfig key, spelled as
    for `jobs.train` (`tnn.train.epochs=3`), sets the shared trial config (`base.tnn.train.
    epochs=3`); the space's own keys (method, metric, mode, params, scheduler.*, budget.*)
    stay as they are (`method` is the space's). The old `base.KEY=VALUE` still works, with a
    note naming the new spelling."""
    from tnn.train.config import TrainJobConfig
    space_keys = {f.name for f in dataclasses.fields(SearchSpace)}
    train_keys = {f.name for f in dataclasses.fields(TrainJobConfig)}
    out, notes = [], []
    for item in sets:
        key, sep, value = item.partition("=")
        key = key.strip()
        head, _, rest = key.partition(".")
        if sep and head == "base" and rest.split(".")[0] in train_keys - space_keys:
            notes.append(f"tune: --set {item}: deprecated spelling; use --set {rest}={value}")
        elif sep and head in train_keys - space_keys:
            item = f"base.{key}={value}"
        out.append(item)
    return out, notes


def with_trials(space: SearchSpace, trials: int) -> SearchSpace:
    """num_samples for `trials` trials in all; a grid's size must divide it."""
    if trials < 1 or trials % space.grid_size:
        raise ConfigError(f"--trials {trials}: the grid has {space.grid_size} points; "
                          f"give a positive multiple of it")
    return dataclasses.replace(space, budget=dataclasses.replace(
        space.budget, num_samples=trials // space.grid_size))


def unflatten(params: dict) -> dict:
    """`{'tnn.train.margin': 0.5}` -> `{'tnn': {'train': {'margin': 0.5}}}`."""
    out: dict = {}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def job_dict(space: SearchSpace, **extra) -> dict:
    """The resolved TrainJobConfig dict every trial starts from: method, base, budget, `extra`."""
    from tnn.train.config import TrainJobConfig
    b = space.budget
    job = merge(to_dict(TrainJobConfig(tnn=METHODS[space.method]())), space.base)
    job = merge(job, {"workers": b.workers, "cpus_per_worker": b.cpus_per_worker,
                      "use_gpu": b.use_gpu, **extra})
    return to_dict(trial_config(job, {}))


def trial_config(job: dict, params: dict, **extra):
    """A trial's TrainJobConfig: the shared dict with the sampled dotted keys set."""
    from tnn.train.config import TrainJobConfig
    return from_dict(TrainJobConfig, merge(merge(job, unflatten(params)), unflatten(extra)))


def data_shape(data: str) -> tuple[int, int, int]:
    """(classes, audio width, visual width): a shard set's manifest, else the loaded source."""
    from tnn.data.sources import is_shard_uri, load_source
    if is_shard_uri(data):
        from tnn.data.shards import read_manifest
        man = read_manifest(data)
        return man.num_classes, man.audio_dim, man.visual_dim
    pairs = load_source(data)
    return pairs.num_classes, pairs.audio.shape[1], pairs.visual.shape[1]


def check(space: SearchSpace, job: dict, shape: tuple[int, int, int]) -> None:
    """Refuse a space no trial could run, before any trial starts (ConfigError)."""
    classes, da, dv = shape
    points = [[(p.key, v) for v in p.values] for p in space.params]
    for combo in itertools.islice(itertools.product(*points), 10_000):
        cfg = _build(job, dict(combo))
        t, dim = cfg.tnn.train, cfg.tnn.cca.dim
        if t.margin <= 0:
            raise ConfigError(f"tnn.train.margin={t.margin}: the margin must be > 0")
        if t.w_cca < 0:
            raise ConfigError(f"tnn.train.w_cca={t.w_cca}: the CCA loss weight must be >= 0")
        if dim is not None and not 1 <= dim <= classes - 1:
            raise ConfigError(f"tnn.cca.dim={dim}: must lie in 1..{classes - 1} (classes - 1) "
                              f"for {cfg.data} with {classes} classes: cluster-CCA spans at most "
                              f"classes - 1 directions")
        if dim is not None and dim > min(da, dv):
            raise ConfigError(f"tnn.cca.dim={dim}: exceeds the feature widths of {cfg.data} "
                              f"(audio {da}, visual {dv})")
    epochs = max(_build(job, {k: v for k, v in c}).tnn.train.epochs
                 for c in itertools.product(*points))
    s = space.scheduler
    if s.max_t and s.max_t <= epochs:
        raise ConfigError(f"scheduler.max_t={s.max_t} must exceed tnn.train.epochs={epochs} "
                          f"(or be 0): ASHA would stop trials before they log their model")
    if s.grace_period > epochs:
        raise ConfigError(f"scheduler.grace_period={s.grace_period} exceeds "
                          f"tnn.train.epochs={epochs}")


def _build(job: dict, params: dict):
    try:
        return trial_config(job, params)
    except ConfigError as err:
        where = ", ".join(f"{k}={v}" for k, v in params.items())
        raise ConfigError(f"{err}{f' (at {where})' if where else ''}") from None


def concurrency(budget: Budget, resources: dict) -> tuple[int, dict, str]:
    """(max concurrent trials, a trial driver's resources, a note) for cluster `resources`."""
    slot = resources.get("trial_slot", 0) >= 1
    driver = {"trial_slot": 1} if slot else {"CPU": 1}
    per_cpu = budget.workers * budget.cpus_per_worker + 1 + (0 if slot else 1)
    limits = {"CPU": int(resources.get("CPU", 0) // per_cpu)}
    if slot:
        limits["trial_slot"] = int(resources["trial_slot"])
    if budget.use_gpu:
        limits["GPU"] = int(resources.get("GPU", 0) // budget.workers)
    n = min(limits.values())
    note = "" if slot else ("no 'trial_slot' resource in the cluster: each trial driver "
                            "reserves 1 CPU instead; ")
    if budget.max_concurrent_trials:
        n = min(budget.max_concurrent_trials, limits.get("trial_slot", 10**9))
        note += f"max_concurrent_trials={n} from the space"
    else:
        note += f"{n} concurrent (per trial {per_cpu:g} CPU incl. 1 for Ray Data" + \
                (f", {budget.workers} GPU" if budget.use_gpu else "") + f"; limits {limits})"
    if n < 1:
        raise ConfigError(f"the cluster ({resources}) cannot hold one trial: {per_cpu:g} CPU"
                          + (f" and {budget.workers} GPU" if budget.use_gpu else "")
                          + ("" if slot else "; declare a 'trial_slot' resource on a node"))
    return n, driver, note


