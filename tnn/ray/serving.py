"""Running the search app (`tnn.ray.serve_app`): its config file, start, stop, a small client.

The config is a Ray Serve config file (`cluster/serve.yaml`: HTTP options, the application with
`import_path: tnn.ray.serve_app:build` and its args, the `Search` deployment's replicas,
autoscaling and batching); `read_config` validates it with Ray's own schema and checks that it
describes this app. `start` deploys the app from it on the Ray this process is connected to,
with the model, index and MLflow store given (`serve run cluster/serve.yaml` deploys the same
file as it is), after checking the pair (`serve_app.check_pair`: one line if the index was built
by another model version). `Client` talks to `/search` over HTTP (keep-alive, stdlib only).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.parse
from pathlib import Path

import yaml

from tnn.errors import ConfigError, DataError
from tnn.ray import serve_app

IMPORT_PATH = "tnn.ray.serve_app:build"
FORWARDED = ("AWS_", "MLFLOW_")  # environment the replicas get from the process deploying
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|USERNAME|ACCESS_KEY|CREDENTIAL", re.I)
"""Never forwarded: the replicas' runtime env is stored by Ray and shown in its logs and
dashboard; credentials come from the cluster's nodes."""


def read_config(path: str | Path) -> dict:
    """The Serve config at `path`, validated (Ray's `ServeDeploySchema`) and checked to be
    this app (one application, `IMPORT_PATH`, a `Search` deployment); `ConfigError` if not."""
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema
    try:
        config = yaml.safe_load(Path(path).read_text())
        for app in ServeDeploySchema.model_validate(config).applications:
            for d in app.deployments:  # a dict in the schema: validated here
                AutoscalingConfig.model_validate(d.autoscaling_config or {})
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the Serve config ({err})") from None
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"{path}: not a valid Serve config: {'.'.join(map(str, first['loc']))}"
                          f": {first['msg']}") from None
    apps = config["applications"]
    if len(apps) != 1 or apps[0]["import_path"] != IMPORT_PATH:
        raise ConfigError(f"{path}: expected one application with import_path {IMPORT_PATH}")
    deployment_options(config, path)
    return config


def deployment_options(config: dict, where: str | Path = "the Serve config") -> dict:
    """The `Search` deployment's settings of the config (replicas, autoscaling, user_config)."""
    for d in config["applications"][0].get("deployments", []):
        if d.get("name") == serve_app.DEPLOYMENT:
            return {k: v for k, v in d.items() if k != "name"}
    raise ConfigError(f"{where}: no deployment named {serve_app.DEPLOYMENT!r}")


def with_env(opts: dict) -> dict:
    """`opts` with this process's S3 and MLflow settings (AWS_*, MLFLOW_*: region, endpoints,
    the tracking URI without credentials) added to the replicas' runtime_env: they find the
    index and the registry as the driver does (under `ray job submit` those come from the
    job's runtime_env, not from the nodes). Credentials (`SECRET_NAME`) are left out: the
    replicas take them from their nodes' environment (cluster/README.md)."""
    env = {k: serve_app.without_userinfo(v)[0] if k.endswith("_URI") else v
           for k, v in os.environ.items()
           if k.startswith(FORWARDED) and not SECRET_NAME.search(k)}
    if not env:
        return opts
    actor = dict(opts.get("ray_actor_options") or {})
    runtime_env = dict(actor.get("runtime_env") or {})
    runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
    return {**opts, "ray_actor_options": {**actor, "runtime_env": runtime_env}}


def start(config: dict, model: str, index: str, tracking_uri: str, *, host: str | None = None,
          port: int | None = None, log=print) -> tuple[str, dict]:
    """Deploy the app (`config` with these args and HTTP host/port) on the Ray this process is
    connected to and wait until it answers; returns (its URL, the pair it serves). The
    replicas get `tracking_uri` without credentials (`serve_app.without_userinfo`; one line
    says so when it had some)."""
    from ray import serve
    serve_app.check_pair(model, index, tracking_uri)  # refuse a mismatched pair before deploying
    shipped_uri, had = serve_app.without_userinfo(tracking_uri)
    if had:
        log(f"serve: {serve_app.CREDENTIALS_NOTE}", flush=True)
    http = {**config.get("http_options", {}), **{k: v for k, v in (("host", host),
                                                                   ("port", port)) if v}}
    serve.start(http_options=http, proxy_location=config.get("proxy_location", "HeadOnly"))
    app = config["applications"][0]
    prefix = app.get("route_prefix", "/")
    search = serve_app.Search.options(**with_env(deployment_options(config)))
    try:
        serve.run(search.bind(model, index, shipped_uri), name=app["name"], route_prefix=prefix)
    except RuntimeError as err:  # a replica failed to start: its exception is the last line
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise DataError(f"the search app did not start: {lines[-1] if lines else err}") from None
    url = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}{prefix.rstrip('/')}"
    return url, Client(url).wait()


def stop() -> None:
    """Shut Serve down on the connected Ray (every app, the proxies, the controller)."""
    from ray import serve
    serve.shutdown()


class Client:
    """`search(body)` / `status()` against the app at `url`, over one kept-alive connection."""

    def __init__(self, url: str, timeout: float = 60) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.prefix = parts.hostname, parts.port or 80, parts.path
        self.timeout, self.conn = timeout, None

    def request(self, method: str, path: str, body=None) -> tuple[int, dict]:
        for attempt in (0, 1):  # one reconnect: the server may close an idle connection
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, self.prefix + path,
                                  None if body is None else json.dumps(body),
                                  {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                return resp.status, json.loads(resp.read() or b"null")
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def search(self, body: dict) -> dict:
        status, out = self.request("POST", "/search", body)
        if status != 200:
            raise ConfigError(f"/search answered HTTP {status}: {out}")
        return out

    def status(self) -> dict:
        return self.request("GET", "/")[1]

    def wait(self, seconds: float = 60) -> dict:
        """The app's status once it answers (the proxy may need a moment after deploying)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                status, out = self.request("GET", "/")
                if status == 200:
                    return out
            except OSError:
                self.close()
            if time.monotonic() > deadline:
                raise ConfigError(f"the search app at {self.host}:{self.port} did not answer "
                                  f"within {seconds:.0f} s")
            time.sleep(0.25)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
