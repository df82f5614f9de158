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
Exact search (chunked matrix products) unless `--approx` (an IVF index, `tnn.serve.search`;
`--nprobe` lists per query; the lists saved by `--build-ivf`, which also reports their
recall@k against exact search, else built in memory first); `--stream` searches shard by shard with bounded memory instead of
loading the index. Prints each query's hits (rank, clip id, score, label) or, with --json,
one JSON object; the last line is
`query: 2 audio queries -> top 10 visual clips of INDEX (N rows, exact) in T s`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from jobs.common import emit_error
from tnn.serve import index as embedding_shards
from tnn.serve import search as retrieval
from tnn.errors import ConfigError, DataError, TnnError

JOB = "query"


def load_queries(path: str) -> np.ndarray:
    """A .npy file of query rows (N, D) or one row (D,), as finite float32 (N, D)."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read a .npy array ({err})") from None
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or x.dtype.kind not in "iuf" or len(x) == 0:
        raise DataError(f"{path}: expected a non-empty numeric (N, D) array; got dtype "
                        f"{x.dtype}, shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise DataError(f"{path}: row {bad[0]} has NaN or inf values")
    return x.astype(np.float32)


def embed_queries(x: np.ndarray, modality: str, model_uri: str, tracking_uri: str | None,
                  where: str = "queries") -> tuple[np.ndarray, dict]:
    """Raw features -> unit embeddings with the `modality` encoder of `model_uri`; also the
    encoder's info (for the index's model check)."""
    from tnn.tracking import registry
    enc = registry.load_encoders(model_uri, tracking_uri=tracking_uri)
    model = getattr(enc, modality)
    width = _in_width(model)
    if width is not None and x.shape[1] != width:
        raise DataError(f"{where}: {modality} features have width {x.shape[1]}; the "
                        f"{modality} encoder of {retrieval.describe_model(enc.info)} takes "
                        f"{width}")
    return np.asarray(model.predict(x), np.float32), enc.info


def _in_width(model) -> int | None:
    try:
        return int(model.metadata.get_input_schema().inputs[0].shape[1])
    except (AttributeError, IndexError, TypeError):
        return None


def query(index_uri: str, x: np.ndarray, modality: str, k: int = 10, *,
          model_uri: str | None = None, embedded: bool = False, approx: bool = False,
          nprobe: int = 32, stream: bool = False, tracking_uri: str | None = None,
          where: str = "queries") -> retrieval.Hits:
    """The Python API: top k of the other modality for query rows `x` of `modality`.

    Raw features are embedded with the encoder of `model_uri` (default: the model that built
    the index); `embedded`: `x` holds embeddings already (no model is loaded or checked)."""
    k = retrieval.check_k(k)
    retrieval.gallery_column(modality)  # refuse an unknown modality before any work
    man = embedding_shards.read_manifest(index_uri)
    if man.rows == 0:
        raise DataError(f"{index_uri}: the index is empty (0 rows): nothing to search")
    model = None
    if not embedded:
        model_uri = model_uri or f"runs:/{man.model.get('run_id')}"
        x, model = embed_queries(x, modality, model_uri, tracking_uri, where)
    if stream:
        if approx:
            raise ConfigError("--stream searches exactly; drop --approx or --stream")
        return embedding_shards.search_stream(index_uri, x, modality, k, model=model)
    if model is not None:  # refuse before reading the whole index
        retrieval.check_model(man.model, model, index_uri)
    index = embedding_shards.load_index(index_uri)
    return index.search(x, modality, k, model=model, approx=approx, nprobe=nprobe)


def build_ivf(index_uri: str, nlist: int | None = None, nprobe: int = 32, k: int = 10,
              sample: int = 1000, log=print) -> dict:
    """Build, measure and save the IVF lists of both columns: recall@k against exact search
    and the speed-up, with `sample` rows of the other modality as queries."""
    index = embedding_shards.load_index(index_uri)
    if len(index) == 0:
        raise DataError(f"{index_uri}: the index is empty (0 rows): nothing to index")
    picks = np.random.default_rng(0).choice(len(index), min(sample, len(index)), replace=False)
    out = {}
    for modality in ("audio", "visual"):
        column = retrieval.gallery_column(modality)
        gallery, q = index.emb[column], index.emb[f"{modality}_emb"][picks]
        t0 = time.perf_counter()
        ivf = retrieval.IVFIndex.build(gallery, nlist)
        t1 = time.perf_counter()
        exact = retrieval.exact_search(q, gallery, k)[0]
        t2 = time.perf_counter()
        approx = ivf.search(q, k, nprobe)[0]
        t3 = time.perf_counter()
        out[column] = {"nlist": ivf.nlist, "build_s": t1 - t0, "nprobe": nprobe,
                       "recall": retrieval.recall_at_k(approx, exact),
                       "speedup": (t2 - t1) / (t3 - t2),
                       "file": embedding_shards.save_ivf(index_uri, column, ivf,
                                                         embedding_shards.read_manifest(
                                                             index_uri))}
        log(f"{JOB}: IVF of {column}: {ivf.nlist} lists in {t1 - t0:.1f} s; recall@{k} "
            f"{out[column]['recall']:.4f} at nprobe {nprobe} ({len(q)} {modality} rows as "
            f"queries), {out[column]['speedup']:.1f}x exact search; saved "
            f"{out[column]['file']}", flush=True)
    return out


def render(hits: retrieval.Hits, class_names=()) -> str:
    lines = []
    for i, row in enumerate(hits.to_list()):
        lines.append(f"query {i}:")
        lines += [f"  {h['rank']:3d}  {h['clip_id']:24s} {h['score']:8.4f}  label {h['label']}"
                  + (f" ({class_names[h['label']]})" if h["label"] < len(class_names) else "")
                  for h in row]
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m jobs.query", description=__doc__.split("\n")[0])
    ap.add_argument("--index", help="index URI (written by jobs.embed)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--audio", metavar="FILE.npy", help="audio queries: find visual clips")
    which.add_argument("--visual", metavar="FILE.npy", help="visual queries: find audio clips")
    ap.add_argument("--k", type=int, default=10, help="hits per query (default 10)")
    ap.add_argument("--model", help="query encoder (default: the model that built the index)")
    ap.add_argument("--embedded", action="store_true", help="the file holds embeddings")
    ap.add_argument("--approx", action="store_true", help="IVF approximate search")
    ap.add_argument("--nprobe", type=int, default=32, help="IVF lists scanned per query")
    ap.add_argument("--build-ivf", action="store_true",
                    help="build and save the IVF lists of the index (then --approx loads "
                    "them), reporting recall@k against exact search")
    ap.add_argument("--nlist", type=int, help="IVF lists for --build-ivf (default 4 sqrt(N))")
    ap.add_argument("--stream", action="store_true", help="exact, shard by shard (low memory)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    ap.add_argument("--tracking-uri", help="MLflow store of the model")
    ap.add_argument("--smoke", action="store_true", help="a random index in a temp dir")
    return ap.parse_args(argv)


def _smoke(args, tmp: str) -> None:
    rng = np.random.default_rng(0)
    emb = retrieval.normalise(rng.normal(size=(2000, 8)))
    with embedding_shards.EmbeddingWriter(f"{tmp}/index", model={"model_uri": "smoke"},
                                          rows_per_shard=500) as w:
        w.write(np.array([f"clip{i}" for i in range(2000)]), np.arange(2000) % 10, emb, emb)
    np.save(f"{tmp}/q.npy", emb[:2])
    args.index, args.audio, args.embedded = f"{tmp}/index", f"{tmp}/q.npy", True


def main(argv=None) -> int:
    args, t0, tmp = parse_args(argv), time.perf_counter(), None
    try:
        if args.smoke:
            tmp = tempfile.mkdtemp(prefix="tnn-query-smoke-")
            _smoke(args, tmp)
        if args.build_ivf and args.index:
            build_ivf(args.index, args.nlist, args.nprobe, args.k)
            print(f"{JOB}: saved IVF lists of {args.index} in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            return 0
        path, modality = (args.audio, "audio") if args.audio else (args.visual, "visual")
        if not (args.index and path):
            raise ConfigError("--index and one of --audio / --visual are required")
        hits = query(args.index, load_queries(path), modality, args.k, model_uri=args.model,
                     embedded=args.embedded, approx=args.approx, nprobe=args.nprobe,
                     stream=args.stream, tracking_uri=args.tracking_uri,
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
        print(render(hits, man.class_names))
    other = retrieval.MODALITIES[modality]
    print(f"{JOB}: {len(hits.rows)} {modality} queries -> top {args.k} {other} clips of "
          f"{args.index} ({man.rows} rows, {how}) in {time.perf_counter() - t0:.2f} s",
          file=sys.stderr if args.json else sys.stdout, flush=True)  # stdout stays JSON
    return 0


if __name__ == "__main__":
    sys.exit(main())
