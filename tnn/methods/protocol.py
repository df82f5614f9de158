"""The paper's evaluation protocol: K class-balanced folds x methods -> a results dict.

Each fold is the test set once and the rest trains; every query ranks the whole test fold of
the other modality by cosine similarity; MAP (both directions), MRR@1, the PR curve and the
fit time are kept per fold and averaged per method (`crossval`). `result_json` is the JSON
contract of DESIGN.md (`jobs.crossval --json`, read by `tnn.methods.report`). Data come from
`tnn.data.sources.load_source` (shard sets keep the folds they were written with).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from tnn import methods as registry
from tnn.config import flatten
from tnn.core.folds import assign_folds, check_trainable, split
from tnn.core.metrics import cross_modal_scores
from tnn.data.pairs import Pairs
from tnn.data.sources import load_source
from tnn.errors import ConfigError, DataError, TnnError
from tnn.methods.linear import cca_dim

DEFAULT_METHODS = tuple(registry.METHODS)
"""Every registered method, in the registry's order (`jobs.crossval` without --methods)."""
SMOKE = ("folds=2", "settings.tnn_c_cca.train.epochs=2", "settings.tnn_e2e.train.epochs=2",
         "settings.baselines.dcca.epochs=2", "settings.baselines.c_dcca.epochs=2",
         "settings.baselines.kcca.rank=200", "settings.tnn_label.epochs=2",
         "settings.tnn_label.kcca.rank=200")  # a seconds-long check (`jobs.crossval --smoke`)


@dataclasses.dataclass(frozen=True)
class Tracking:
    """Where `jobs.crossval` logs its MLflow run (`tnn.tracking.crossval`)."""

    enabled: bool = True
    tracking_uri: str | None = None
    """None: $MLFLOW_TRACKING_URI, else the embedded sqlite:///<local_dir>/mlflow.db."""
    local_dir: str = "./runs/mlflow"
    experiment: str = "tnn-crossval"

    def __post_init__(self) -> None:
        if not self.experiment.strip():
            raise ConfigError("mlflow.experiment: empty; name an MLflow experiment")
        if self.tracking_uri is not None and not self.tracking_uri.strip():
            raise ConfigError("mlflow.tracking_uri (--tracking-uri): empty; give a tracking URI "
                              "(or leave it out)")


@dataclasses.dataclass(frozen=True)
class CrossvalConfig:
    data: str = "uci-mfeat"
    """Data source: uci-mfeat[:A,B], npz:PATH, vegas:DIR, synthetic:N, or a shard URI."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    folds: int = 5
    seed: int = 0
    """Seed of the fold assignment (shards keep the folds they were written with)."""
    json: str | None = None
    settings: registry.MethodsConfig = dataclasses.field(default_factory=registry.MethodsConfig)
    mlflow: Tracking = dataclasses.field(default_factory=Tracking)

    def __post_init__(self) -> None:
        if not self.data.strip():
            raise ConfigError("data: empty; give a data source such as uci-mfeat or npz:PATH")
        if not self.methods:
            raise ConfigError(f"methods: empty; choose from {', '.join(registry.METHODS)}")
        if not 2 <= self.folds <= 127:
            raise ConfigError(f"folds={self.folds}: must be in 2..127")
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed}: must be >= 0 (the fold assignment seed)")
        if self.json is not None and not self.json.strip():
            raise ConfigError("json: empty; give a file name or s3://bucket/key (or leave it out)")


TNN_SECTIONS = {"tnn": ("tnn_c_cca", "tnn_e2e"), "tnn_label": ("tnn_label",)}
"""`jobs.train`'s spelling -> the methods it sets here: `tnn.train.epochs=3` sets
`settings.tnn_c_cca.train.epochs` and `settings.tnn_e2e.train.epochs`; `tnn_label.epochs=3`
sets `settings.tnn_label.epochs`. The per-method keys keep working."""


def train_spelling(overrides: list) -> list:
    """`--set` items with `jobs.train`'s TNN keys (TNN_SECTIONS) expanded to every TNN
    method's key, in place (a later item still wins); other items as they are."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=") if isinstance(item, str) else ("", "", "")
        head, dot, rest = key.strip().partition(".")
        if not (sep and dot and head in TNN_SECTIONS):
            out.append(item)
            continue
        if key.strip() == "tnn.pipeline":
            raise ConfigError(f"override {item!r}: crossval runs each TNN pipeline as its own "
                              "method (tnn-c-cca, tnn-e2e); choose them with --methods")
        out += [f"settings.{section}.{rest}={value}" for section in TNN_SECTIONS[head]]
    return out


