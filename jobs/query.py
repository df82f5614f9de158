"""Query an embedding index: top-k clips of the other modality for audio or visual features.

    python -m jobs.query --index s3://bucket/tnn/index/vegas --audio sounds.npy --k 10
    python -m jobs.query --index /tmp/index --visual frames.npy --model models:/tnn@champion
    python -m jobs.query --index /tmp/index --build-ivf         # once: IVF lists, recall@10
    python -m jobs.query --index /tmp/index --audio emb.npy --embedded --approx --json
    python -m jobs.query --smoke          # a random 2,000-row index in a temp dir, 2 queries

FILE.npy holds raw features (N, D) (or one row (D,)); they are embedded with the encoder of
that modality and searched against the other modality's embeddings: audio queries find
visual clips and vice versa. The encoder is the one that built the index (`runs:/RUN_ID` from
its manifest) unless `--model` names another, which must be the same model version (an index
of another version is refused). `--embedded`: the file holds query embeddings already.
Exact search (chunked matrix products) unless `--approx` (an IVF index, `tnn.serve.ivf`;
`--nprobe` lists per query; the lists saved by `--build-ivf`, which also reports their
recall@k against exact search, else built in memory first); `--stream` searches shard by
shard with bounded memory instead of loading the index. Prints each query's hits (rank, clip id, score, label) or, with --json,
one JSON object (`tnn.tracking.query.query`, `tnn.serve.query`); the last line is
`query: 2 audio queries -> top 10 visual clips of INDEX (N rows, exact) in T s`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from jobs.common import JobParser, at_least, emit_error
from tnn.data.npy import read_npy
from tnn.errors import ConfigError, TnnError
from tnn.serve import index as embedding_shards
from tnn.serve import query as serve_query
from tnn.serve.search import MODALITIES
from tnn.tracking.query import query

JOB = "query"


def parse_args(argv):
    ap = JobParser(prog="python -m jobs.query", description=__doc__.split("\n")[0])
    ap.add_argument("--index", help="index URI (written by jobs.embed)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--audio", metavar="FILE.npy", help="audio queries: find visual clips")
    which.add_argument("--visual", metavar="FILE.npy", help="visual queries: find audio clips")
    ap.add_argument("--k", type=int, default=10, help="hits per query (default 10)")
    ap.add_argument("--model", help="query encoder (default: the model that built the index)")
    ap.add_argument("--embedded", action="store_true", help="the file holds embeddings")
    ap.add_argument("--approx", action="store_true", help="IVF approximate search")
    ap.add_argument("--nprobe", type=at_least(1),
                    default=32, help="IVF lists scanned per query")
    ap.add_argument("--build-ivf", action="store_true",
                    help="build and save the IVF lists of the index (then --approx loads "
                    "them), reporting recall@k against exact search")
    ap.add_argument("--nlist", type=at_least(1),
                    help="IVF lists for --build-ivf (default 4 sqrt(N))")
    ap.add_argument("--stream", action="store_true", help="exact, shard by shard (low memory)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    ap.add_argument("--tracking-uri", help="MLflow store of the model")
    ap.add_argument("--smoke", action="store_true", help="a random index in a temp dir")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args, t0, tmp = parse_args(argv), time.perf_counter(), None
    try:
        if args.smoke:
            tmp = tempfile.mkdtemp(prefix="tnn-query-smoke-")
            (args.index, args.audio), args.embedded = serve_query.smoke_index(tmp), True
        if args.build_ivf and args.index:
            serve_query.build_ivf(args.index, args.nlist, args.nprobe, args.k)
            print(f"{JOB}: saved IVF lists of {args.index} in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            return 0
        path, modality = (args.audio, "audio") if args.audio else (args.visual, "visual")
        if not (args.index and path):
            raise ConfigError("--index and one of --audio / --visual are required")
        read_npy(path, path)  # no pickle, header against size, not an .npz: before np.load
        hits = query(args.index, serve_query.load_queries(path), modality, args.k,
                     model_uri=args.model, embedded=args.embedded, approx=args.approx,
                     nprobe=args.nprobe, stream=args.stream, tracking_uri=args.tracking_uri,
                     where=os.path.basename(path))
        man = embedding_shards.read_manifest(args.index)
    except (TnnError, OSError) as err:
        return emit_error(JOB, err)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    how = f"approx, nprobe {args.nprobe}" if args.approx else "exact"
    if args.json:
        print(json.dumps({"index": args.index, "modality": modality, "k": args.k,
                          "search": how, "model": man.model, "results": hits.to_list()}))
    else:
        print(serve_query.render(hits, man.class_names))
    print(f"{JOB}: {len(hits.rows)} {modality} queries -> top {args.k} {MODALITIES[modality]} "
          f"clips of {args.index} ({man.rows} rows, {how}) in {time.perf_counter() - t0:.2f} s",
          file=sys.stderr if args.json else sys.stdout, flush=True)  # stdout stays JSON
    return 0


if __name__ == "__main__":
    sys.exit(main())
