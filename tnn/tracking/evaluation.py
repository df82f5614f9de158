"""Scoring registered encoders on the held-out test fold of the data their run was trained on.

The held-out part is the training run's test fold (its logged config.yaml: data, folds, seed,
subset, test_fold; `split_of`), split exactly as `jobs.train` split it (`held_out`), and
embedded by the MLflow pyfunc model (no tnn model code involved). MAP both directions,
MRR@1, precision@k and the PR curve are logged as a run of experiment tnn-evaluate, tagged
with the model name, alias, version and the source run; the model version gets a tag naming
that run (`log_evaluation`). `evaluate` does all of it; `jobs.evaluate` is its command line
and `tnn.tracking.promotion` scores champion and challenger with it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from tnn.errors import ConfigError
from tnn.tracking import registry
from tnn.tracking import runs as tracking

JOB = "evaluate"
EXPERIMENT = "tnn-evaluate"
SPLIT_KEYS = ("data", "folds", "seed", "subset", "test_fold")  # what fixes the test fold
SMOKE_CLIPS = 200


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    model: str
    """models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID."""
    data: str | None = None
    """None: the data the model's run was trained on."""
    fold: int | None = None
    """None: the run's test fold."""
    tracking_uri: str | None = None
    experiment: str = EXPERIMENT
    limit: int = 0
    """Score a class-balanced subset of this many held-out clips (0 = all; --smoke: 200)."""


def split_of(run_id: str, tracking_uri: str) -> dict:
    """The split settings of a training run: its config.yaml, else its params."""
    config = tracking.run_config(run_id, tracking_uri=tracking_uri)
    if config is not None:
        return {k: config[k] for k in SPLIT_KEYS if k in config}
    params = tracking.RunLogger(tracking_uri, run_id).data().params
    if "data" not in params:
        raise ConfigError(f"run {run_id} has neither config.yaml nor a 'data' param: "
                          "cannot tell which data it was trained on (use --data)")
    return {k: params[k] if k == "data" else int(params[k]) for k in SPLIT_KEYS if k in params}


def held_out(split: dict):
    """The test-fold `Pairs` of `split` (SPLIT_KEYS), as `jobs.train` split it."""
    from tnn.config import from_dict
    from tnn.data.sources import is_shard_uri
    from tnn.train.config import TrainJobConfig
    from tnn.train.plan import split_in_memory
    cfg = from_dict(TrainJobConfig, split)
    if is_shard_uri(cfg.data):
        return held_out_shards(cfg)
    return split_in_memory(cfg)[2]


def held_out_shards(cfg):
    """Test-fold rows of a shard set, read shard by shard (only that fold is kept in memory)."""
    from tnn.core.folds import split, validation_split
    from tnn.data import shards, storage
    from tnn.data.batches import table_to_numpy
    from tnn.data.pairs import make_pairs
    from tnn.data.reader import shard_index, shard_tables
    man, ids, labels, folds = shard_index(cfg.data)
    if cfg.subset and cfg.subset < len(ids):
        keep = validation_split(labels, cfg.subset / len(ids), cfg.seed)[1]
        ids, folds = ids[keep], folds[keep]
    wanted = set(ids[split(folds, cfg.test_fold)[1]])
    fs, root = storage.filesystem(cfg.data)
    parts = []
    for name, _ in man.shards:
        pf = shards.open_shard(fs, f"{root}/{name}", storage.join(cfg.data, name), whole=True)
        for table in shard_tables(pf, man, storage.join(cfg.data, name),
                                  ("clip_id", "label", "audio", "visual"),
                                  keep_folds=frozenset({cfg.test_fold})):
            rows = table_to_numpy(table)
            mask = np.isin(rows["clip_id"].astype(str), list(wanted))
            parts.append({k: v[mask] for k, v in rows.items()})
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return make_pairs(rows["audio"], rows["visual"], rows["label"], rows["clip_id"].astype(str),
                      man.class_names, name=cfg.data)


def scores(encoders, test) -> dict:
    """`cross_modal_scores` of the pyfunc model's embeddings of `test`, plus the mean MAP."""
    from tnn.core.metrics import cross_modal_scores
    s = cross_modal_scores(encoders.audio.predict(test.audio),
                           encoders.visual.predict(test.visual), test.labels)
    return {**s, "map": 0.5 * (s["a2v_map"] + s["v2a_map"])}


def log_evaluation(uri: str, experiment: str, encoders, split: dict, s: dict, n: int) -> str:
    """One run of `experiment`: metrics, tags linking model and source run, the PR curve."""
    info = encoders.info
    tags = {"job": JOB, "model_uri": info["model_uri"], "source_run_id": info["run_id"],
            "data": split["data"], "test_fold": split.get("test_fold", 0), "clips": n}
    if info["version"]:
        tags.update(model_name=info["name"], model_version=info["version"],
                    **({"model_alias": info["alias"]} if info["alias"] else {}))
    logger, _ = tracking.open_run(uri, experiment, f"eval-{info['run_id'][:8]}", tags=tags,
                                  data=split["data"], data_context="evaluation")
    logger.params({f"split.{k}": v for k, v in split.items()})
    logger.metrics({k.replace("@", "_at_"): v for k, v in s.items() if np.isscalar(v)})
    curve = {"recall": s["pr_recall"].tolist(), "a2v": s["a2v_pr"].tolist(),
             "v2a": s["v2a_pr"].tolist()}
    logger.client.log_dict(logger.run_id, curve, "pr_curve.json")
    with tempfile.TemporaryDirectory() as tmp:
        logger.artifact(plot_pr(curve, Path(tmp) / "pr_curve.png"), "plots")
    if info["version"]:
        registry.tag_version(info["name"], info["version"], {"evaluation_run": logger.run_id},
                             tracking_uri=uri)
    logger.finish()
    return logger.run_id


def plot_pr(curve: dict, path: Path) -> Path:
    """Interpolated precision against recall, both directions, one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for key, label in (("a2v", "audio -> visual"), ("v2a", "visual -> audio")):
        ax.plot(curve["recall"], curve[key], marker=".", label=label)
    ax.set(xlabel="recall", ylabel="interpolated precision", ylim=(0, 1.02))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate(model_uri: str, *, split: dict | None = None, data: str | None = None,
             fold: int | None = None, tracking_uri: str | None = None,
             experiment: str = EXPERIMENT, limit: int = 0, log=print) -> dict:
    """Load, split, embed, score, log. `split`: SPLIT_KEYS to use instead of the model run's
    (`tnn.tracking.promotion` scores champion and challenger on one split). Returns
    {"scores", "info", "split", "clips", "run_id"}."""
    uri = tracking.resolve(tracking_uri, tracking.DEFAULT_LOCAL_DIR)[0]
    encoders = registry.load_encoders(model_uri, tracking_uri=uri)
    split = dict(split or split_of(encoders.info["run_id"], uri))
    split.update({k: v for k, v in (("data", data), ("test_fold", fold)) if v is not None})
    test = held_out(split)
    if limit and limit < test.n:
        from tnn.core.folds import validation_split
        test = test.subset(validation_split(test.labels, limit / test.n, 0)[1])
    log(f"{JOB}: {model_uri} (run {encoders.info['run_id']}) on {split['data']} fold "
        f"{split.get('test_fold', 0)}: {test.n} clips")
    s = scores(encoders, test)
    run_id = log_evaluation(uri, experiment, encoders, split, s, test.n)
    return {"scores": s, "info": encoders.info, "split": split, "clips": test.n, "run_id": run_id}

