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
from tnn.core.folds import assign_folds, check_trainable, split
from tnn.core.metrics import cross_modal_scores
from tnn.data.pairs import Pairs
from tnn.data.sources import load_source
from tnn.errors import ConfigError
from tnn.methods.linear import cca_dim

DEFAULT_METHODS = tuple(registry.METHODS)
"""Every registered method, in the registry's order (`jobs.crossval` without --methods)."""
SMOKE = ("folds=2", "settings.tnn_c_cca.train.epochs=2", "settings.tnn_e2e.train.epochs=2",
         "settings.baselines.dcca.epochs=2", "settings.baselines.c_dcca.epochs=2",
         "settings.baselines.kcca.rank=200", "settings.tnn_label.epochs=2",
         "settings.tnn_label.kcca.rank=200")  # a seconds-long check (`jobs.crossval --smoke`)


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


def check_dims(cfg: CrossvalConfig, pairs: Pairs) -> None:
    """Refuse, before anything is fitted, a CCA dimension that no linear (cluster-)CCA has:
    above the narrower view's width, or with beta = 0 (class means only) above classes - 1."""
    narrow = min(pairs.audio.shape[1], pairs.visual.shape[1])
    for name, key in (("cca", "cca"), ("c-cca", "cca"), ("tnn-c-cca", "tnn_c_cca.cca")):
        cca = cfg.settings.cca if key == "cca" else cfg.settings.tnn_c_cca.cca
        if name not in cfg.methods or cca.dim is None:
            continue
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
    return assign_folds(pairs.labels, k, seed)


def evaluate(name: str, pairs: Pairs, folds: np.ndarray, cfg: CrossvalConfig,
             log=print) -> dict:
    """Fit `name` on each training part, score it on the test fold; one log line per fold."""
    fit, rows = registry.get(name), []
    for f in range(cfg.folds):
        train, test = split(folds, f)
        start = time.perf_counter()
        enc = fit(pairs.subset(train), cfg.settings, lambda s: None)
        seconds = time.perf_counter() - start
        t = pairs.subset(test)
        s = cross_modal_scores(enc.embed_audio(t.audio), enc.embed_visual(t.visual), t.labels)
        rows.append({**s, "fit_seconds": seconds})
        log(f"  {name:10s} fold {f + 1}/{cfg.folds}: a->v {s['a2v_map']:.4f}  "
            f"v->a {s['v2a_map']:.4f}  ({seconds:.1f} s)", flush=True)
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    return {"a2v_map": float(np.mean(col("a2v_map"))), "v2a_map": float(np.mean(col("v2a_map"))),
            "a2v_map_folds": col("a2v_map"), "v2a_map_folds": col("v2a_map"),
            "mrr1_a2v": float(np.mean(col("mrr1_a2v"))), "mrr1_v2a": float(np.mean(col("mrr1_v2a"))),
            "fit_seconds": float(np.mean(col("fit_seconds"))),
            "pr_a2v": {"recall": rows[0]["pr_recall"].tolist(),
                       "precision": np.mean(col("a2v_pr"), 0).tolist()},
            "pr_v2a": {"recall": rows[0]["pr_recall"].tolist(),
                       "precision": np.mean(col("v2a_pr"), 0).tolist()},
            "params": registry.method_params(name, cfg.settings)}


def crossval(cfg: CrossvalConfig, log=print) -> tuple[Pairs, dict]:
    """Load and check the data, then every method of `cfg` over the folds:
    (the data, {method: `evaluate`'s summary}). Refusals (`TnnError`) come before any fit."""
    for name in cfg.methods:
        registry.get(name)
    pairs = load_source(cfg.data)
    check_trainable(pairs.labels, pairs.clip_ids, pairs.class_names, pairs.name)
    check_dims(cfg, pairs)
    folds = fold_ids(pairs, cfg.folds, cfg.seed)
    log(f"data {pairs.name}: {pairs.n} clips, audio {pairs.audio.shape[1]}-d, visual "
        f"{pairs.visual.shape[1]}-d, {pairs.num_classes} classes, {cfg.folds} folds", flush=True)
    return pairs, {name: evaluate(name, pairs, folds, cfg, log) for name in cfg.methods}


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
            "methods": results}


def best(results: dict) -> tuple[str, float]:
    """(the method with the highest mean MAP of both directions, that mean)."""
    name = max(results, key=lambda m: results[m]["a2v_map"] + results[m]["v2a_map"])
    return name, (results[name]["a2v_map"] + results[name]["v2a_map"]) / 2
