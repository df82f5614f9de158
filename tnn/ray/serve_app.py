"""Ray Serve application: a registered model and its gallery index behind `POST /search`.

The deployment `Search` holds a `Pair`: the model (`tnn.tracking.registry.load_encoders`,
pinned to the version its alias pointed at) and an index that model built
(`tnn.serve.index.load_index`); an index built by another model version is refused with one
`DataError` line (`load_pair`). `POST /search` with `{"audio": [[...], ...], "k": 10}` or
`{"visual": ...}` (raw features, one row or many) answers `{"modality", "k", "model",
"results": [[{"rank", "clip_id", "score", "label"}, ...], ...]}`, top k of the other modality
per row; bad input is HTTP 400 `{"error": "<one line>"}`; `GET /` reports the pair served.
Requests are batched (`@serve.batch`: rows of one modality embedded and searched together,
off the event loop). For `models:/NAME@ALIAS` a thread checks the alias every
`poll_seconds` (user_config; a reconfigure checks at once) and swaps in the new version with
its index (`index` may contain `{version}`: one index per version) without a restart; until
that index exists the old pair keeps answering and `GET /` says why. `build` is the
application builder of `serve run cluster/serve.yaml` and `jobs.serve` (`tnn.ray.serving`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import urllib.parse

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from tnn.errors import ConfigError, DataError, TnnError
from tnn.serve import index as embedding_shards
from tnn.serve.search import check_k, check_model, describe_model
from tnn.tracking import registry
from tnn.tracking import runs as tracking

DEPLOYMENT = "Search"
MAX_K, MAX_ROWS = 1000, 1024
DEFAULTS = {"poll_seconds": 10.0, "max_batch_size": 32, "batch_wait_timeout_s": 0.002}
log = logging.getLogger("ray.serve")


@dataclasses.dataclass(frozen=True)
class Pair:
    """A model and the index it built: what one answer is computed from."""

    encoders: registry.Encoders
    index: embedding_shards.Index

    @property
    def info(self) -> dict:
        return self.encoders.info

    def summary(self) -> dict:
        i = self.info
        return {"name": i["name"], "alias": i["alias"], "version": i["version"],
                "run_id": i["run_id"], "index": self.index.uri, "rows": len(self.index)}


def without_userinfo(uri: str | None) -> tuple[str | None, bool]:
    """(`uri` without its `user:password@`, whether it had one): the tracking URI the replicas
    get. Their MLflow credentials come from MLflow's own environment variables on the cluster
    (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN), never
    from what is shipped to them (bind args are pickled into Serve's state)."""
    if not uri:
        return uri, False
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, False
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])), True


CREDENTIALS_NOTE = ("the tracking URI's user:password is not shipped to the replicas; they "
                    "authenticate with MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or "
                    "MLFLOW_TRACKING_TOKEN set on the cluster's nodes (cluster/README.md)")


def alias_of(model_uri: str) -> tuple[str, str] | None:
    """(NAME, ALIAS) of `models:/NAME@ALIAS`, else None (a fixed version or run)."""
    rest = model_uri[len("models:/"):] if model_uri.startswith("models:/") else ""
    return tuple(rest.split("@", 1)) if "@" in rest else None


def pinned(model_uri: str, tracking_uri: str) -> str:
    """`models:/NAME/VERSION` for the version `models:/NAME@ALIAS` points at now (else the
    URI itself), so the model loaded is the one checked against the index."""
    named = alias_of(model_uri)
    if named is None:
        return model_uri
    version = registry.get_alias(*named, tracking_uri=tracking_uri)
    if version is None:
        raise ConfigError(f"{model_uri}: no model version has alias {named[1]!r}")
    return f"models:/{named[0]}/{version}"


def check_pair(model_uri: str, index_uri: str, tracking_uri: str) -> tuple[dict, str]:
    """The checks before loading anything big: (the model's info, the index URI for its
    version); `DataError` if the index was built by another model version."""
    uri = pinned(model_uri, tracking_uri)
    info, _ = registry.resolve_uri(uri, tracking_uri)
    info.update(model_uri=model_uri, alias=(alias_of(model_uri) or (None, None))[1])
    where = index_uri.replace("{version}", str(info["version"]))
    check_model(embedding_shards.read_manifest(where).model, info, where)
    return info, where


def load_pair(model_uri: str, index_uri: str, tracking_uri: str) -> Pair:
    """The model `model_uri` points at now and its index (refused unless it built it)."""
    info, where = check_pair(model_uri, index_uri, tracking_uri)
    encoders = registry.load_encoders(pinned(model_uri, tracking_uri), tracking_uri=tracking_uri)
    encoders.info.update(model_uri=model_uri, alias=info["alias"])
    if (encoders.info["version"], encoders.info["run_id"]) != (info["version"], info["run_id"]):
        raise DataError(f"{model_uri} moved while loading; it is retried at the next check")
    index = embedding_shards.load_index(where)
    check_model(index.model, encoders.info, where)
    return Pair(encoders, index)


