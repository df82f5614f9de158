"""Ray Tune over the TNN pipelines: the trial trainable, the search, its results.

The `ray.tune` user (its one private attribute through `tnn.ray.compat`); spaces, checks and
resources are in `tnn.ray.tune_space`, the search with its parent MLflow run in
`tnn.ray.tune_search`. Each trial (`run_trial`, a function trainable) builds its
TrainJobConfig from the sampled dotted keys and runs `tnn.ray.prepare.prepare` +
`tnn.ray.train_loop.fit`; rank 0's per-epoch reports reach Tune through `TuneReportCallback`,
so ASHA stops poor trials between epochs. Trials never see the MLflow tracking URI (the
shared config is `shipped` with it redacted): the search's driver keeps the child runs
(`tnn.ray.trial_runs.TrialRuns`, a Tune callback) from the trials' results: it opens one per
trial (tag mlflow.parentRunId), logs each epoch result there, prints one line per result,
and logs a finished trial's checkpoint (`tnn.tracking.registry.log_checkpoint`: plots,
encoder files, the pyfunc model) before closing its run. A trial the scheduler stops is
killed with its run still RUNNING: `tnn.ray.tune_search.close_children` marks those KILLED
after the search.

Why the final report bypasses the callback: Tune stops a trial whose result says `done` (the
train loop's final report does) or reaches ASHA's `max_t`. So Tune sees only epoch reports
(iterations 1..epochs, all below `max_t` >= epochs + 1) from the Train run; the trial then
reports its final scores (the selected encoder's, with `train_done` = 1 and the path of its
checkpoint) itself.

Placement groups: when ASHA stops a trial, its Train controller dies with it and the workers'
placement group (scoped to the job, not the controller) is freed only by Ray Train's
`PlacementGroupCleaner`, which asks the State API whether the controller is alive. That actor
finds the cluster like `ray.init(address=None)` does: $RAY_ADDRESS, else the last `ray start`
address in /tmp/ray/ray_current_cluster, else the one GCS process on the host. A local
`ray.init(address="local")` writes no such file, so a stale file (an earlier `ray start`) or a
second Ray on the host makes every cleaner time out and each stopped trial leaks its workers'
CPUs until the search deadlocks. `search` therefore gives every trial actor (and, by runtime-env
inheritance, its controller and cleaner) RAY_ADDRESS = this cluster's GCS address (`trial_env`);
`wait_released` checks that no placement group is left after a search.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager

from tnn.config import merge
from tnn.errors import redact
from tnn.ray.session import verbose
from tnn.ray.tune_space import SCORES, SearchSpace, trial_config


def param_space(space: SearchSpace) -> dict:
    """Tune's search space: {dotted key: grid_search | choice | uniform | loguniform}."""
    from ray import tune
    make = {"grid": tune.grid_search, "choice": tune.choice,
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    return {p.key: make[p.kind](list(p.values)) for p in space.params}


def active_placement_groups() -> set[str]:
    """Ids of placement groups not yet removed (a leak check around a search)."""
    from ray.util import placement_group_table
    return {pid for pid, pg in placement_group_table().items() if pg["state"] != "REMOVED"}


def wait_released(before: set[str], timeout_s: float = 60) -> set[str]:
    """Placement groups created since `before` and still alive after up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := active_placement_groups() - before) and time.monotonic() < deadline:
        time.sleep(1)
    return left


def _report_callback():
    """`TuneReportCallback` for the epoch reports only (the final one: module doc)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReports(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if "done" not in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return EpochReports()


def run_trial(params: dict, job: dict) -> None:
    """The Tune function trainable: one TrainJobConfig, one Train run (`fit` without a
    channel: the search's driver logs this trial's results, `tnn.ray.trial_runs`). Its final
    report carries the selected encoder's checkpoint path (`train_checkpoint`)."""
    from ray import tune

    from tnn.ray.prepare import prepare
    from tnn.ray.train_loop import fit
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(job, params, run_name=f"trial-{trial_id}")
    result = fit(cfg, prepare(cfg, log=print), callbacks=[_report_callback()], watch=False)
    final = {k: v for k, v in result.metrics.items()
             if isinstance(v, (int, float)) and k != "done"}
    tune.report({**final, "train_done": 1, "train_checkpoint": result.checkpoint.path})


@contextmanager
def trial_env(values: dict[str, str]):
    """Environment variables for the trial actors' runtime env (Tune propagates the driver's
    values of the names in its class cache's list), set in the driver meanwhile; restored after.
    AWS credentials are taken off that list meanwhile: Ray logs every runtime env in plain text
    (runtime_env_agent.log) and shows it in the dashboard. Trial actors get credentials as any
    Ray worker does (a local Ray's from the driver's environment, a cluster's from its nodes)."""
    from tnn.ray.compat import tune_propagated_env
    names = tune_propagated_env()
    saved = {k: os.environ.get(k) for k in values}
    added = set(values) - names
    held = names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "AWS_SECURITY_TOKEN"}
    os.environ.update(values)
    names.update(added)
    names.difference_update(held)
    try:
        yield
    finally:
        names.difference_update(added)
        names.update(held)
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def tune_storage(path: str) -> tuple[str, object]:
    """(storage_path, storage_filesystem) for Tune's RunConfig: s3:// or an absolute path."""
    from tnn.data import storage
    if storage.is_s3(path):
        bucket, key = storage.split_s3(path)
        return f"{bucket}/{key}".rstrip("/"), storage.s3_filesystem(bucket=bucket)
    return os.path.abspath(os.path.expanduser(path)), None


def search(space: SearchSpace, job: dict, name: str, parent: dict | None,
           max_concurrent: int, driver: dict):
    """Run the search; returns Tune's ResultGrid. Trials' Train runs go to
    `<storage_path>/<name>/train/trial-<id>`, Tune's own files to `<storage_path>/<name>`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tnn.data import storage
    from tnn.ray.trial_runs import TrialRuns
    path, fs = tune_storage(job["storage_path"])
    job = merge(job, {"storage_path": storage.join(
        job["storage_path"] if storage.is_s3(job["storage_path"]) else path, f"{name}/train")})
    s, epochs = space.scheduler, job["tnn"]["train"]["epochs"]
    scheduler = FIFOScheduler() if s.name == "fifo" else ASHAScheduler(
        time_attr="training_iteration", max_t=s.max_t or epochs + 1,
        grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    trainable = tune.with_resources(tune.with_parameters(run_trial, job=shipped(job)), driver)
    tuner = tune.Tuner(
        trainable, param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, scheduler=scheduler,
            num_samples=space.budget.num_samples, max_concurrent_trials=max_concurrent,
            trial_name_creator=lambda t: f"trial-{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial-{t.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=path, storage_filesystem=fs,
                                  verbose=2 if verbose() else 0,
                                  callbacks=[TrialRuns(parent, shipped(job))]))
    import ray
    env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address,  # the cleaner (module doc)
           "RAY_CHDIR_TO_TRIAL_DIR": "0"}  # relative data paths resolve as in the driver
    with trial_env(env):
        return tuner.fit()


def shipped(job: dict) -> dict:
    """The trials' config as shipped to them: the MLflow tracking URI (if any) redacted."""
    uri = job.get("mlflow", {}).get("tracking_uri")
    return merge(job, {"mlflow": {"tracking_uri": redact(uri)}}) if uri else job


def summarise(grid, space: SearchSpace) -> list[dict]:
    """One row per trial of a ResultGrid: trial id, params, status (finished: its final,
    selected encoder; stopped by the scheduler: its best epoch; error), epochs, scores."""
    rows = []
    for r in grid:
        reports = [] if r.metrics_dataframe is None else r.metrics_dataframe.to_dict("records")
        epochs = [m for m in reports if not m.get("train_done") == 1]
        final = [m for m in reports if m.get("train_done") == 1]
        sign = 1 if space.mode == "max" else -1
        best = final[-1] if final else max(
            epochs, key=lambda m: sign * m.get(space.metric, -sign * math.inf), default={})
        rows.append({
            "trial_id": os.path.basename(str(r.path)).removeprefix("trial-"),
            "params": {p.key: r.config.get(p.key) for p in space.params},
            "status": "error" if r.error else "finished" if final else "stopped",
            "epochs": len(epochs), "best_epoch": _int(best.get("best_epoch", best.get("epoch"))),
            **{k: best[k] for k in SCORES if isinstance(best.get(k), (int, float))},
            **({"error": str(r.error).strip().splitlines()[-1][:300]} if r.error else {})})
    return rows


def _int(x) -> int | None:
    return int(x) if isinstance(x, (int, float)) and math.isfinite(x) else None
