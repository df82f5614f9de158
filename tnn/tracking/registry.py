"""A run's encoder as one two-branch pyfunc model and the model registry: MLflow for models.

`log_checkpoint` puts a training checkpoint into its run: the history plot, the encoder files
and, through `log_model`, the fitted `Encoder` as ONE pyfunc model (`tnn/tracking/pyfunc.py`
serving both `tnn.serve.export` programs; `params={"modality": "audio"|"visual"}` picks the
branch, "audio" by default). The registry holds it as one registered model (default `tnn`)
whose versions move between the aliases `challenger` and `champion` (never the deprecated
stages), so `mlflow.pyfunc.load_model("models:/tnn@champion")` and `mlflow models serve -m
models:/tnn@champion` work as MLflow users expect. `load_encoders("models:/NAME@ALIAS" |
"models:/NAME/VERSION" | "runs:/RUN_ID")` returns the model with a per-modality view of it.
Choosing and promoting a champion: `tnn.tracking.promotion`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tnn.errors import ConfigError
from tnn.tracking.model_check import check_model_dir
from tnn.tracking.runs import (DEFAULT_LOCAL_DIR, RunLogger, open_run, plot_history, resolve,
                               using)
from tnn.tracking.runs import client as _client

MODALITIES = ("audio", "visual")
DEFAULT_MODALITY = "audio"
LOGGED_NAME = "model"  # the logged model's name in its run (not "encoder": a folder of the run)
PYFUNC_FILE = Path(__file__).with_name("pyfunc.py")


def signature(meta: dict):
    """Tensors (N, D) -> (N, K) float32, widths per modality (so -1 here; the model's metadata
    `tnn` gives them), and the `modality` param."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec
    spec = Schema([TensorSpec(np.dtype(np.float32), (-1, -1))])
    return ModelSignature(spec, spec, ParamSchema([ParamSpec("modality", "string",
                                                             DEFAULT_MODALITY)]))


def log_model(logger: RunLogger, encoder) -> str:
    """A `tnn.core.encoder.Encoder` as one pyfunc model named `model` in the run (both
    branches exported by `tnn.serve.export`); returns its model URI (models:/m-...)."""
    import mlflow
    import torch
    from mlflow.models import Model

    from tnn.serve import export
    with tempfile.TemporaryDirectory() as tmp:
        meta = {m: export.export_branch(encoder, m, Path(tmp) / m) for m in MODALITIES}
        pins = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                f"mlflow=={mlflow.__version__}"]
        # created here so it lands in the run's experiment (Model.log would use the fluent one)
        model = logger.client.create_logged_model(
            logger.client.get_run(logger.run_id).info.experiment_id, name=LOGGED_NAME,
            source_run_id=logger.run_id)
        with using(logger.tracking_uri):
            info = Model.log(None, mlflow.pyfunc, name=LOGGED_NAME, run_id=logger.run_id,
                             model_id=model.model_id, python_model=str(PYFUNC_FILE),
                             artifacts={m: str(Path(tmp) / m) for m in MODALITIES},
                             signature=signature(meta),
                             input_example=(export.example_input(encoder, DEFAULT_MODALITY),
                                            {"modality": DEFAULT_MODALITY}),
                             pip_requirements=pins, metadata={"tnn": meta})
        logger.client.finalize_logged_model(model.model_id, "READY")
    return info.model_uri


def log_checkpoint(logger: RunLogger, checkpoint_dir: str | os.PathLike) -> str:
    """A `tnn.train.checkpoints` directory into the run: the history plot (plots/history.png),
    the encoder files (encoder/) and the pyfunc model; returns its model URI."""
    from tnn.train.checkpoints import load_encoder, load_state
    d = Path(checkpoint_dir)
    with tempfile.TemporaryDirectory() as tmp:
        logger.artifact(plot_history(load_state(d)["history"], Path(tmp) / "history.png"), "plots")
    for name in ("encoder.pt", "encoder.json", "config.json"):
        logger.artifact(d / name, "encoder")
    return log_model(logger, load_encoder(d))


def logged_model(run_id: str, *, tracking_uri: str | None = None):
    """The run's newest logged pyfunc model (`log_model`); ConfigError if it has none."""
    client = _client(tracking_uri)
    run = client.get_run(run_id)
    models = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{LOGGED_NAME}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}], max_results=1)
    if not models:
        raise ConfigError(f"run {run_id} has no logged encoder model "
                          "(registry.log_checkpoint logs it)")
    return models[0]


