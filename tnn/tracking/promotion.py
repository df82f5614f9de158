"""Promote the best run of an experiment to `champion` if it beats the current one on held-out data.

1. `best_run`: the best FINISHED run of the experiment by a metric (default final_val_map,
   higher is better; tuning trials are child runs in the same experiment and count; runs
   without logged encoders, e.g. a search's parent, are skipped).
2. `challenger_version`: its model is registered as a new version of NAME (unless that run
   already holds the challenger or champion version) and gets the alias `challenger`.
3. `tnn.tracking.evaluation.evaluate` scores the challenger and the current `champion` on the
   same held-out data (the challenger's run's test fold), each as a tnn-evaluate run.
4. `champion` moves to the challenger's version (one alias of one model: both modalities
   move together) only if its mean MAP beats the champion's by more than `min_improvement`
   (`decide`), or there is no champion. Aliases only, never stages.
`promote` runs the four steps; `jobs.promote` is its command line.
"""

from __future__ import annotations

import dataclasses

from tnn.errors import ConfigError
from tnn.tracking import evaluation, registry
from tnn.tracking import runs as tracking


@dataclasses.dataclass(frozen=True)
class PromoteConfig:
    experiment: str
    """Where to look for the best run (child runs of tuning parents included)."""
    model_name: str = "tnn"
    """The registered model (both modalities: one two-branch pyfunc)."""
    metric: str = "final_val_map"
    """Run metric that picks the best run (higher is better)."""
    min_improvement: float = 0.0
    """The challenger's held-out mean MAP must exceed the champion's by more than this."""
    tracking_uri: str | None = None
    limit: int = 0
    """Held-out clips scored (0 = all; --smoke: 200)."""


def best_run(uri: str, experiment: str, metric: str):
    """The FINISHED run with the highest `metric` that has logged encoders."""
    client = tracking.client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"MLflow experiment {experiment!r} not found at {uri}")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=[f"metrics.`{metric}` DESC"], max_results=1000)
    for run in (r for r in runs if metric in r.data.metrics):
        try:
            registry.logged_model(run.info.run_id, tracking_uri=uri)
            return run
        except ConfigError:
            continue  # e.g. a search's parent run: it only summarises its trials
    raise ConfigError(f"experiment {experiment!r} has no FINISHED run with metric {metric!r} "
                      "and logged encoders")


def challenger_version(cfg: PromoteConfig, uri: str, run_id: str) -> str:
    """The challenger version for `run_id`: the version of that run an alias already holds,
    else a newly registered one; `challenger` then points at it."""
    client = tracking.client(uri)
    for alias in ("challenger", "champion"):
        version = registry.get_alias(cfg.model_name, alias, tracking_uri=uri)
        if version and client.get_model_version(cfg.model_name, version).run_id == run_id:
            break
    else:
        version = registry.register_model(run_id, cfg.model_name, tracking_uri=uri)
    registry.set_alias(cfg.model_name, "challenger", version, tracking_uri=uri)
    return version


def decide(new: float, old: float | None, margin: float) -> tuple[bool, str]:
    """(promote?, why): a champion is replaced only by a gain of more than `margin`."""
    if old is None:
        return True, "there was no champion"
    gain = new - old
    verdict = "more" if gain > margin else "not more"
    return gain > margin, f"{gain:+.4f} is {verdict} than the required +{margin:.4f}"


def promote(cfg: PromoteConfig, log=print) -> dict:
    """The four steps (module doc); returns {"promoted", "reason", "run_id", "challenger",
    "champion_before", "challenger_map", "champion_map", "evaluation_runs"}."""
    uri = tracking.resolve(cfg.tracking_uri, tracking.DEFAULT_LOCAL_DIR)[0]
    run = best_run(uri, cfg.experiment, cfg.metric)
    log(f"promote: best run {run.info.run_id} ({run.info.run_name}): {cfg.metric} "
        f"{run.data.metrics[cfg.metric]:.4f}")
    champion = registry.get_alias(cfg.model_name, "champion", tracking_uri=uri)
    new_version = challenger_version(cfg, uri, run.info.run_id)
    kw = dict(tracking_uri=uri, limit=cfg.limit, log=log)
    new = evaluation.evaluate(f"models:/{cfg.model_name}@challenger", **kw)
    old = None if champion is None else evaluation.evaluate(
        f"models:/{cfg.model_name}@champion", split=new["split"], **kw)
    if champion == new_version:
        promoted, why = False, "the best run already is the champion"
    else:
        promoted, why = decide(new["scores"]["map"], old and old["scores"]["map"],
                               cfg.min_improvement)
    if promoted:
        registry.set_alias(cfg.model_name, "champion", new_version, tracking_uri=uri)
    return {"promoted": promoted, "reason": why, "run_id": run.info.run_id,
            "challenger": new_version, "champion_before": champion,
            "challenger_map": new["scores"]["map"], "champion_map": old and old["scores"]["map"],
            "evaluation_runs": [e["run_id"] for e in (new, old) if e]}
