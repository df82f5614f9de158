"""Promote the best run of an experiment to `champion` if it beats the current one on held-out data.

    python -m jobs.promote --experiment tnn-train                  # model name tnn
    python -m jobs.promote --experiment tnn-tune --model-name mfeat --min-improvement 0.005
    python -m jobs.promote --experiment tnn-train --smoke           # 200 held-out clips

The best FINISHED run of the experiment by --metric (default final_val_map) is registered as
a version of model NAME (both modalities: one pyfunc) at alias `challenger`, scored with the
current `champion` on the same held-out data, and made `champion` only if its mean MAP is
higher by more than --min-improvement (or there is no champion): `tnn.tracking.promotion`
(the steps in its docstring). Then `mlflow models serve -m models:/NAME@champion` or
`python -m jobs.serve` serves it.

MLflow location: --tracking-uri, else MLFLOW_TRACKING_URI, else ./runs/mlflow (the
evaluation runs go to experiment tnn-evaluate; --experiment names where the best run is
looked for). The line before the last is the command that opens the runs (`mlflow ui
--backend-store-uri ...`); the last is `promote: promoted|kept ...` with both MAPs and the
reason.
"""

from __future__ import annotations

import sys

from jobs.common import JobParser, emit_error, print_config
from tnn.errors import TnnError
from tnn.tracking.evaluation import EXPERIMENT, SMOKE_CLIPS
from tnn.tracking.promotion import PromoteConfig, promote
from tnn.tracking.runs import DEFAULT_LOCAL_DIR, mlflow_errors, resolve, ui_command

JOB = "promote"


def parse_args(argv) -> PromoteConfig:
    ap = JobParser(prog="python -m jobs.promote", description=__doc__.split("\n")[0])
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--model-name", default="tnn")
    ap.add_argument("--metric", default="final_val_map")
    ap.add_argument("--min-improvement", type=float, default=0.0)
    ap.add_argument("--tracking-uri", help="MLflow (default MLFLOW_TRACKING_URI or ./runs/mlflow)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"score {SMOKE_CLIPS} held-out clips only")
    a = ap.parse_args(argv)
    return PromoteConfig(a.experiment, a.model_name, a.metric, a.min_improvement,
                         a.tracking_uri, SMOKE_CLIPS if a.smoke else 0)


def _version(v: str | None) -> str:
    return "-" if v is None else f"version {v}"


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
        print_config(JOB, cfg)
        with mlflow_errors():
            out = promote(cfg)
    except TnnError as err:
        return emit_error(JOB, err)
    uri = resolve(cfg.tracking_uri, DEFAULT_LOCAL_DIR)[0]
    print(f"{JOB}: evaluation runs {', '.join(out['evaluation_runs'])} in experiment "
          f"{EXPERIMENT}; open them with: {ui_command(uri)}", flush=True)
    old = "none" if out["champion_map"] is None else f"{out['champion_map']:.4f}"
    head = "promoted: champion is now" if out["promoted"] else "kept: champion stays"
    version = out["challenger"] if out["promoted"] else out["champion_before"]
    print(f"{JOB}: {head} {cfg.model_name} ({_version(version)}); held-out mean MAP challenger "
          f"{out['challenger_map']:.4f} (run {out['run_id']}) vs champion {old}: {out['reason']}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
