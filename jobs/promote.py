"""Promote the best run of an experiment to `champion` if it beats the current one on held-out data.

    python -m jobs.promote --experiment tnn-train                  # model name tnn
    python -m jobs.promote --experiment tnn-tune --model-name mfeat --min-improvement 0.005
    python -m jobs.promote --experiment tnn-train --smoke           # 200 held-out clips

1. The best FINISHED run of the experiment by --metric (default final_val_map, higher is
   better; tuning trials are child runs in the same experiment and count; runs without logged
   encoders, e.g. a search's parent, are skipped).
2. Its encoders are registered as new versions of NAME-audio and NAME-visual (unless that run
   already holds the challenger or champion versions) and get the alias `challenger`.
3. `jobs.evaluate` scores the challenger and the current `champion` on the same held-out data
   (the challenger's run's test fold), each as a tnn-evaluate run.
4. `champion` moves to the challenger's versions, for both encoders together, only if its mean
   MAP beats the champion's by more than --min-improvement, or there is no champion.
   Aliases only, never stages; if moving the second alias fails the first is put back.

MLflow location: --tracking-uri, else MLFLOW_TRACKING_URI, else ./runs/mlflow. The last line
is `promote: promoted|kept ...` with both MAPs and the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import evaluate
from jobs.common import emit_error, print_config
from tnn.tracking import registry
from tnn.tracking import runs as tracking
from tnn.errors import ConfigError, TnnError

JOB = "promote"


@dataclasses.dataclass(frozen=True)
class PromoteConfig:
    experiment: str
    """Where to look for the best run (child runs of tuning parents included)."""
    model_name: str = "tnn"
    """Registered models <model_name>-audio and <model_name>-visual."""
    metric: str = "final_val_map"
    """Run metric that picks the best run (higher is better)."""
    min_improvement: float = 0.0
    """The challenger's held-out mean MAP must exceed the champion's by more than this."""
    tracking_uri: str | None = None
    limit: int = 0
    """Held-out clips scored (0 = all; --smoke: 200)."""


def parse_args(argv) -> PromoteConfig:
    ap = argparse.ArgumentParser(prog="python -m jobs.promote", description=__doc__.split("\n")[0])
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--model-name", default="tnn")
    ap.add_argument("--metric", default="final_val_map")
    ap.add_argument("--min-improvement", type=float, default=0.0)
    ap.add_argument("--tracking-uri", help="MLflow (default MLFLOW_TRACKING_URI or ./runs/mlflow)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"score {evaluate.SMOKE_CLIPS} held-out clips only")
    a = ap.parse_args(argv)
    return PromoteConfig(a.experiment, a.model_name, a.metric, a.min_improvement,
                         a.tracking_uri, evaluate.SMOKE_CLIPS if a.smoke else 0)


def best_run(uri: str, experiment: str, metric: str):
    """The FINISHED run with the highest `metric` that has logged encoders."""
    from mlflow import MlflowClient
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"MLflow experiment {experiment!r} not found at {uri}")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=[f"metrics.`{metric}` DESC"], max_results=1000)
    for run in (r for r in runs if metric in r.data.metrics):
        try:
            registry.logged_encoders(run.info.run_id, tracking_uri=uri)
            return run
        except ConfigError:
            continue  # e.g. a search's parent run: it only summarises its trials
    raise ConfigError(f"experiment {experiment!r} has no FINISHED run with metric {metric!r} "
                      "and logged encoders")


def challenger_versions(cfg: PromoteConfig, uri: str, run_id: str) -> dict[str, str]:
    """The challenger pair for `run_id`: existing versions of that run if an alias holds them,
    else newly registered ones; `challenger` then points at them."""
    from mlflow import MlflowClient
    client = MlflowClient(uri, registry_uri=uri)
    for alias in ("challenger", "champion"):
        versions = registry.get_alias(cfg.model_name, alias, tracking_uri=uri)
        if versions and client.get_model_version(registry.registered_name(
                cfg.model_name, "audio"), versions["audio"]).run_id == run_id:
            break
    else:
        versions = registry.register_encoders(run_id, cfg.model_name, tracking_uri=uri)
    registry.set_alias(cfg.model_name, "challenger", versions, tracking_uri=uri)
    return versions


def decide(new: float, old: float | None, margin: float) -> tuple[bool, str]:
    if old is None:
        return True, "there was no champion"
    gain = new - old
    verdict = "more" if gain > margin else "not more"
    return gain > margin, f"{gain:+.4f} is {verdict} than the required +{margin:.4f}"


def promote(cfg: PromoteConfig, log=print) -> dict:
    uri = tracking.resolve(cfg.tracking_uri, tracking.DEFAULT_LOCAL_DIR)[0]
    run = best_run(uri, cfg.experiment, cfg.metric)
    log(f"{JOB}: best run {run.info.run_id} ({run.info.run_name}): {cfg.metric} "
        f"{run.data.metrics[cfg.metric]:.4f}")
    champion = registry.get_alias(cfg.model_name, "champion", tracking_uri=uri)
    new_versions = challenger_versions(cfg, uri, run.info.run_id)
    kw = dict(tracking_uri=uri, limit=cfg.limit, log=log)
    new = evaluate.evaluate(f"models:/{cfg.model_name}@challenger", **kw)
    old = None if champion is None else evaluate.evaluate(
        f"models:/{cfg.model_name}@champion", split=new["split"], **kw)
    if champion == new_versions:
        promoted, why = False, "the best run already is the champion"
    else:
        promoted, why = decide(new["scores"]["map"], old and old["scores"]["map"],
                               cfg.min_improvement)
    if promoted:
        registry.set_alias(cfg.model_name, "champion", new_versions, tracking_uri=uri)
    return {"promoted": promoted, "reason": why, "run_id": run.info.run_id,
            "challenger": new_versions, "champion_before": champion,
            "challenger_map": new["scores"]["map"], "champion_map": old and old["scores"]["map"],
            "evaluation_runs": [e["run_id"] for e in (new, old) if e]}


def _versions(v: dict | None) -> str:
    return "-" if v is None else f"audio v{v['audio']}, visual v{v['visual']}"


def main(argv=None) -> int:
    from mlflow.exceptions import MlflowException
    try:
        cfg = parse_args(argv)
        print_config(JOB, cfg)
        out = promote(cfg)
    except TnnError as err:
        return emit_error(JOB, err)
    except MlflowException as err:
        return emit_error(JOB, ConfigError(f"MLflow: {err.message.splitlines()[0]}"))
    old = "none" if out["champion_map"] is None else f"{out['champion_map']:.4f}"
    head = "promoted: champion is now" if out["promoted"] else "kept: champion stays"
    pair = out["challenger"] if out["promoted"] else out["champion_before"]
    print(f"{JOB}: {head} {cfg.model_name} ({_versions(pair)}); held-out mean MAP challenger "
          f"{out['challenger_map']:.4f} (run {out['run_id']}) vs champion {old}: {out['reason']}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