def parse_query(body, pair: Pair) -> tuple[str, np.ndarray, int]:
    """(modality, float32 rows (n, D), k) of a /search body; `ConfigError` naming the field."""
    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object such as {\"audio\": [[...]], \"k\": 10}")
    which = [m for m in registry.MODALITIES if m in body]
    if len(which) != 1 or set(body) - {"audio", "visual", "k"}:
        raise ConfigError(f"the body needs exactly one of 'audio' / 'visual' (and 'k'); got "
                          f"keys {sorted(body)}")
    modality, k = which[0], check_k(body.get("k", 10))
    if k > MAX_K:
        raise ConfigError(f"k must be at most {MAX_K}; got {k}")
    try:
        x = np.asarray(body[modality], np.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"'{modality}' must be a list of numbers or of rows of numbers") from None
    x = x[None] if x.ndim == 1 else x
    width = getattr(pair.encoders, modality).in_dim
    if x.ndim != 2 or not 0 < len(x) <= MAX_ROWS or (width and x.shape[1] != width):
        raise ConfigError(f"'{modality}' has shape {x.shape}; expected 1 to {MAX_ROWS} rows of "
                          f"{width} numbers")
    if not np.isfinite(x).all():
        raise ConfigError(f"'{modality}' row {np.flatnonzero(~np.isfinite(x).all(1))[0]} has "
                          "NaN or inf values")
    return modality, x, k


def answer(pair: Pair, queries: list[tuple[str, np.ndarray, int]]) -> list[dict]:
    """The answers to `parse_query` results, rows of one modality embedded and searched in
    one call (top max k, cut per query: the order is total, so a prefix is the top k)."""
    out: list = [None] * len(queries)
    model = pair.summary()
    for modality in registry.MODALITIES:
        mine = [i for i, q in enumerate(queries) if q[0] == modality]
        if not mine:
            continue
        emb = getattr(pair.encoders, modality).predict(np.concatenate([queries[i][1]
                                                                       for i in mine]))
        hits = pair.index.search(emb, modality, max(queries[i][2] for i in mine),
                                 model=pair.info).to_list()
        start = 0
        for i in mine:
            n, k = len(queries[i][1]), queries[i][2]
            out[i] = {"modality": modality, "k": k, "model": model,
                      "results": [row[:k] for row in hits[start:start + n]]}
            start += n
    return out


@serve.deployment(name=DEPLOYMENT, max_ongoing_requests=64, user_config=DEFAULTS,
                  ray_actor_options={"num_cpus": 1})
class Search:
    """The HTTP ingress (module doc)."""

    def __init__(self, model: str, index: str, tracking_uri: str | None = None) -> None:
        self.model_uri, self.index_uri = model, index
        self.tracking_uri = tracking.resolve(tracking_uri, tracking.DEFAULT_LOCAL_DIR)[0]
        self.pair, self.pending = load_pair(model, index, self.tracking_uri), None
        self.poll_seconds, self._stop = DEFAULTS["poll_seconds"], threading.Event()
        self._lock = threading.Lock()
        if alias_of(model):
            threading.Thread(target=self._poll, daemon=True, name="tnn-alias").start()

    def reconfigure(self, config: dict) -> None:
        cfg = {**DEFAULTS, **(config or {})}
        self.poll_seconds = float(cfg["poll_seconds"])
        self.search_batch.set_max_batch_size(int(cfg["max_batch_size"]))
        self.search_batch.set_batch_wait_timeout_s(float(cfg["batch_wait_timeout_s"]))
        self.check_alias()

    def _poll(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.25):  # poll_seconds may change (reconfigure)
            if time.monotonic() - last >= self.poll_seconds:
                self.check_alias()
                last = time.monotonic()

    def check_alias(self) -> None:
        """Swap in the pair of the version the alias points at now, if it moved."""
        named, version = alias_of(self.model_uri), None
        if named is None or not self._lock.acquire(blocking=False):
            return
        try:
            version = registry.get_alias(*named, tracking_uri=self.tracking_uri)
            if version in (None, self.pair.info["version"]):
                self.pending = None
                return
            self.pair, self.pending = load_pair(self.model_uri, self.index_uri,
                                                self.tracking_uri), None
            log.info("tnn: now serving %s", describe_model(self.pair.info))
        except Exception as err:  # keep answering with the pair that works
            self.pending = f"alias {named[1]!r} is at version {version}, still serving " \
                           f"version {self.pair.info['version']}: {err}"
            log.warning("tnn: %s", self.pending)
        finally:
            self._lock.release()

    def __del__(self) -> None:
        self._stop.set()

    @serve.batch(max_batch_size=DEFAULTS["max_batch_size"],
                 batch_wait_timeout_s=DEFAULTS["batch_wait_timeout_s"])
    async def search_batch(self, queries: list) -> list[dict]:
        return await asyncio.to_thread(answer, self.pair, queries)

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path in ("", "/health"):
            return JSONResponse({**self.pair.summary(), "pending": self.pending})
        if request.method != "POST" or not path.endswith("/search"):
            return JSONResponse({"error": "POST /search or GET /"}, status_code=404)
        try:
            query = parse_query(await request.json(), self.pair)
        except (ValueError, TnnError) as err:
            return JSONResponse({"error": f"bad request: {err}"}, status_code=400)
        return JSONResponse(await self.search_batch(query))


def build(args: dict):
    """The application builder (`import_path: tnn.ray.serve_app:build`, `args`: model,
    index, tracking_uri; the URI's credentials are dropped: `without_userinfo`)."""
    unknown = set(args) - {"model", "index", "tracking_uri"}
    if unknown or not args.get("index"):
        raise ConfigError(f"serve app args: 'index' is required, 'model' and 'tracking_uri' "
                          f"optional; got {sorted(args)}")
    uri, had = without_userinfo(args.get("tracking_uri"))
    if had:
        log.warning("tnn: %s", CREDENTIALS_NOTE)
    return Search.bind(args.get("model") or "models:/tnn@champion", args["index"], uri)