MAX_WIDTH = 16384  # a layer of MAX_WIDTH^2 float32 weights is 1 GiB
SIZES = {"dim": MAX_WIDTH, "hidden": MAX_WIDTH, "ensemble": 100}


def check_sizes(cfg: CrossvalConfig) -> None:
    """Refuse, before the data is read, a width that would allocate without bound: a common
    space (`dim`) or hidden layer above MAX_WIDTH, an ensemble above 100 members."""
    for key, value in flatten(cfg.settings, "settings.").items():
        top = SIZES.get(key.rsplit(".", 1)[-1])
        values = value if isinstance(value, (list, tuple)) else [value]
        if top and any(isinstance(v, int) and v > top for v in values):
            raise ConfigError(f"{key}={value}: above {top}, the largest this job builds")


def check_dims(cfg: CrossvalConfig, pairs: Pairs) -> None:
    """Refuse, before anything is fitted, a CCA dimension that no linear (cluster-)CCA has:
    above the narrower view's width, or with beta = 0 (class means only) above classes - 1."""
    narrow = min(pairs.audio.shape[1], pairs.visual.shape[1])
    for name, key in (("cca", "cca"), ("c-cca", "cca"), ("tnn-c-cca", "tnn_c_cca.cca")):
        cca = cfg.settings.cca if key == "cca" else cfg.settings.tnn_c_cca.cca
        if name not in cfg.methods or cca.dim is None:
            continue
        if isinstance(cca.dim, bool) or cca.dim < 1:
            raise ConfigError(f"settings.{key}.dim={cca.dim}: must be an integer >= 1 (or null: "
                              "the default for the data)")
        limit, why = narrow, f"the narrower view has {narrow} features"
        top = pairs.num_classes - 1
        if name != "cca" and cca.beta == 0 and top < limit:
            limit, why = top, f"with beta=0 cluster-CCA spans at most classes - 1 = {top} directions"
        if cca.dim > limit:
            raise ConfigError(f"settings.{key}.dim={cca.dim} is impossible for {name} on "
                              f"{pairs.name}: {why}")


def fold_ids(pairs: Pairs, k: int, seed: int) -> np.ndarray:
    """The stored folds of a shard set if it has `k`, else `assign_folds(labels, k, seed)`."""
    if pairs.folds is not None and len(np.unique(pairs.folds)) == k:
        return pairs.folds
    try:
        return assign_folds(pairs.labels, k, seed)
    except TnnError as err:  # name the data set
        raise type(err)(f"{pairs.name}: {err}") from None


