"""Write any data source as Parquet shards plus a manifest, locally or on S3.

    python -m jobs.make_shards --data uci-mfeat --out s3://bucket/tnn/mfeat
    python -m jobs.make_shards --data synthetic:1000000 --out /data/syn1m --rows-per-shard 50000
    python -m jobs.make_shards --smoke              # 2,000 synthetic rows to a temp dir, read back
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.make_shards --data synthetic:200000 --out s3://bucket/tnn/syn200k

The data (`--data`) is anything `tnn.data.sources.load_source` takes: `uci-mfeat[:A,B]`, `npz:PATH`,
`vegas:DIR`, `synthetic:N` / `synthetic:n=N,seed=S,...` or a shard URI (re-shard). Folds are
class-balanced, `assign_folds(labels, --folds, --seed)`, stored per row. Synthetic sets are
streamed (labels first, then features chunk by chunk): memory does not grow with N. The
writing is `tnn.data.write.write`; this is its command line.

Every shard is published atomically and the manifest only after all of them, so a crash
leaves no manifest and readers refuse the half-written set. An existing data set (manifest or
shards) at --out is refused unless --overwrite. S3 is configured the AWS way (environment,
profiles; AWS_ENDPOINT_URL or --endpoint-url for S3-compatible stores); nothing logs secrets.

`--source` is an alias of `--data`. Prints a progress line per shard written
(`make_shards: shard 3/8 written: 75000/200000 rows, 11000 rows/s, ~11 s left`) and ends with
`make_shards: wrote 200000 rows in 8 shards to s3://bucket/tnn/syn200k (folds=5, seed=0)`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time

from jobs.common import JobParser, at_least, emit_error
from tnn.data import shards
from tnn.data.storage import StorageSettings
from tnn.data.write import write
from tnn.errors import DataError, TnnError

JOB = "make_shards"


def parse_args(argv):
    ap = JobParser(prog="python -m jobs.make_shards",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--data", "--source", dest="source",
                    help="data source, e.g. uci-mfeat, npz:PATH, synthetic:200000 (--source: "
                    "the same)")
    ap.add_argument("--out", help="s3://bucket/prefix or a local directory")
    ap.add_argument("--rows-per-shard", type=at_least(1), default=25_000,
                    help="rows per Parquet file (default 25000: ~115 MB at 128 + 1024 floats)")
    ap.add_argument("--folds", type=at_least(2),
                    default=5, help="class-balanced folds (default 5)")
    ap.add_argument("--seed", type=at_least(0),
                    default=0, help="fold assignment seed (default 0)")
    ap.add_argument("--overwrite", action="store_true", help="replace a data set at --out")
    ap.add_argument("--chunk-rows", type=at_least(1),
                    default=8192, help="rows per write (row group)")
    ap.add_argument("--endpoint-url", help="S3-compatible endpoint for --out "
                    "(else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    ap.add_argument("--region", help="S3 region for --out (else AWS_REGION / AWS_DEFAULT_REGION)")
    ap.add_argument("--profile", help="AWS profile for --out (else AWS_PROFILE)")
    ap.add_argument("--smoke", action="store_true",
                    help="2,000 synthetic rows to --out or a temp dir, then validate")
    return ap.parse_args(argv)


def run(args) -> str:
    """Resolve the arguments, write (and for --smoke validate), return the summary line."""
    settings = StorageSettings.from_env(endpoint_url=args.endpoint_url, region=args.region,
                                        profile=args.profile)
    source, out, temp = args.source, args.out, None
    if args.smoke:
        source = source or "synthetic:2000"
        if not out:
            out = temp = tempfile.mkdtemp(prefix="tnn-shards-smoke-")
    if not source or not out:
        raise DataError("--data and --out are required (or use --smoke)")
    if "\x00" in source + out:
        raise DataError(f"--data {source!r} / --out {out!r}: a path cannot hold a NUL character")
    if source.rstrip("/") == out.rstrip("/"):
        raise DataError(f"--data and --out are the same ({out}); write to a new prefix")
    if out.startswith("s3://"):
        print(f"{JOB}: storage {settings.describe()}", flush=True)
    t0 = time.perf_counter()
    try:
        man = write(source, out, rows_per_shard=500 if args.smoke else args.rows_per_shard,
                    folds=args.folds, seed=args.seed, overwrite=args.overwrite,
                    chunk_rows=args.chunk_rows, settings=settings)
        if args.smoke:
            shards.validate(out, deep=True, settings=settings)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    return (f"{JOB}: wrote {man.rows} rows in {len(man.shards)} shards to {out} "
            f"(folds={man.folds}, seed={man.fold_seed}) in {seconds:.1f} s, "
            f"{man.rows / seconds:.0f} rows/s")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        print(run(args), flush=True)
    except (TnnError, OSError) as err:
        return emit_error(JOB, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
