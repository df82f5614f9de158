"""`jobs.crossval` as an MLflow run: the protocol settings, each method's scores, the report.

One run of experiment `tnn-crossval` (`CrossvalConfig.mlflow`) per cross-validation, opened by
`open_run` (source tags, the data set as its input) after the folds are done: params are the
protocol settings (data, methods, folds, seed, every `settings.*`), metrics each method's mean
and standard deviation over folds of every score the protocol reports
(`tnn-e2e.a2v_map_mean`, `c-cca.mrr1_v2a_std`, `cca.map_mean` for the mean of both
directions; `@` in `a2v_p@10` becomes `_at_`, MLflow's key rules), artifacts the results JSON
(`crossval.json`, DESIGN.md's contract) and `tnn.methods.report`'s results.md and plots
(`report/`).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from tnn.config import to_dict
from tnn.methods import report
from tnn.tracking import runs as tracking

JOB = "crossval"


def metric_key(method: str, score: str, stat: str) -> str:
    """`tnn-e2e`, `a2v_p@10`, `mean` -> `tnn-e2e.a2v_p_at_10_mean` (MLflow: alphanumerics,
    `_ - . space /` only)."""
    key = f"{method}.{score.replace('@', '_at_')}_{stat}"
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)


def metrics_of(results: dict) -> dict[str, float]:
    """Each method's mean and std over folds of every per-fold score (`fold_scores`), plus
    `map` (the mean of both directions' MAP per fold)."""
    out = {}
    for method, r in results.items():
        folds = dict(r.get("fold_scores") or {"a2v_map": r["a2v_map_folds"],
                                               "v2a_map": r["v2a_map_folds"]})
        if "a2v_map" in folds and "v2a_map" in folds:
            folds["map"] = [(a + v) / 2 for a, v in zip(folds["a2v_map"], folds["v2a_map"])]
        for score, values in folds.items():
            out[metric_key(method, score, "mean")] = float(np.mean(values))
            out[metric_key(method, score, "std")] = float(np.std(values))
    return out


def params_of(cfg) -> dict[str, str]:
    """The protocol settings as params (the MLflow section and the output path left out)."""
    config = {k: v for k, v in to_dict(cfg).items() if k not in ("mlflow", "json")}
    return tracking.params_of(config)


def log_run(cfg, pairs, results: dict, result_json: dict) -> tuple[str, str]:
    """Log one cross-validation (module doc); returns (tracking URI, run id)."""
    uri, artifacts = tracking.resolve(cfg.mlflow.tracking_uri, cfg.mlflow.local_dir)
    with tracking.mlflow_errors():
        logger, _ = tracking.open_run(uri, cfg.mlflow.experiment,
                                      time.strftime("crossval-%Y%m%d-%H%M%S"),
                                      artifact_location=artifacts, tags={"job": JOB},
                                      data=cfg.data, pairs=pairs)
        try:
            logger.params(params_of(cfg))
            logger.metrics(metrics_of(results))
            logger.config(to_dict(cfg))
            with tempfile.TemporaryDirectory(prefix="tnn-crossval-") as tmp:
                path = Path(tmp) / "crossval.json"
                path.write_text(json.dumps(result_json, indent=1))
                logger.artifact(path)
                out = Path(tmp) / "report"
                report.write_report([{**result_json, "source": "crossval.json"}], out)
                for file in sorted(out.iterdir()):
                    logger.artifact(file, "report")
        except BaseException:
            logger.finish("FAILED")
            raise
        logger.finish("FINISHED")
    return uri, logger.run_id