class Progress:
    """`done/total` (method, fold) fits with the elapsed time and a naive time left."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def step(self) -> str:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * (self.total - self.done)
        return f"[{self.done}/{self.total}, {elapsed:.0f} s elapsed, ~{left:.0f} s left]"


def evaluate(name: str, pairs: Pairs, folds: np.ndarray, cfg: CrossvalConfig,
             log=print, progress: Progress | None = None) -> dict:
    """Fit `name` on each training part, score it on the test fold; one log line per fold
    (with `progress`: how many of all fits are done, elapsed, time left)."""
    fit, rows = registry.get(name), []
    for f in range(cfg.folds):
        train, test = split(folds, f)
        start, cpu = time.perf_counter(), time.process_time()
        enc = fit(pairs.subset(train), cfg.settings, lambda s: None)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        t = pairs.subset(test)
        try:
            s = cross_modal_scores(enc.embed_audio(t.audio), enc.embed_visual(t.visual), t.labels)
        except DataError as err:  # e.g. an all-zero embedding: name the method, data and fold
            raise DataError(f"{name} on {pairs.name}, test fold {f + 1}: {err}") from None
        rows.append({**s, "fit_seconds": seconds, "fit_cpu_seconds": cpu})
        log(f"  {name:10s} fold {f + 1}/{cfg.folds}: a->v {s['a2v_map']:.4f}  "
            f"v->a {s['v2a_map']:.4f}  ({seconds:.1f} s)"
            + (f"  {progress.step()}" if progress else ""), flush=True)
    return summary(name, rows, cfg)


def summary(name: str, rows: list[dict], cfg: CrossvalConfig) -> dict:
    """A method's folds: means (MAP per fold too), mean PR curves, and under `fold_scores`
    every scalar score per fold (MLflow's mean and std; left out of `result_json`)."""
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    scalar = [k for k, v in rows[0].items() if np.isscalar(v) and all(k in r for r in rows)]
    return {"a2v_map": float(np.mean(col("a2v_map"))), "v2a_map": float(np.mean(col("v2a_map"))),
            "a2v_map_folds": col("a2v_map"), "v2a_map_folds": col("v2a_map"),
            "mrr1_a2v": float(np.mean(col("mrr1_a2v"))), "mrr1_v2a": float(np.mean(col("mrr1_v2a"))),
            "fit_seconds": float(np.mean(col("fit_seconds"))),
            "fit_cpu_seconds": float(np.mean(col("fit_cpu_seconds"))),  # process CPU time
            "pr_a2v": {"recall": rows[0]["pr_recall"].tolist(),
                       "precision": np.mean(col("a2v_pr"), 0).tolist()},
            "pr_v2a": {"recall": rows[0]["pr_recall"].tolist(),
                       "precision": np.mean(col("v2a_pr"), 0).tolist()},
            "params": registry.method_params(name, cfg.settings),
            "fold_scores": {k: [float(v) for v in col(k)] for k in scalar}}


def crossval(cfg: CrossvalConfig, log=print) -> tuple[Pairs, dict]:
    """Load and check the data, then every method of `cfg` over the folds:
    (the data, {method: `evaluate`'s summary}). Refusals (`TnnError`) come before any fit."""
    for name in cfg.methods:
        registry.get(name)
    check_sizes(cfg)
    pairs = load_source(cfg.data)
    check_trainable(pairs.labels, pairs.clip_ids, pairs.class_names, pairs.name)
    check_dims(cfg, pairs)
    folds = fold_ids(pairs, cfg.folds, cfg.seed)
    for f in range(cfg.folds):
        classes = np.unique(pairs.labels[folds == f])
        if len(classes) < 2:
            raise ConfigError(f"folds={cfg.folds}: test fold {f + 1} of {pairs.name} holds "
                              f"{int((folds == f).sum())} clip(s) of {len(classes)} class(es); "
                              "retrieval needs 2 classes in every test fold: use fewer folds")
    log(f"data {pairs.name}: {pairs.n} clips, audio {pairs.audio.shape[1]}-d, visual "
        f"{pairs.visual.shape[1]}-d, {pairs.num_classes} classes, {cfg.folds} folds", flush=True)
    progress = Progress(len(cfg.methods) * cfg.folds)
    return pairs, {name: evaluate(name, pairs, folds, cfg, log, progress)
                   for name in cfg.methods}


def table(results: dict) -> str:
    """A plain-text table: MAP +- std over folds both ways, their mean, MRR@1, fit seconds."""
    head = (f"{'method':10s} {'a->v MAP':>16s} {'v->a MAP':>16s} {'mean':>7s} "
            f"{'MRR@1 a->v':>10s} {'MRR@1 v->a':>10s} {'fit s':>7s}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        a, v = np.array(r["a2v_map_folds"]), np.array(r["v2a_map_folds"])
        lines.append(f"{name:10s} {a.mean():7.4f} +- {a.std():.3f} {v.mean():7.4f} +- {v.std():.3f} "
                     f"{(a.mean() + v.mean()) / 2:7.4f} {r['mrr1_a2v']:10.4f} "
                     f"{r['mrr1_v2a']:10.4f} {r['fit_seconds']:7.1f}")
    return "\n".join(lines)


def result_json(cfg: CrossvalConfig, pairs: Pairs, results: dict) -> dict:
    """The results with the data name, folds, seed and the CCA dimension used."""
    dim = cca_dim(cfg.settings.cca, pairs.num_classes, pairs.audio.shape[1], pairs.visual.shape[1])
    return {"data": pairs.name, "folds": cfg.folds, "seed": cfg.seed, "dim": dim,
            "methods": {name: {k: v for k, v in r.items() if k != "fold_scores"}
                        for name, r in results.items()}}


def best(results: dict) -> tuple[str, float]:
    """(the method with the highest mean MAP of both directions, that mean)."""
    name = max(results, key=lambda m: results[m]["a2v_map"] + results[m]["v2a_map"])
    return name, (results[name]["a2v_map"] + results[name]["v2a_map"]) / 2
