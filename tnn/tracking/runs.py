"""MLflow runs for training jobs (`mlflow` is imported only under tnn/tracking/).

One `RunLogger` per process talks to one run through `mlflow.MlflowClient` (no fluent API, so
no process-wide active run that a worker could leave RUNNING). The driver opens the run
(`open_run`), logs the flattened resolved config as params and the config itself as an
artifact; rank 0 of the Ray Train workers logs per-epoch metrics into the same run by id; the
driver logs final metrics and plots and closes it. The run id travels in the job config and in
the run's storage folder, so a restarted or resumed job appends to the same run. Params,
tags, the config artifact and error lines pass through `tnn.errors.redact`: a tracking URI
with `user:password@` is stored and shown as `***@`.

Where runs go (`resolve`): an explicit `tracking_uri`, else `$MLFLOW_TRACKING_URI`, else the
embedded default `sqlite:///<local_dir>/mlflow.db` with artifacts in `<local_dir>/mlartifacts`
(an explicit artifact location: MLflow would otherwise use `./mlruns` of whatever directory
the process runs in). `import mlflow` takes 1-2.5 s, so it happens inside the functions.
The encoders as MLflow models and the registry: `tnn.tracking.registry` (which imports this
module, never the other way round).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

from tnn.config import flatten
from tnn.errors import ConfigError, redact, redacted

MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
MAX_PARAM_CHARS = 6000


def resolve(tracking_uri: str | None, local_dir: str | os.PathLike) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None to let the server decide).
    A SQLite store keeps its artifacts in `mlartifacts/` beside the database file."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
        return uri, (db.parent / "mlartifacts").as_uri()
    if uri:
        return uri, None
    root = Path(local_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


def params_of(config: dict) -> dict[str, str]:
    """Flattened config as MLflow params: `a.b.c -> str(value)`, None as "None"; credentials
    in URIs redacted (`tnn.errors.redact`)."""
    return {key: redact(str(value))[:MAX_PARAM_CHARS] for key, value in flatten(config).items()}


class RunLogger:
    """Logs into one existing run; cheap to build on any process that can reach the store."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow import MlflowClient
        self.client, self.run_id = MlflowClient(tracking_uri), run_id
        self.tracking_uri = tracking_uri

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        items = [Param(k, redact(str(v))[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_PARAMS_PER_CALL])

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Finite numeric values only (None, strings and NaN are skipped)."""
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def config(self, config: dict, name: str = "config.yaml") -> None:
        """The resolved config as an artifact (YAML), credentials in URIs redacted."""
        self.client.log_dict(self.run_id, redacted(config), name)

    def artifact(self, path: str | os.PathLike, folder: str | None = None) -> None:
        """Log a file; a text file (JSON, YAML, Markdown, CSV, text) that holds a URI with
        credentials is logged as a redacted copy of the same name."""
        path = Path(path)
        text = _text(path) if path.suffix in TEXT_ARTIFACTS else None
        if text is None or redact(text) == text:
            self.client.log_artifact(self.run_id, str(path), folder)
            return
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / path.name).write_text(redact(text))
            self.client.log_artifact(self.run_id, str(Path(tmp) / path.name), folder)

    def tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, redact(str(value)))

    def finish(self, status: str = "FINISHED") -> None:
        """FINISHED, FAILED or KILLED; a later `open_run` with this id reopens it. MLflow's
        "View run at <tracking URI>" line is printed with the URI's credentials redacted."""
        with redacted_stdout():
            self.client.set_terminated(self.run_id, status)

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of one metric, in step order (tests, reports)."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(self.run_id, key))

    def data(self):
        """The run's `RunData` (params, latest metrics, tags)."""
        return self.client.get_run(self.run_id).data


TEXT_ARTIFACTS = (".json", ".yaml", ".yml", ".md", ".csv", ".txt")


def _text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (UnicodeDecodeError, OSError):
        return None


def open_run(tracking_uri: str, experiment: str, run_name: str, *, run_id: str | None = None,
             artifact_location: str | None = None, tags: dict[str, str] | None = None,
             data: str | None = None, pairs=None,
             data_context: str = "training") -> tuple[RunLogger, bool]:
    """Reopen run `run_id` (status back to RUNNING) or create one; returns (logger, created).

    A `run_id` that the store does not know (e.g. a new tracking URI) starts a new run. A new
    experiment of a SQLite store without `artifact_location` gets `resolve`'s (never ./mlruns).
    A new run gets MLflow's source tags (`tnn.tracking.lineage.source_tags`; the job from
    `tags["job"]`) under `tags`, and data set `data` (a URI; its `pairs` if loaded already)
    as its input (`data_context`: training, evaluation), digested before the run is created
    (an unreadable data set creates none).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tnn.tracking import lineage
    client = MlflowClient(tracking_uri)
    if run_id:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return RunLogger(tracking_uri, run_id), False
        except MlflowException:
            pass
    inputs = [lineage.dataset_input(data, pairs, data_context)] if data else []
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=artifact_location or resolve(tracking_uri, ".")[1])
    tags = {**lineage.source_tags((tags or {}).get("job")), **(tags or {})}
    run = client.create_run(exp_id, run_name=run_name,
                            tags={k: redact(str(v)) for k, v in tags.items()})
    if inputs:
        client.log_inputs(run.info.run_id, datasets=inputs)
    return RunLogger(tracking_uri, run.info.run_id), True


@contextmanager
def redacted_stdout():
    """What the block prints to stdout (MLflow prints run URLs, user:password included),
    printed after it with credentials in URIs redacted."""
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            yield
    finally:
        sys.stdout.write(redact(buf.getvalue()))
        sys.stdout.flush()


# --- the embedded store, the global URIs, plots (the encoders as MLflow models: registry) ---

DEFAULT_LOCAL_DIR = "./runs/mlflow"  # MLflowConfig.local_dir: the embedded store of the jobs


@contextmanager
def using(tracking_uri: str):
    """MLflow's process-wide tracking and registry URIs (and their environment variables) set
    to `tracking_uri` for the block, then restored: for MLflow calls that read only the global
    (`Model.log`); everything else here passes the URI to an `MlflowClient`.

    Public API only: `mlflow.set_tracking_uri` / `set_registry_uri` mirror a set URI into
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, so the saved variables hold what was in force;
    afterwards the globals are unset (None) and the variables put back, and MLflow resolves
    the same URIs as before the block."""
    import mlflow
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def ui_command(tracking_uri: str) -> str:
    """What opens the runs of `tracking_uri`: a remote http(s) server's URL, else the
    `mlflow ui --backend-store-uri URI` command (credentials redacted; the jobs print it)."""
    import shlex
    uri = redact(tracking_uri)
    if uri.startswith(("http://", "https://")):
        return uri
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"


@contextmanager
def mlflow_errors():
    """An `MlflowException` in the block becomes a `ConfigError` naming its first line (what a
    job prints as its one error line: a missing experiment, model or alias)."""
    from mlflow.exceptions import MlflowException
    try:
        yield
    except MlflowException as err:
        raise ConfigError(f"MLflow: {redact(err.message.splitlines()[0])}") from None


def plot_history(history: list[dict], path: Path) -> Path:
    """Loss terms and validation / test MAP per epoch, one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in ("total", "triplet", "cca"):
        ax1.plot(epochs, [h.get(key, float("nan")) for h in history], label=key)
    for key in ("val_map", "test_map"):
        if any(key in h for h in history):
            ax2.plot(epochs, [h.get(key, float("nan")) for h in history], label=key)
    for ax, title in ((ax1, "loss terms"), (ax2, "MAP (mean of a->v, v->a)")):
        ax.set_xlabel("epoch"), ax.set_title(title), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def client(tracking_uri: str | None):
    """An MlflowClient on `tracking_uri` (None: `resolve`'s default) for runs and registry."""
    from mlflow import MlflowClient
    uri = resolve(tracking_uri, DEFAULT_LOCAL_DIR)[0]
    return MlflowClient(uri, registry_uri=uri)


def run_config(run_id: str, *, tracking_uri: str | None = None,
               name: str = "config.yaml") -> dict | None:
    """The resolved config a job logged with its run (`RunLogger.config`), None if absent."""
    import yaml
    from mlflow.exceptions import MlflowException
    mlflow_client = client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow_client.download_artifacts(run_id, name, tmp)
        except (MlflowException, OSError):
            return None
        return yaml.safe_load(Path(path).read_text())


# --- tuning ---

def child_runs(parent: RunLogger) -> list:
    """The runs tagged `mlflow.parentRunId` = the parent's id in its experiment (MLflow `Run`s:
    `.info.run_id`, `.info.status`, `.data.tags`), oldest first."""
    exp_id = parent.client.get_run(parent.run_id).info.experiment_id
    runs = parent.client.search_runs(
        [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
        max_results=10_000, order_by=["attributes.start_time ASC"])
    return list(runs)