def register_model(run_id: str, name: str, *, tracking_uri: str | None = None) -> str:
    """A new version of registered model `name` from the run's model (the registered model
    is created on first use); returns the version."""
    from mlflow.exceptions import MlflowException
    client = _client(tracking_uri)
    model = logged_model(run_id, tracking_uri=tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    with using(client.tracking_uri):  # the SQL registry resolves models:/ globally
        mv = client.create_model_version(name, source=f"models:/{model.model_id}",
                                         run_id=run_id, model_id=model.model_id)
    return str(mv.version)


def get_alias(name: str, alias: str, *, tracking_uri: str | None = None) -> str | None:
    """The version `alias` points at, None if no version has it (or no such model)."""
    from mlflow.exceptions import MlflowException
    try:
        return str(_client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str, *, tracking_uri: str | None = None) -> None:
    """Point `alias` at `version` (one registry call: it moves or it does not)."""
    _client(tracking_uri).set_registered_model_alias(name, alias, str(version))


def tag_version(name: str, version: str, tags: dict[str, Any], *,
                tracking_uri: str | None = None) -> None:
    """Set `tags` on a model version."""
    client = _client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


class Branch:
    """One modality of a loaded pyfunc model: `predict(x)` = `model.predict(x, params=...)`."""

    def __init__(self, model, modality: str) -> None:
        self.model, self.modality = model, modality
        self.meta = (model.metadata.metadata or {}).get("tnn", {}).get(modality, {})

    @property
    def in_dim(self) -> int | None:
        return self.meta.get("in_dim")

    def predict(self, x) -> np.ndarray:
        return self.model.predict(np.asarray(x, np.float32), params={"modality": self.modality})


class Encoders(NamedTuple):
    """What `load_encoders` returns: the model's two branches, where it came from, the model."""

    audio: Branch
    visual: Branch
    info: dict  # {"model_uri", "name", "alias", "version", "versions": {"audio": v,
    #              "visual": v} | None (one version: both branches), "run_id", "model_id"}
    model: Any = None  # the pyfunc model (mlflow.pyfunc.PyFuncModel)


def resolve_uri(model_uri: str, uri: str) -> tuple[dict, str]:
    """(info without model_id, artifact location) of `models:/NAME@ALIAS`,
    `models:/NAME/VERSION` or `runs:/RUN_ID`."""
    from mlflow.exceptions import MlflowException
    client = _client(uri)
    info = {"model_uri": model_uri, "name": None, "alias": None, "version": None,
            "versions": None, "run_id": None}
    rest = model_uri[len("models:/"):] if model_uri.startswith("models:/") else ""
    if "@" in rest or rest.count("/") == 1:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            version = get_alias(name, alias, tracking_uri=uri)
            if version is None:
                raise ConfigError(f"{model_uri}: no model version has alias {alias!r}")
        else:
            (name, version), alias = rest.split("/"), None
        try:
            mv = client.get_model_version(name, version)
        except MlflowException:
            raise ConfigError(f"{model_uri}: model {name!r} has no version {version!r}") from None
        info.update(name=name, alias=alias, version=str(mv.version), run_id=mv.run_id,
                    versions={m: str(mv.version) for m in MODALITIES})
        return info, client.get_model_version_download_uri(name, mv.version)
    if model_uri.startswith("runs:/"):
        info["run_id"] = model_uri[len("runs:/"):].strip("/")
        return info, logged_model(info["run_id"], tracking_uri=uri).artifact_location
    raise ConfigError(f"model URI {model_uri!r}: expected models:/NAME@ALIAS, "
                      "models:/NAME/VERSION or runs:/RUN_ID")


def load_encoders(model_uri: str, *, tracking_uri: str | None = None) -> Encoders:
    """The pyfunc model of `model_uri` (`resolve_uri`) with its audio and visual branches."""
    import mlflow
    uri = resolve(tracking_uri, DEFAULT_LOCAL_DIR)[0]
    info, location = resolve_uri(model_uri, uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(location, dst_path=tmp, tracking_uri=uri)
        model = mlflow.pyfunc.load_model(str(check_model_dir(local)))
    info["model_id"] = model.metadata.model_id
    return Encoders(Branch(model, "audio"), Branch(model, "visual"), info, model)


def smoke_model(tracking_uri: str, name: str = "tnn", data: str = "uci-mfeat",
                alias: str = "champion") -> dict:
    """Cluster-CCA fitted on `data`, logged and registered as NAME at `alias` in
    `tracking_uri` (seconds): the model of `jobs.embed --smoke`, `jobs.serve --smoke`, tests
    and bench. Returns {"version", "versions": {"audio", "visual"}, "run_id"}."""
    from tnn.data.sources import load_source
    from tnn.methods.linear import CCAConfig, fit_linear
    p = load_source(data)
    logger, _ = open_run(tracking_uri, "embed-smoke", f"{name}-smoke")
    log_model(logger, fit_linear(p, CCAConfig(), beta=0.2))
    version = register_model(logger.run_id, name, tracking_uri=tracking_uri)
    set_alias(name, alias, version, tracking_uri=tracking_uri)
    logger.finish()
    return {"version": version, "versions": {m: version for m in MODALITIES},
            "run_id": logger.run_id}
