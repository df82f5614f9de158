"""Cross-validate retrieval methods with the paper's protocol (K class-balanced folds).

Each fold is the test set once and the rest trains; every query ranks the whole test fold of
the other modality by cosine similarity; MAP, MRR@1 and fit time are reported per method,
averaged over folds, in a table and (with --json) in the JSON contract of DESIGN.md.

    python -m jobs.crossval                                   # bundled data, all 8 methods
    python -m jobs.crossval --data uci-mfeat:fou,pix --methods cca,c-cca --dim 9 --json out.json
    python -m jobs.crossval --data s3://bucket/shards          # shards: their stored folds
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m jobs.crossval --data s3://bucket/shards --json s3://bucket/results/cv.json

It ends with one line: `crossval: best <method> mean MAP 0.xxx over K folds (... s)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from jobs.common import emit_error, print_config
from tnn import methods as registry
from tnn.data import storage
from tnn.config import load
from tnn.errors import ConfigError, TnnError
from tnn.core.folds import assign_folds, check_trainable, split
from tnn.core.metrics import cross_modal_scores
from tnn.methods.tnn import cca_dim
from tnn.data.sources import Pairs, load_source

DEFAULT_METHODS = ("cca", "kcca", "dcca", "c-cca", "c-kcca", "c-dcca", "tnn-c-cca", "tnn-e2e")


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


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m jobs.crossval", description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="YAML preset (holds only what it changes)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override, e.g. --set settings.tnn_e2e.train.epochs=20")
    ap.add_argument("--data", help="data source (default uci-mfeat = fou -> pix)")
    ap.add_argument("--methods", help=f"comma-separated, from {','.join(registry.METHODS)}")
    ap.add_argument("--folds", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--dim", type=int, help="CCA dimension / common-space width for every method")
    ap.add_argument("--json", help="write the results JSON here (a path or s3://bucket/key)")
    ap.add_argument("--smoke", action="store_true", help="2 folds, 2 epochs: a seconds-long check")
    return ap.parse_args(argv)


def build_config(args) -> CrossvalConfig:
    sets = list(args.set)
    if args.smoke:
        sets = ["folds=2", "settings.tnn_c_cca.train.epochs=2", "settings.tnn_e2e.train.epochs=2",
                "settings.baselines.dcca.epochs=2", "settings.baselines.c_dcca.epochs=2",
                "settings.baselines.kcca.rank=200"] + sets
    for key in ("data", "folds", "seed", "json"):
        if getattr(args, key) is not None:
            sets.append(f"{key}={getattr(args, key)}")
    if args.methods:
        sets.append(f"methods=[{args.methods}]")
    cfg = load(CrossvalConfig, args.config, sets)
    if args.dim is not None:
        cfg = dataclasses.replace(cfg, settings=cfg.settings.with_dim(args.dim))
    for name in cfg.methods:
        registry.get(name)
    return cfg


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
    if pairs.folds is not None and len(np.unique(pairs.folds)) == k:
        return pairs.folds
    return assign_folds(pairs.labels, k, seed)


def evaluate(name: str, pairs: Pairs, folds: np.ndarray, cfg: CrossvalConfig) -> dict:
    """Fit `name` on each training part, score it on the test fold."""
    fit, rows = registry.get(name), []
    for f in range(cfg.folds):
        train, test = split(folds, f)
        start = time.perf_counter()
        enc = fit(pairs.subset(train), cfg.settings, lambda s: None)
        seconds = time.perf_counter() - start
        t = pairs.subset(test)
        s = cross_modal_scores(enc.embed_audio(t.audio), enc.embed_visual(t.visual), t.labels)
        rows.append({**s, "fit_seconds": seconds})
        print(f"  {name:10s} fold {f + 1}/{cfg.folds}: a->v {s['a2v_map']:.4f}  "
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


def table(results: dict) -> str:
    head = (f"{'method':10s} {'a->v MAP':>16s} {'v->a MAP':>16s} {'mean':>7s} "
            f"{'MRR@1 a->v':>10s} {'MRR@1 v->a':>10s} {'fit s':>7s}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        a, v = np.array(r["a2v_map_folds"]), np.array(r["v2a_map_folds"])
        lines.append(f"{name:10s} {a.mean():7.4f} +- {a.std():.3f} {v.mean():7.4f} +- {v.std():.3f} "
                     f"{(a.mean() + v.mean()) / 2:7.4f} {r['mrr1_a2v']:10.4f} "
                     f"{r['mrr1_v2a']:10.4f} {r['fit_seconds']:7.1f}")
    return "\n".join(lines)


def write_json(uri: str, data: dict) -> None:
    """A local path or s3://bucket/key (a job's working directory on a cluster is temporary)."""
    fs, path = storage.filesystem(uri)
    if not storage.is_s3(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(data, indent=2).encode())


def main(argv=None) -> int:
    start = time.perf_counter()
    try:
        cfg = build_config(parse_args(argv))
        print_config("crossval", cfg)
        pairs = load_source(cfg.data)
        check_trainable(pairs.labels, pairs.clip_ids, pairs.class_names, pairs.name)
        check_dims(cfg, pairs)
        folds = fold_ids(pairs, cfg.folds, cfg.seed)
        print(f"data {pairs.name}: {pairs.n} clips, audio {pairs.audio.shape[1]}-d, visual "
              f"{pairs.visual.shape[1]}-d, {pairs.num_classes} classes, {cfg.folds} folds", flush=True)
        results = {name: evaluate(name, pairs, folds, cfg) for name in cfg.methods}
    except TnnError as err:
        return emit_error("crossval", err)
    print(table(results))
    if cfg.json:
        dim = cca_dim(cfg.settings.cca, pairs.num_classes, pairs.audio.shape[1], pairs.visual.shape[1])
        out = {"data": pairs.name, "folds": cfg.folds, "seed": cfg.seed, "dim": dim,
               "methods": results}
        try:
            write_json(cfg.json, out)
        except OSError as err:
            return emit_error("crossval", err)
        print(f"wrote {cfg.json}")
    best = max(results, key=lambda m: results[m]["a2v_map"] + results[m]["v2a_map"])
    mean = (results[best]["a2v_map"] + results[best]["v2a_map"]) / 2
    print(f"crossval: best {best} mean MAP {mean:.4f} over {cfg.folds} folds "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
