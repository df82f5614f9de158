"""Embed a gallery with a registered model into an index of Parquet embedding shards.

    python -m jobs.embed --model models:/tnn@champion --data s3://bucket/tnn/vegas \\
        --out s3://bucket/tnn/index/vegas-champion [--batch-size 4096 --concurrency 2]
    python -m jobs.embed --model runs:/RUN_ID --data uci-mfeat --out /tmp/index --folds 0
    python -m jobs.embed --smoke          # c-cca on the bundled data, registered in a temp
                                          # MLflow store, embedded to a temp index, queried
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m jobs.embed --model models:/tnn@champion --data s3://bucket/tnn/vegas \\
        --out s3://bucket/tnn/index/vegas --gpu --concurrency 4

Ray Data streams the data through encoder actors running the model's two branches (loaded
once by the driver, shipped as exported programs) and the driver writes the index as
the batches arrive, memory bounded by the batch size and --object-store-mib:
`tnn.ray.embed.embed`. Prints progress lines and ends with `embed: wrote N rows (K-d) in S
shards to OUT from NAME@ALIAS (audio vA, visual vV, run R) in T s, X clips/s`.
"""

from __future__ import annotations

import sys
import tempfile
import time

from jobs.common import JobParser, at_least, emit_error, print_config
from tnn.errors import ConfigError, TnnError
from tnn.ray.embed import EmbedConfig, embed, smoke_query
from tnn.ray.session import init_ray, shutdown
from tnn.serve.search import describe_model
from tnn.tracking.registry import smoke_model

JOB = "embed"


def parse_args(argv):
    ap = JobParser(prog="python -m jobs.embed", description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="models:/NAME@ALIAS or runs:/RUN_ID")
    ap.add_argument("--data", help="feature shard URI or a data source (uci-mfeat, ...)")
    ap.add_argument("--out", help="index location: s3://bucket/prefix or a local directory")
    ap.add_argument("--batch-size", type=at_least(1), default=4096)
    ap.add_argument("--concurrency", type=at_least(1),
                    default=1, help="encoder actors (default 1)")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor (default 1)")
    ap.add_argument("--gpu", action="store_true", help="one GPU per actor")
    ap.add_argument("--folds", type=at_least(0), nargs="+", help="only these folds (shard data)")
    ap.add_argument("--object-store-mib", type=at_least(0), default=512,
                    help="cap on Ray Data's object-store use (default 512; 0: Ray's share)")
    ap.add_argument("--rows-per-shard", type=at_least(1), default=250_000)
    ap.add_argument("--overwrite", action="store_true", help="replace an index at --out")
    ap.add_argument("--tracking-uri", help="MLflow store (else $MLFLOW_TRACKING_URI, ./runs)")
    ap.add_argument("--smoke", action="store_true",
                    help="register c-cca in a temp store, embed uci-mfeat to a temp index")
    return ap.parse_args(argv)


def config(args, tmp: str | None = None) -> EmbedConfig:
    if args.smoke:
        uri = f"sqlite:///{tmp}/mlflow.db"
        smoke_model(uri)
        args.model, args.tracking_uri = args.model or "models:/tnn@champion", uri
        args.data, args.out = args.data or "uci-mfeat", args.out or f"{tmp}/index"
    if not (args.model and args.data and args.out):
        raise ConfigError("--model, --data and --out are required (or use --smoke)")
    return EmbedConfig(args.model, args.data, args.out, args.batch_size, args.concurrency,
                       args.num_cpus, gpu=args.gpu,
                       folds=tuple(args.folds) if args.folds else None,
                       object_store_mib=args.object_store_mib,
                       rows_per_shard=args.rows_per_shard, overwrite=args.overwrite,
                       tracking_uri=args.tracking_uri)


def main(argv=None) -> int:
    args, started, t0 = parse_args(argv), False, time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="tnn-embed-smoke-") as tmp:
            cfg = config(args, tmp)
            print_config(JOB, cfg)
            started = init_ray()
            man = embed(cfg)
            if args.smoke:
                print(smoke_query(cfg.out), flush=True)
    except (TnnError, OSError) as err:
        return emit_error(JOB, err)
    finally:
        shutdown(started)
    seconds = time.perf_counter() - t0
    print(f"{JOB}: wrote {man.rows} rows ({man.audio_dim}-d) in {len(man.shards)} shards to "
          f"{cfg.out} from {describe_model(man.model)} in {seconds:.1f} s, "
          f"{man.rows / seconds:.0f} clips/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
