"""The two pyfunc encoders of a run and the model registry: the `mlflow` edge for models.

`log_checkpoint` puts a training checkpoint into its run: the history plot, the encoder files
and, through `log_encoder(s)`, each branch of the fitted `Encoder` as a pyfunc model (a
`tnn.serve.export` program served by `tnn/tracking/pyfunc.py`). The registry holds them as
`<name>-audio` and `<name>-visual`, whose versions always move together between the aliases
`challenger` and `champion` (`set_alias` restores the first alias if the second fails; never
the deprecated stages). `load_encoders("models:/NAME@ALIAS" | "runs:/RUN_ID")` returns both.
Choosing and promoting a champion: `tnn.tracking.promotion`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from tnn.errors import ConfigError
from tnn.tracking.runs import (DEFAULT_LOCAL_DIR, RunLogger, open_run, plot_history, resolve,
                               using)
from tnn.tracking.runs import client as _client

MODALITIES = ("audio", "visual")
PYFUNC_FILE = Path(__file__).with_name("pyfunc.py")


def log_encoder(logger: RunLogger, encoder, modality: str) -> str:
    """One branch of a `tnn.core.encoder.Encoder` as a pyfunc model named `modality` in the run
    (`tnn.serve.export` program + `tnn/tracking/pyfunc.py`); returns its model URI (models:/m-...)."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    from tnn.serve import export
    with tempfile.TemporaryDirectory() as tmp:
        meta = export.export_branch(encoder, modality, Path(tmp) / "encoder")
        spec = lambda d: Schema([TensorSpec(np.dtype(np.float32), (-1, d))])  # noqa: E731
        pins = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                f"mlflow=={mlflow.__version__}"]
        # created here so it lands in the run's experiment (Model.log would use the fluent one)
        model = logger.client.create_logged_model(
            logger.client.get_run(logger.run_id).info.experiment_id, name=modality,
            source_run_id=logger.run_id, tags={"modality": modality})
        with using(logger.tracking_uri):
            info = Model.log(None, mlflow.pyfunc, name=modality, run_id=logger.run_id,
                             model_id=model.model_id, python_model=str(PYFUNC_FILE),
                             artifacts={"encoder": str(Path(tmp) / "encoder")},
                             signature=ModelSignature(spec(meta["in_dim"]), spec(meta["out_dim"])),
                             input_example=export.example_input(encoder, modality),
                             pip_requirements=pins, metadata={"tnn": meta})
        logger.client.finalize_logged_model(model.model_id, "READY")
    return info.model_uri


def log_encoders(logger: RunLogger, encoder) -> dict[str, str]:
    """Both branches (`log_encoder`): {"audio": model URI, "visual": model URI}."""
    return {m: log_encoder(logger, encoder, m) for m in MODALITIES}


def log_checkpoint(logger: RunLogger, checkpoint_dir: str | os.PathLike) -> dict[str, str]:
    """A `tnn.train.checkpoints` directory into the run: the history plot (plots/history.png),
    the encoder files (encoder/) and the two pyfunc encoders; returns their model URIs."""
    from tnn.train.checkpoints import load_encoder, load_state
    d = Path(checkpoint_dir)
    with tempfile.TemporaryDirectory() as tmp:
        logger.artifact(plot_history(load_state(d)["history"], Path(tmp) / "history.png"), "plots")
    for name in ("encoder.pt", "encoder.json", "config.json"):
        logger.artifact(d / name, "encoder")
    return log_encoders(logger, load_encoder(d))


class Encoders(NamedTuple):
    """What `load_encoders` returns: the two pyfunc models and where they came from."""

    audio: Any
    visual: Any
    info: dict  # {"model_uri", "name", "alias", "versions": {"audio", "visual"} | None,
    #               "run_id", "model_ids": {"audio", "visual"} (MLflow LoggedModel ids)}


def registered_name(name: str, modality: str) -> str:
    return f"{name}-{modality}"


def logged_encoders(run_id: str, *, tracking_uri: str | None = None) -> dict:
    """{"audio": LoggedModel, "visual": LoggedModel}: the newest of each name in the run."""
    client = _client(tracking_uri)
    run = client.get_run(run_id)
    found = {}
    for modality in MODALITIES:
        models = client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{modality}'",
            order_by=[{"field_name": "creation_timestamp", "ascending": False}], max_results=1)
        if not models:
            raise ConfigError(f"run {run_id} has no logged '{modality}' encoder "
                              "(registry.log_checkpoint logs them)")
        found[modality] = models[0]
    return found


def register_encoders(run_id: str, name: str, *,
                      tracking_uri: str | None = None) -> dict[str, str]:
    """New versions of `<name>-audio` and `<name>-visual` from the run's encoders (the
    registered models are created on first use); returns {"audio": version, "visual": version}.
    Each version is tagged with its partner's (`visual_version` / `audio_version`)."""
    from mlflow.exceptions import MlflowException
    client, versions = _client(tracking_uri), {}
    for modality, model in logged_encoders(run_id, tracking_uri=tracking_uri).items():
        full = registered_name(name, modality)
        try:
            client.create_registered_model(full)
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        with using(client.tracking_uri):  # the SQL registry resolves models:/ globally
            mv = client.create_model_version(full, source=f"models:/{model.model_id}",
                                             run_id=run_id, model_id=model.model_id,
                                             tags={"modality": modality})
        versions[modality] = str(mv.version)
    for modality, other in zip(MODALITIES, MODALITIES[::-1]):
        client.set_model_version_tag(registered_name(name, modality), versions[modality],
                                     f"{other}_version", versions[other])
    return versions


