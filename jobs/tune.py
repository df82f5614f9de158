"""Search TNN settings with Ray Tune (ASHA on per-epoch validation MAP), tracked in MLflow.

    python -m jobs.tune --space tune_spaces/margin_cca.yaml --out docs/results/tune
    python -m jobs.tune --space tune_spaces/margin_cca.yaml --smoke   # 4 short trials, ~2 min
    python -m jobs.tune --space tune_spaces/e2e.yaml --trials 24 --experiment e2e-search \\
        --data s3://bucket/tnn/mfeat --set storage_path=s3://bucket/tnn/tune
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m jobs.tune --space tune_spaces/margin_cca.yaml --data s3://bucket/tnn/vegas \\
        --tracking-uri http://mlflow:5000 --set storage_path=s3://bucket/tnn/tune \\
        --set budget.use_gpu=true --set budget.cpus_per_worker=4

`--set` takes jobs.train's keys for what every trial shares (`--set tnn.train.epochs=10`,
the space's `base`; the old `base.tnn.train.epochs=10` still works and prints a deprecation
line) and the space's own keys (`budget.*`, `scheduler.*`, `metric`, `method`).
The space (`tnn.ray.tune_space.SearchSpace`) is checked against the data (class count, widths)
before Ray starts; the search is `tnn.ray.tune_search.run_search`. Locally Ray gets a
`trial_slot` resource for the trial drivers; on a cluster without it each trial driver takes
a CPU (printed). MLflow (`--tracking-uri`, else $MLFLOW_TRACKING_URI, else SQLite under
./runs/mlflow): one parent run per search, one child run per trial (tag mlflow.parentRunId; params, per-epoch metrics, finished trials' models);
children of trials the scheduler stopped end KILLED (failed ones FAILED); the parent gets the
best trial's params, scores and run id (tag best_child_run_id) and the plots MAP against
margin and against CCA dimension, also written with tune.json and tune.md to --out. The line
before the last is the command that opens the runs (`mlflow ui --backend-store-uri ...`); the
last is `tune: best val_map 0.xxxx (test 0.xxxx) at tnn.train.margin=..., ... of N trials
(F finished, S stopped, E failed) in N s, parent run <id>`.
"""

from __future__ import annotations

import sys
import time

import yaml

from jobs.common import JobParser, at_least, emit_error
from tnn.errors import TnnError
from tnn.ray import tune_search
from tnn.ray import tune_space as ts
from tnn.ray.session import init_ray, shutdown
from tnn.ray.tune_report import counts
from tnn.tracking.runs import ui_command

JOB = "tune"


def parse_args(argv):
    ap = JobParser(prog="python -m jobs.tune", description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tune_spaces/margin_cca.yaml", help="search space YAML")
    ap.add_argument("--data", "--source", dest="data",
                    help="data source or shard URI (the trials' data)")
    ap.add_argument("--trials", type=at_least(1),
                    help="trials in all (a multiple of the grid's size)")
    ap.add_argument("--experiment", default="tnn-tune", help="MLflow experiment")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, "
                    "else sqlite under base.mlflow.local_dir)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override: a training key as for jobs.train (every trial's, e.g. "
                    "--set tnn.train.epochs=10) or a space key (--set budget.use_gpu=true)")
    ap.add_argument("--out", help="also write tune.json, tune.md and the plots here")
    ap.add_argument("--smoke", action="store_true", help="first two values of each grid/choice, "
                    "600 clips, 3 epochs, grace 1")
    return ap.parse_args(argv)


def build(args) -> tuple[ts.SearchSpace, dict]:
    """The space (--smoke, --trials, --data applied) and the checked shared trial config."""
    return tune_search.build_space(args.space, args.set, data=args.data, smoke_run=args.smoke,
                                   trials=args.trials)


def main(argv=None) -> int:
    start, started = time.perf_counter(), False
    try:
        args = parse_args(argv)
        args.set, notes = ts.space_overrides(args.set)
        for note in notes:
            print(note, flush=True)
        space, job = build(args)
        print(f"{JOB}: resolved space\n  " + yaml.safe_dump(
            ts.space_dict(space), sort_keys=False, default_flow_style=None).rstrip().replace(
            "\n", "\n  "), flush=True)
        name = time.strftime("tune-%Y%m%d-%H%M%S")
        started = init_ray(resources=tune_search.trial_slots(space))
        report, rows, best = tune_search.run_search(
            args.space, space, job, name, experiment=args.experiment,
            tracking_uri=args.tracking_uri, out=args.out)
    except TnnError as err:
        return emit_error(JOB, err)
    finally:
        shutdown(started)
    n = counts(rows)
    print(f"{JOB}: MLflow parent run {report['parent_run_id']} in experiment {args.experiment}; "
          f"open it with: {ui_command(report['tracking_uri'])}", flush=True)
    where = ", ".join(f"{k}={v}" for k, v in best["params"].items()) if best else "-"
    score = f"{best[space.metric]:.4f} (test {best.get('test_map', float('nan')):.4f})" \
        if best else "-"
    trials = f"{len(rows)} trial" + "s" * (len(rows) != 1)
    print(f"{JOB}: best {space.metric} {score} at {where} of {trials} "
          f"({n['finished']} finished, {n['stopped']} stopped, {n['error']} failed) in "
          f"{time.perf_counter() - start:.0f} s, parent run {report['parent_run_id']}",
          flush=True)
    return 0 if best else 1


if __name__ == "__main__":
    sys.exit(main())
