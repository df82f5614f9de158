"""The child MLflow runs of a Tune search, kept by the search's driver (a `tune.Callback`).

Trials never see the MLflow tracking URI (it may carry `user:password@`): `TrialRuns` runs in
the driver's Tune loop. When a trial starts it opens the trial's child run (tags
mlflow.parentRunId, tune.trial_id, job; the trial's TrainJobConfig, with the child's run id,
as params and config); each epoch result (rank 0's metrics through `TuneReportCallback`) is
logged at step = epoch and printed as one line (`tnn.ray.progress.EpochClock`, the trial's
name first); the trial's final result (`train_done` = 1, `tnn.ray.tune.run_trial`) gives the
`final_*` metrics and the selected encoder's checkpoint, read from the trial's Train storage
and logged as its model (`tnn.tracking.registry.log_checkpoint`), and the run ends FINISHED.
An erroring trial's run ends FAILED; one the scheduler stops stays RUNNING until
`tnn.ray.tune_search.close_children` marks it KILLED. Tune pickles its run config (callbacks
included) into tuner.pkl in the search's storage: a pickled `TrialRuns` holds neither the URI
nor its loggers.
"""

from __future__ import annotations

import dataclasses
import os

from ray import tune

from tnn.config import to_dict
from tnn.ray.progress import EpochClock
from tnn.ray.tune_space import trial_config
from tnn.tracking import registry
from tnn.tracking import runs as tracking

SKIP = {"done", "train_done", "trial_id", "experiment_id", "experiment_tag",
        "training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore",
        "timesteps_since_restore", "iterations_since_restore", "timestamp", "pid",
        "episodes_total", "timesteps_total"}
"""Result keys that are Tune's own, not rank 0's metrics."""


@dataclasses.dataclass
class _Trial:
    logger: object  # tracking.RunLogger, or None without a parent run
    clock: EpochClock
    cfg: object  # the trial's TrainJobConfig


def metrics_of(result: dict) -> dict:
    """Rank 0's numeric metrics in a Tune result (Tune's own keys left out)."""
    return {k: v for k, v in result.items() if k not in SKIP and not isinstance(v, bool)
            and isinstance(v, (int, float))}


class TrialRuns(tune.Callback):
    """`parent`: {tracking_uri, experiment, run_id} of the search's run, or None (lines only);
    `job`: the trials' shared config dict; `log`: where the lines go."""

    def __init__(self, parent: dict | None, job: dict, log=print) -> None:
        self.parent, self.job, self.log = parent, job, log
        self.trials: dict[str, _Trial] = {}

    def __getstate__(self) -> dict:
        return {"parent": None, "job": self.job, "log": None, "trials": {}}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        name = f"trial-{trial.trial_id}"
        cfg, logger = trial_config(self.job, trial.config, run_name=name), None
        if self.parent:
            p = self.parent
            logger, _ = tracking.open_run(p["tracking_uri"], p["experiment"], name, tags={
                "mlflow.parentRunId": p["run_id"], "tune.trial_id": trial.trial_id,
                "job": "tune"}, data=self.job["data"])
            cfg = trial_config(to_dict(cfg), {}, mlflow={
                "run_id": logger.run_id, "tracking_uri": p["tracking_uri"],
                "experiment": p["experiment"]})
            logger.params(tracking.params_of(to_dict(cfg)))
            logger.config(to_dict(cfg))
        epochs = cfg.tnn_label.epochs if cfg.method == "tnn-label" else cfg.tnn.train.epochs
        self.trials[trial.trial_id] = _Trial(logger, EpochClock(epochs, f"tune: {name}  "), cfg)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        t = self.trials.get(trial.trial_id)
        metrics = metrics_of(result)
        if t is None or "epoch" not in metrics:
            return
        if result.get("train_done") != 1:
            if t.logger:
                t.logger.metrics(metrics, step=int(metrics["epoch"]))
            self.log(t.clock.line(metrics), flush=True)
            return
        self.log(f"{t.clock.prefix}finished: val MAP {metrics.get('val_map', float('nan')):.4f} "
                 f"(best epoch {metrics.get('best_epoch', '-')})", flush=True)
        if t.logger:
            t.logger.metrics({f"final_{k}": v for k, v in metrics.items()},
                             step=int(metrics["epoch"]))
            with _checkpoint(t.cfg, result["train_checkpoint"]).as_directory() as d:
                registry.log_checkpoint(t.logger, d)
            t.logger.finish("FINISHED")
            t.logger = None

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        t = self.trials.get(trial.trial_id)
        if t is not None and t.logger:
            t.logger.finish("FAILED")
            t.logger = None


def _checkpoint(cfg, path: str):
    """The trial's Train checkpoint at `path` (as `ray.train.Result.checkpoint.path` gave it)
    on the trial's storage (local or s3://)."""
    from ray.train import Checkpoint

    from tnn.train.checkpoints import storage_of
    _, fs = storage_of(cfg.storage_path)
    return Checkpoint(path if fs is not None else os.path.abspath(path), filesystem=fs)