def get_alias(name: str, alias: str, *, tracking_uri: str | None = None) -> dict | None:
    """{"audio": version, "visual": version} of `alias`, None if neither model has it;
    ConfigError if the pair is split (one has it, or the versions were not registered together)."""
    from mlflow.exceptions import MlflowException
    client, found = _client(tracking_uri), {}
    for modality in MODALITIES:
        try:
            found[modality] = client.get_model_version_by_alias(registered_name(name, modality),
                                                                alias)
        except MlflowException:
            found[modality] = None
    if all(v is None for v in found.values()):
        return None
    versions = {m: mv and str(mv.version) for m, mv in found.items()}
    paired = all(mv is not None for mv in found.values()) and all(
        found[m].tags.get(f"{o}_version", versions[o]) == versions[o]
        for m, o in zip(MODALITIES, MODALITIES[::-1]))
    if not paired:
        raise ConfigError(f"alias {alias!r} is split: {registered_name(name, 'audio')} version "
                          f"{versions['audio']}, {registered_name(name, 'visual')} version "
                          f"{versions['visual']} were not registered together")
    return versions


def set_alias(name: str, alias: str, versions: dict[str, str], *,
              tracking_uri: str | None = None) -> None:
    """Point `alias` of both encoders at `versions`; if the second fails, the first is put
    back (to its previous version, or the alias removed), so the pair never splits."""
    from mlflow.exceptions import MlflowException
    client, done = _client(tracking_uri), []
    try:
        for modality in MODALITIES:
            full = registered_name(name, modality)
            try:
                before = str(client.get_model_version_by_alias(full, alias).version)
            except MlflowException:
                before = None
            client.set_registered_model_alias(full, alias, str(versions[modality]))
            done.append((full, before))
    except Exception:
        for full, before in done:
            if before is None:
                client.delete_registered_model_alias(full, alias)
            else:
                client.set_registered_model_alias(full, alias, before)
        raise


def tag_versions(name: str, versions: dict[str, str], tags: dict[str, Any], *,
                 tracking_uri: str | None = None) -> None:
    """Set `tags` on both model versions of a pair."""
    client = _client(tracking_uri)
    for modality in MODALITIES:
        for key, value in tags.items():
            client.set_model_version_tag(registered_name(name, modality), versions[modality],
                                         key, str(value))


def load_encoders(model_uri: str, *, tracking_uri: str | None = None) -> Encoders:
    """The two pyfunc encoders of `models:/NAME@ALIAS` (NAME-audio@ALIAS, NAME-visual@ALIAS)
    or `runs:/RUN_ID` (the run's logged encoders)."""
    import mlflow
    uri = resolve(tracking_uri, DEFAULT_LOCAL_DIR)[0]
    client = _client(uri)
    info = {"model_uri": model_uri, "name": None, "alias": None, "versions": None, "run_id": None}
    if model_uri.startswith("models:/") and "@" in model_uri:
        info["name"], info["alias"] = model_uri[len("models:/"):].split("@", 1)
        versions = get_alias(info["name"], info["alias"], tracking_uri=uri)
        if versions is None:
            raise ConfigError(f"{model_uri}: no model version has alias {info['alias']!r}")
        mvs = {m: client.get_model_version(registered_name(info["name"], m), versions[m])
               for m in MODALITIES}
        runs = {mv.run_id for mv in mvs.values()}
        if len(runs) != 1:
            raise ConfigError(f"{model_uri}: the two encoders come from different runs {runs}")
        info.update(versions=versions, run_id=runs.pop())
        where = {m: client.get_model_version_download_uri(mv.name, mv.version)
                 for m, mv in mvs.items()}
    elif model_uri.startswith("runs:/"):
        info["run_id"] = model_uri[len("runs:/"):].strip("/")
        where = {m: lm.artifact_location for m, lm in
                 logged_encoders(info["run_id"], tracking_uri=uri).items()}
    else:
        raise ConfigError(f"model URI {model_uri!r}: expected models:/NAME@ALIAS or runs:/RUN_ID")
    models = {}
    for modality, location in where.items():
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(location, dst_path=tmp, tracking_uri=uri)
            models[modality] = mlflow.pyfunc.load_model(local)
    info["model_ids"] = {m: model.metadata.model_id for m, model in models.items()}
    return Encoders(models["audio"], models["visual"], info)


def smoke_model(tracking_uri: str, name: str = "tnn", data: str = "uci-mfeat",
                alias: str = "champion") -> dict:
    """Cluster-CCA fitted on `data`, logged and registered as NAME-audio / NAME-visual at
    `alias` in `tracking_uri` (seconds): the model of `jobs.embed --smoke`, tests and bench.
    Returns {"versions": {"audio", "visual"}, "run_id"}."""
    from tnn.data.sources import load_source
    from tnn.methods.linear import CCAConfig, fit_linear
    p = load_source(data)
    logger, _ = open_run(tracking_uri, "embed-smoke", f"{name}-smoke")
    log_encoders(logger, fit_linear(p, CCAConfig(), beta=0.2))
    versions = register_encoders(logger.run_id, name, tracking_uri=tracking_uri)
    set_alias(name, alias, versions, tracking_uri=tracking_uri)
    logger.finish()
    return {"versions": versions, "run_id": logger.run_id}
