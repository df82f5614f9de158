"""Train a TNN pipeline on Ray Train, tracked in MLflow, and print the test-fold MAP.

    python -m jobs.train                      # bundled data, local Ray, local MLflow (./runs)
    python -m jobs.train --smoke              # 2 epochs on 600 clips: ~1 min on 2 cores
    python -m jobs.train --config jobs/configs/two_stage.yaml --set workers=1
    python -m jobs.train --data s3://bucket/tnn/mfeat --set storage_path=s3://bucket/tnn/runs \\
        --set run_name=mfeat-e2e             # the same run_name again resumes that run
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.train --config jobs/configs/two_stage.yaml \\
        --set storage_path=s3://bucket/tnn/runs --tracking-uri http://MLFLOW:5000

The default method is tnn-e2e (`tnn.methods`), the default data the bundled uci-mfeat with
fold 0 as the test fold; the config is printed resolved at start and saved with the MLflow
run (SQLite store under ./runs/mlflow unless --tracking-uri or MLFLOW_TRACKING_URI says
otherwise; source and git-commit tags, the data set as its input), with the history plot,
the encoder files and the two MLflow pyfunc encoders
(`audio`, `visual`: raw features -> unit embeddings; `tnn.tracking.registry.log_checkpoint`) that
`jobs.promote` registers and `jobs.evaluate` scores. On a cluster, storage_path and the
tracking URI must be reachable from every node (s3://, an MLflow server). The line before
the last is the command that opens the run (`mlflow ui --backend-store-uri ...`); the last is
`train: test fold 0 a->v MAP 0.xxxx v->a MAP 0.xxxx (mean 0.xxxx) in N s, run <mlflow run id>`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from jobs.common import JobParser, emit_error, print_config
from tnn.config import load, to_dict
from tnn.errors import TnnError, redact
from tnn.ray.session import init_ray, shutdown
from tnn.tracking import registry
from tnn.tracking import runs as tracking

JOB = "train"
CONFIGS = Path(__file__).with_name("configs")


def parse_args(argv):
    ap = JobParser(prog="python -m jobs.train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="YAML preset (holds only what it changes), e.g. "
                    "jobs/configs/two_stage.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override, e.g. --set tnn.train.epochs=20 --set workers=1")
    ap.add_argument("--data", "--source", dest="data",
                    help="data source or shard URI (default uci-mfeat)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (sets mlflow.tracking_uri; "
                    "else $MLFLOW_TRACKING_URI, else sqlite under ./runs/mlflow)")
    ap.add_argument("--experiment", help="MLflow experiment (sets mlflow.experiment, default "
                    "tnn-train; --set mlflow.enabled=false: no MLflow run)")
    ap.add_argument("--smoke", action="store_true", help="jobs/configs/smoke.yaml first")
    return ap.parse_args(argv)


def build_config(args):
    """Defaults <- smoke.yaml (--smoke) <- --config <- --data, --tracking-uri, --experiment
    <- --set; a run name if none."""
    from tnn.train.config import TrainJobConfig
    presets = ([CONFIGS / "smoke.yaml"] if args.smoke else []) + \
        ([args.config] if args.config else [])
    sets = [(key, value) for key, value in (  # option values are strings, not YAML
        ("data", args.data), ("mlflow.tracking_uri", args.tracking_uri),
        ("mlflow.experiment", args.experiment)) if value is not None] + list(args.set)
    cfg = load(TrainJobConfig, presets, sets, search=CONFIGS)  # `--config two_stage.yaml`
    if not cfg.run_name:
        cfg = dataclasses.replace(cfg, run_name=time.strftime("tnn-train-%Y%m%d-%H%M%S"))
    return cfg


def start_tracking(cfg):
    """Open (or reopen, for a resumed run name) the MLflow run; the config gets its id and URI."""
    from tnn.train.checkpoints import read_run_info, write_run_info
    if not cfg.mlflow.enabled:
        return cfg, None
    uri, artifacts = tracking.resolve(cfg.mlflow.tracking_uri, cfg.mlflow.local_dir)
    previous = read_run_info(cfg.storage_path, cfg.run_name) or {}
    run_id = cfg.mlflow.run_id or (previous.get("mlflow_run_id")
                                   if previous.get("tracking_uri") == redact(uri) else None)
    logger, created = tracking.open_run(uri, cfg.mlflow.experiment, cfg.run_name, run_id=run_id,
                                        artifact_location=artifacts, tags={"job": JOB},
                                        data=cfg.data)
    cfg = dataclasses.replace(cfg, mlflow=dataclasses.replace(
        cfg.mlflow, tracking_uri=uri, run_id=logger.run_id))
    if created:
        logger.params(tracking.params_of(to_dict(cfg)))
        logger.config(to_dict(cfg))
    write_run_info(cfg.storage_path, cfg.run_name, {"mlflow_run_id": logger.run_id,
                                                    "tracking_uri": uri})
    return cfg, logger


def main(argv=None) -> int:
    start, logger, started = time.perf_counter(), None, False
    try:
        cfg = build_config(parse_args(argv))
        cfg, logger = start_tracking(cfg)
        print_config(JOB, cfg)
        started = init_ray()
        from tnn.ray.prepare import prepare
        from tnn.ray.train_loop import fit
        result = fit(cfg, prepare(cfg))
        if logger:
            with result.checkpoint.as_directory() as d:
                registry.log_checkpoint(logger, d)
            logger.finish("FINISHED")
    except TnnError as err:
        if logger:
            logger.finish("FAILED")
        return emit_error(JOB, err)
    except Exception as err:
        if logger:
            logger.finish("FAILED")
        if type(err).__name__ not in ("TrainingFailedError", "WorkerGroupError", "ControllerError"):
            raise
        print(f"{JOB}: error: training failed after {cfg.max_failures} restart(s) allowed: "
              f"{str(err).strip().splitlines()[-1]}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutdown(started)
    m = result.metrics
    if cfg.mlflow.run_id:
        print(f"{JOB}: MLflow run {cfg.mlflow.run_id} in experiment {cfg.mlflow.experiment}; "
              f"open it with: {tracking.ui_command(cfg.mlflow.tracking_uri)}", flush=True)
    print(f"{JOB}: test fold {cfg.test_fold} a->v MAP {m['test_a2v_map']:.4f} v->a MAP "
          f"{m['test_v2a_map']:.4f} (mean {m['test_map']:.4f}) in "
          f"{time.perf_counter() - start:.0f} s, run {cfg.mlflow.run_id or '-'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
