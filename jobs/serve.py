"""Serve a registered model and its gallery index over HTTP: `POST /search` on Ray Serve.

    python -m jobs.serve --index runs/index/champion                 # models:/tnn@champion
    python -m jobs.serve --index s3://bucket/tnn/index/v{version} --model models:/tnn@champion \\
        --port 8000 --tracking-uri http://mlflow:5000
    python -m jobs.serve --smoke      # c-cca registered in a temp store, its index, 2 queries
    ray job submit --working-dir . -- python -m jobs.serve --index s3://... --host 0.0.0.0

`curl -s 127.0.0.1:8000/search -d '{"audio": [[...76 numbers...]], "k": 5}'` answers the top k
visual clips (clip id, label, score) per row; `{"visual": ...}` the audio clips. The app
(`tnn.ray.serve_app`) batches requests, follows the alias (a promoted version is swapped in
with its index, `{version}` in --index, without a restart) and refuses an index built by
another model version (one line, exit 2, before anything starts). Replicas, autoscaling and
batching come from --config (default cluster/serve.yaml; `serve run` deploys the same file).
Started here, Ray and the app stop at Ctrl-C; on a cluster (RAY_ADDRESS, as under `ray job
submit`) the app stays up after the job ends (`serve status`, `serve shutdown -y`). One line
when it answers: `serve: NAME@ALIAS (version V, run R) with INDEX (N rows) at URL/search`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from jobs.common import emit_error
from tnn.data.storage import is_s3
from tnn.errors import ConfigError, TnnError
from tnn.ray import serving
from tnn.ray.serve_app import check_pair
from tnn.ray.session import init_ray, shutdown
from tnn.tracking import runs as tracking
from tnn.tracking.query import write_index
from tnn.tracking.registry import smoke_model

JOB = "serve"
CONFIG = Path(__file__).resolve().parents[1] / "cluster" / "serve.yaml"


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m jobs.serve", description=__doc__.split("\n")[0])
    ap.add_argument("--index", help="index URI written by jobs.embed ({version}: per version)")
    ap.add_argument("--model", default="models:/tnn@champion",
                    help="models:/NAME@ALIAS (followed), models:/NAME/VERSION or runs:/RUN_ID")
    ap.add_argument("--config", default=str(CONFIG), help="Ray Serve config (cluster/serve.yaml)")
    ap.add_argument("--host", help="HTTP host (default: the config's, 127.0.0.1)")
    ap.add_argument("--port", type=int, help="HTTP port (default: the config's, 8000)")
    ap.add_argument("--tracking-uri", help="MLflow store (else $MLFLOW_TRACKING_URI, ./runs)")
    ap.add_argument("--smoke", action="store_true",
                    help="c-cca in a temp store and its index, two queries, then stop")
    return ap.parse_args(argv)


def settings(args, tmp: str) -> tuple[dict, str, str]:
    """(Serve config, index URI, tracking URI) with local paths made absolute (the replicas
    may run elsewhere), checked; --smoke registers a model and writes its index under `tmp`."""
    config = serving.read_config(args.config)
    if args.port is not None and not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1-65535; got {args.port}")
    if args.smoke:
        args.tracking_uri = args.tracking_uri or f"sqlite:///{tmp}/mlflow.db"
        smoke_model(args.tracking_uri)
        args.index = f"{tmp}/index"
        write_index(args.model, "uci-mfeat", args.index, tracking_uri=args.tracking_uri)
    if not args.index:
        raise ConfigError("--index is required (or use --smoke)")
    index = args.index if is_s3(args.index) else os.path.abspath(args.index)
    uri = tracking.resolve(args.tracking_uri, tracking.DEFAULT_LOCAL_DIR)[0]
    check_pair(args.model, index, uri)  # the model and its index, before Ray starts
    return config, index, uri


def smoke_queries(url: str) -> str:
    """Two audio queries of the bundled data through HTTP: their top-3 clip ids."""
    from tnn.data.sources import load_source
    out = serving.Client(url).search({"audio": load_source("uci-mfeat").audio[:2].tolist(),
                                      "k": 3})
    return f"{JOB}: smoke query top 3: " + json.dumps(
        [[h["clip_id"] for h in row] for row in out["results"]])


def wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


def run(args, tmp: str) -> int:
    started = up = local = False
    try:
        config, index, uri = settings(args, tmp)
        # init_ray also says True when it connects to a cluster (RAY_ADDRESS, as under `ray job
        # submit`): there the job deploys and ends, the app stays up (its controller and
        # replicas are detached actors); only a Ray started here lives as long as this process.
        cluster = bool(os.environ.get("RAY_ADDRESS"))
        started = init_ray()
        local = started and not cluster
        url, status = serving.start(config, args.model, index, uri, host=args.host,
                                    port=args.port)
        up = True
        print(f"{JOB}: {status['name'] or args.model}@{status['alias'] or '-'} (version "
              f"{status['version'] or '-'}, run {status['run_id']}) with {status['index']} "
              f"({status['rows']} rows) at {url}/search", flush=True)
        if args.smoke:
            print(smoke_queries(url), flush=True)
        elif local:
            wait_for_signal()
    except (TnnError, OSError) as err:
        return emit_error(JOB, err)
    finally:
        if up and (local or args.smoke):
            serving.stop()
        shutdown(started)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tnn-serve-smoke-") as tmp:
        return run(args, tmp)


if __name__ == "__main__":
    sys.exit(main())
