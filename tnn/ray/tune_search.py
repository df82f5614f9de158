"""A search as one call: the space resolved and checked, the parent MLflow run, the trials,
their child runs closed, the best trial on the parent, the results files.

`build_space` applies --smoke / --trials / --data to a space file and checks it against the
data (class count, widths) before Ray starts. `run_search` (on a connected Ray) opens the
search's parent run, runs `tnn.ray.tune.search`, checks that no placement group is left,
ends each child run as its trial did (`close_children`), logs the best trial's params,
scores and run id on the parent (`summarise`) and writes `tnn.ray.tune_report`'s files.
`jobs.tune` is the command line.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from tnn.config import merge
from tnn.errors import ConfigError
from tnn.ray import tune as tr
from tnn.ray import tune_space as ts
from tnn.ray.tune_report import best_row, counts, write_outputs
from tnn.tracking import runs as tracking


def smoke(space: ts.SearchSpace) -> ts.SearchSpace:
    """The first two values of each grid/choice, 600 clips, 3 epochs, grace 1."""
    params = tuple(dataclasses.replace(p, **{p.kind: p.values[:2]})
                   if p.kind in ("grid", "choice") else p for p in space.params)
    base = merge(space.base, {"subset": 600, "tnn": {"train": {"epochs": 3, "patience": 3}}})
    return dataclasses.replace(
        space, params=params, base=base,
        scheduler=dataclasses.replace(space.scheduler, max_t=0, grace_period=1,
                                      reduction_factor=2),
        budget=dataclasses.replace(space.budget, num_samples=1 if space.grid_size > 1 else 2))


def build_space(path: str, sets: list[str], *, data: str | None = None, smoke_run: bool = False,
                trials: int | None = None) -> tuple[ts.SearchSpace, dict]:
    """The space (`smoke_run`, `trials`, `data` applied) and the checked shared trial config."""
    space = ts.load_space(path, sets)
    if data:
        space = dataclasses.replace(space, base=merge(space.base, {"data": data}))
    space = smoke(space) if smoke_run else space
    space = ts.with_trials(space, trials) if trials else space
    try:
        job = ts.job_dict(space)
        ts.check(space, job, ts.data_shape(job["data"]))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return space, job


def trial_slots(space: ts.SearchSpace) -> dict[str, float]:
    """The `trial_slot` resources of a local Ray for this search's trial drivers."""
    return {"trial_slot": space.budget.max_concurrent_trials or os.cpu_count() or 1}


def open_parent(tracking_uri: str | None, experiment: str, space_path: str,
                space: ts.SearchSpace, job: dict, name: str):
    """The search's MLflow run: the space as params and config, plus a `parent` dict for trials."""
    uri, artifacts = tracking.resolve(tracking_uri, job["mlflow"]["local_dir"])
    if uri.startswith("sqlite:///") and artifacts is None:  # else ./mlruns of the cwd
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    logger, _ = tracking.open_run(uri, experiment, name, artifact_location=artifacts,
                                  tags={"job": "tune", "space": space_path}, data=job["data"])
    flat = {k: v for k, v in ts.space_dict(space).items() if k != "params"}
    logger.params({**tracking.params_of(flat), "trials": space.trials,
                   **{f"search.{p.key}": f"{p.kind} {list(p.values)}" for p in space.params}})
    logger.config({"space": ts.space_dict(space), "job": job}, "search.yaml")
    return logger, {"tracking_uri": uri, "experiment": experiment, "run_id": logger.run_id}


def close_children(parent, rows: list[dict]) -> None:
    """Each child run ends as its trial did (Tune knows; a stopped trial's run is RUNNING, or
    FAILED when the stop interrupted `fit`): finished FINISHED, stopped by the scheduler KILLED,
    error FAILED; run ids and statuses go into the rows."""
    by_trial = {r["trial_id"]: r for r in rows}
    end = {"finished": "FINISHED", "stopped": "KILLED", "error": "FAILED"}
    for run in tracking.child_runs(parent):
        row = by_trial.get(run.data.tags.get("tune.trial_id"), {"status": "error"})
        status = end[row["status"]] if run.info.status != "FINISHED" else "FINISHED"
        logger = tracking.RunLogger(parent.tracking_uri, run.info.run_id)
        logger.tags({"tune.status": row["status"]})
        if status != run.info.status:
            logger.finish(status)
        row.update(run_id=run.info.run_id, run_status=status)


def summarise(parent, rows, space, best, seconds: float, extra: dict) -> None:
    """The best trial on the parent run: params, scores, tags."""
    n = counts(rows)
    parent.metrics({"trials_finished": n["finished"], "trials_stopped": n["stopped"],
                    "trials_failed": n["error"], "search_s": seconds,
                    **({f"best_{k}": best[k] for k in ts.SCORES if k in best} if best else {})})
    if best:
        parent.params({f"best.{k}": v for k, v in best["params"].items()})
        parent.tags({"best_trial_id": best["trial_id"],
                     "best_child_run_id": best.get("run_id", "-")})
    parent.tags({k: str(v) for k, v in extra.items()})


def run_search(space_path: str, space: ts.SearchSpace, job: dict, name: str, *,
               experiment: str = "tnn-tune", tracking_uri: str | None = None,
               out: str | None = None, log=print) -> tuple[dict, list, dict | None]:
    """The parent run, the search, the leak check, the children closed, the summary and the
    files; returns (report, rows, best row). Needs a connected Ray (`tnn.ray.session`)."""
    import ray
    n, driver, note = ts.concurrency(space.budget, ray.cluster_resources())
    log(f"tune: {space.trials} trial(s), {note}", flush=True)
    parent, info = open_parent(tracking_uri, experiment, space_path, space, job, name)
    start, before = time.perf_counter(), tr.active_placement_groups()
    try:
        grid = tr.search(space, job, name, info, n, driver)
        seconds = time.perf_counter() - start
        left = tr.wait_released(before)
        rows = tr.summarise(grid, space)
        close_children(parent, rows)
        best = best_row(rows, space)
        report = {"space": space_path, "name": name, "data": job["data"],
                  "method": space.method, "metric": space.metric, "mode": space.mode,
                  "concurrency": n, "seconds": round(seconds, 1), "parent_run_id": parent.run_id,
                  "tracking_uri": info["tracking_uri"], "placement_groups_left": len(left),
                  "space_config": ts.space_dict(space), "best": best, "trials": rows}
        summarise(parent, rows, space, best, seconds, {"placement_groups_left": len(left)})
        write_outputs(report, rows, space, parent, out)
        parent.finish("FINISHED")
    except BaseException:
        parent.finish("FAILED")
        raise
    return report, rows, best
