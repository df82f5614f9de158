"""Score registered encoders on the held-out test fold of the data their run was trained on.

    python -m jobs.evaluate --model models:/tnn@champion     # the one model, both modalities
    python -m jobs.evaluate --run RUN_ID                     # the encoders logged with a run
    python -m jobs.evaluate --model models:/tnn@challenger --data s3://bucket/tnn/mfeat --fold 1
    python -m jobs.evaluate --run RUN_ID --smoke             # 200 held-out clips

The held-out part is the training run's test fold (its logged config.yaml: data, folds, seed,
subset, test_fold; `--data` / `--fold` override), split exactly as `jobs.train` split it, and
embedded by the MLflow pyfunc encoders (no tnn model code involved). MAP both directions,
MRR@1, precision@k and the PR curve are logged as a run of experiment tnn-evaluate, tagged
with the model name, alias, versions and the source run; the model versions get a tag naming
that run. MLflow location: --tracking-uri, else MLFLOW_TRACKING_URI, else ./runs/mlflow. The line
before the last is the command that opens the run (`mlflow ui --backend-store-uri ...`); the
last is `evaluate: <model> on <data> fold K (N clips): a->v MAP ... v->a MAP ... (mean
...) MRR@1 ... / ..., run <evaluation run id>`. The work is `tnn.tracking.evaluation.evaluate`.
"""

from __future__ import annotations

import sys
import time

from jobs.common import JobParser, emit_error, print_config
from tnn.errors import TnnError
from tnn.tracking import evaluation
from tnn.tracking.runs import DEFAULT_LOCAL_DIR, mlflow_errors, resolve, ui_command

JOB = "evaluate"


def parse_args(argv):
    ap = JobParser(prog="python -m jobs.evaluate", description=__doc__.split("\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="models:/NAME@ALIAS (or /VERSION) or runs:/RUN_ID")
    which.add_argument("--run", help="a training run id: the encoders logged with it")
    ap.add_argument("--data", "--source", dest="data",
                    help="data source or shard URI (default: the run's)")
    ap.add_argument("--fold", type=int, help="test fold (default: the run's test_fold)")
    ap.add_argument("--tracking-uri", help="MLflow (default MLFLOW_TRACKING_URI or ./runs/mlflow)")
    ap.add_argument("--experiment", default=evaluation.EXPERIMENT)
    ap.add_argument("--smoke", action="store_true",
                    help=f"{evaluation.SMOKE_CLIPS} held-out clips only")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    start = time.perf_counter()
    try:
        args = parse_args(argv)
        cfg = evaluation.EvaluateConfig(args.model or f"runs:/{args.run}", args.data, args.fold,
                                        args.tracking_uri, args.experiment,
                                        evaluation.SMOKE_CLIPS if args.smoke else 0)
        print_config(JOB, cfg)
        with mlflow_errors():
            out = evaluation.evaluate(cfg.model, data=cfg.data, fold=cfg.fold,
                                      tracking_uri=cfg.tracking_uri, experiment=cfg.experiment,
                                      limit=cfg.limit)
    except TnnError as err:
        return emit_error(JOB, err)
    s, split, model = out["scores"], out["split"], cfg.model
    uri = resolve(cfg.tracking_uri, DEFAULT_LOCAL_DIR)[0]
    print(f"{JOB}: MLflow run {out['run_id']} in experiment {cfg.experiment}; open it with: "
          f"{ui_command(uri)}", flush=True)
    print(f"{JOB}: {model} on {split['data']} fold {split.get('test_fold', 0)} ({out['clips']} "
          f"clips): a->v MAP {s['a2v_map']:.4f} v->a MAP {s['v2a_map']:.4f} (mean "
          f"{s['map']:.4f}) MRR@1 {s['mrr1_a2v']:.4f} / {s['mrr1_v2a']:.4f} in "
          f"{time.perf_counter() - start:.0f} s, run {out['run_id']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
