"""Benchmark: embed a synthetic gallery from S3, then exact vs IVF search side by side.

    flock /tmp/tnn-ray.lock python -m bench.retrieval     # 200k clips (128-d / 1024-d)
    flock /tmp/tnn-ray.lock python -m bench.retrieval --smoke     # 20k clips
    python -m bench.retrieval --index URI --tracking-uri URI     # search part only
    python -m bench.retrieval --synthetic --rows 1000000         # search only, no Ray / S3

`--synthetic`: a gallery of `--rows` unit embeddings of the project's width (`--dim`, default
9: the CCA dimension classes - 1 of 10-class VEGAS) drawn like a model's output (10 class
centres plus noise), queries from the same law; only step 3 runs.

1. Starts moto's S3 server on 127.0.0.1, writes `synthetic:ROWS` feature shards to it
   (`tnn.data.write`), registers a cluster-CCA model fitted on a separate synthetic draw
   (`tnn.tracking.registry.smoke_model`, a temp MLflow store).
2. Runs `python -m jobs.embed` on the shards (a subprocess with its own local Ray) and samples
   the memory of its whole process tree (driver, raylet, read tasks, encoder actors) every
   0.2 s: peak RSS of the driver and of the largest process, peak private memory (RssAnon)
   of the largest process and of all together, and the object store's peak in /dev/shm
   (shared pages, which RSS counts in every process that touched them); clips/s over the
   whole job and over its streaming part (the job's own last line). `--also-rows` embeds
   other gallery sizes first: memory against gallery size.
3. Loads the index and embeds held-out audio clips as queries (-> visual_emb). Exact search
   (`tnn.serve.search.exact_search`) is compared with a brute-force numpy reference (one full
   matrix product, stable argsort) on `--ref-queries`; then exact search and the IVF index at
   each `--nprobe` run alternately, `--repeats` times (best time kept): recall@k vs exact and
   the speed-up; the IVF index on each backend side by side: numpy (`tnn.serve.ivf`) and
   FAISS (`tnn.serve.faiss_ivf`, when faiss-cpu is installed), built on the same gallery with
   the same nlist. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from tnn.serve import index as embedding_shards
from tnn.serve import search as retrieval
from tnn.serve import ivf as ivf_lists


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.retrieval",
                                description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ref-queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", default="4,8,16,32,64")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4 sqrt(N))")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--also-rows", default="",
                   help="comma-separated gallery sizes embedded first (memory vs size)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--object-store-mib", type=int, help="jobs.embed --object-store-mib")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--index", help="search this existing index (no server, no embedding)")
    p.add_argument("--tracking-uri", help="with --index: the MLflow store of its model")
    p.add_argument("--smoke", action="store_true", help="20,000 clips, 1 repeat")
    p.add_argument("--synthetic", action="store_true",
                   help="search a synthetic embedding gallery (no S3, Ray or model)")
    p.add_argument("--dim", type=int, default=9, help="--synthetic: embedding width")
    p.add_argument("--backends", default="numpy,faiss",
                   help="IVF backends to compare (faiss skipped when not installed)")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.repeats = 20_000, 1
    args.nprobe = [int(x) for x in args.nprobe.split(",")]
    args.also_rows = [int(x) for x in args.also_rows.split(",") if x]
    args.backends = [b for b in args.backends.split(",") if b]
    return args


def _tree_memory(root: int) -> dict[str, tuple[int, str]]:
    """Over `root` and its descendants, in bytes: the root's RSS; the largest RSS and the
    largest private memory (RssAnon) of one process, with its name; the summed private
    memory. Object-store pages are shared memory (RssShmem), counted by `_shm_used`."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    rss, anon, todo = {}, {}, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:60]
            rss[pid] = (int(fields["VmRSS"].split()[0]) * 1024, cmd)
            anon[pid] = (int(fields["RssAnon"].split()[0]) * 1024, cmd)
        except (OSError, KeyError, ValueError):
            continue
        todo += children.get(pid, [])
    return {"driver_rss": rss.get(root, (0, "")), "largest_rss": max(rss.values(), default=(0, "")),
            "largest_private": max(anon.values(), default=(0, "")),
            "private_sum": (sum(v for v, _ in anon.values()), ""),
            "shm": (_shm_used(), "")}


def _shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def run_embed(cmd: list[str]) -> dict:
    """Run the embedding job, sampling its process tree's RSS; returns wall time and peaks."""
    keys = ("driver_rss", "largest_rss", "largest_private", "private_sum", "shm")
    peaks, done, shm0 = {k: (0, "") for k in keys}, threading.Event(), _shm_used()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def sample():
        while not done.is_set():
            for key, value in _tree_memory(proc.pid).items():
                peaks[key] = max(peaks[key], value)
            time.sleep(0.2)
    threading.Thread(target=sample, daemon=True).start()
    lines, streamed = [], {}
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("embed:"):
            print("  " + line.rstrip(), flush=True)
        found = re.match(r"embed: streamed (\d+) rows in ([\d.]+) s", line)
        if found:
            streamed = {"streaming_s": float(found[2]),
                        "streaming_clips_per_s": int(found[1]) / float(found[2])}
    rc = proc.wait()
    done.set()
    if rc != 0:
        raise RuntimeError("jobs.embed failed:\n" + "\n".join(lines[-30:]))
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    return {"seconds": time.perf_counter() - start, **streamed,
            "driver_peak_rss_mib": mib(peaks["driver_rss"][0]),
            "largest_process_peak_rss_mib": mib(peaks["largest_rss"][0]),
            "largest_process": peaks["largest_rss"][1],
            "largest_private_peak_mib": mib(peaks["largest_private"][0]),
            "largest_private_process": peaks["largest_private"][1],
            "tree_private_peak_mib": mib(peaks["private_sum"][0]),
            "object_store_shm_peak_mib": mib(peaks["shm"][0] - shm0)}


def brute_force(q: np.ndarray, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One full (Q, N) score matrix, a stable descending sort: ties go to the lower row."""
    s = q @ g.T
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(s, rows, 1)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def available(backends: list[str]) -> list[str]:
    out = []
    for b in backends:
        try:
            out.append(ivf_lists.backend(b))
        except Exception as err:  # faiss not installed: said in the output, not fatal
            print(f"skipping the {b} backend: {err}", flush=True)
    return out


def search_bench(gallery: np.ndarray, queries: np.ndarray, args) -> dict:
    k = args.k
    nref = min(args.ref_queries, len(queries), max(1, 20_000_000 // len(gallery)))
    exact_rows, exact_scores = retrieval.exact_search(queries[:nref], gallery, k)
    ref_rows, ref_scores = brute_force(queries[:nref], gallery, k)
    same = (exact_rows == ref_rows).all(axis=1)
    backends = available(args.backends)
    ivfs, build_s = {}, {}
    for b in backends:
        build_s[b], ivfs[b] = timed(lambda b=b: ivf_lists.build(gallery, args.nlist,
                                                                backend_name=b))
    runs: dict[str, list[float]] = {}
    results = {}
    names = ["exact"] + [f"{b} ivf nprobe {p}" for b in backends for p in args.nprobe]
    for rep in range(args.repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            fn = (lambda: retrieval.exact_search(queries, gallery, k)) if name == "exact" else \
                (lambda b=name.split()[0], p=int(name.split()[-1]): ivfs[b].search(queries, k, p))
            seconds, results[name] = timed(fn)
            runs.setdefault(name, []).append(seconds)
    best = {n: min(r) for n, r in runs.items()}
    exact = results["exact"][0]
    return {"gallery_rows": len(gallery), "width": gallery.shape[1], "queries": len(queries),
            "k": k, "ref_queries": nref, "exact_equals_reference_rows": int(same.sum()),
            "exact_max_abs_score_diff": float(np.abs(exact_scores - ref_scores).max()),
            "ivf_nlist": {b: ivfs[b].nlist for b in backends}, "ivf_build_s": build_s,
            "seconds": best, "runs": runs,
            "queries_per_s": {n: len(queries) / s for n, s in best.items()},
            "recall": {n: retrieval.recall_at_k(results[n][0], exact) for n in names[1:]},
            "speedup": {n: best["exact"] / best[n] for n in names[1:]}}


def report(out: dict) -> None:
    s = out["search"]
    print(f"exact search vs brute-force numpy: {s['exact_equals_reference_rows']}/"
          f"{s['ref_queries']} queries with identical top-{s['k']} rows, max |score diff| "
          f"{s['exact_max_abs_score_diff']:.2g}")
    for b, nlist in s["ivf_nlist"].items():
        print(f"IVF ({b}): {nlist} lists built in {s['ivf_build_s'][b]:.1f} s on "
              f"{s['gallery_rows']} x {s['width']}; {s['queries']} queries, k {s['k']}")
    print(f"{'search':24s} {'seconds':>8s} {'queries/s':>10s} {'recall@k':>9s} {'speed-up':>9s}")
    for name, sec in s["seconds"].items():
        print(f"{name:24s} {sec:8.3f} {s['queries_per_s'][name]:10.0f} "
              f"{s['recall'].get(name, 1.0):9.4f} {s['speedup'].get(name, 1.0):8.1f}x")
    for rows, e in sorted({**out.get("embed_scaling", {}),
                           **({out["rows"]: out["embed"]} if "embed" in out else {})}.items()):
        print(f"embed: {rows} clips in {e['seconds']:.1f} s ({e['clips_per_s']:.0f} "
              f"clips/s incl. Ray start and model loading; streaming {e['streaming_s']:.1f} s, "
              f"{e['streaming_clips_per_s']:.0f} clips/s); peak RSS: driver "
              f"{e['driver_peak_rss_mib']} MiB, largest {e['largest_process_peak_rss_mib']} MiB "
              f"({e['largest_process']}); private memory: largest "
              f"{e['largest_private_peak_mib']} MiB ({e['largest_private_process']}), all "
              f"processes {e['tree_private_peak_mib']} MiB; object store (/dev/shm) "
              f"{e['object_store_shm_peak_mib']} MiB; features {e['features_mib']} MiB")


def synthetic_embeddings(n: int, dim: int, seed: int, classes: int = 10) -> np.ndarray:
    """Unit rows like a model's embeddings: `classes` centres plus noise, in 1M-row blocks."""
    centres = np.random.default_rng(0).normal(size=(classes, dim))
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, 1 << 20):
        b = min(n, a + (1 << 20))
        out[a:b] = centres[rng.integers(classes, size=b - a)] + rng.normal(size=(b - a, dim))
    return retrieval.normalise(out)


def queries_for(model: dict, n: int, tracking_uri: str) -> np.ndarray:
    from tnn.tracking import registry
    from tnn.data.synthetic import synthetic
    enc = registry.load_encoders(f"runs:/{model['run_id']}", tracking_uri=tracking_uri)
    return enc.audio.predict(synthetic(n=n, seed=2).audio)


def embed_once(rows: int, tracking_uri: str, args) -> tuple[dict, str]:
    """Write `synthetic:rows` feature shards to the S3 server and embed them (subprocess)."""
    from tnn.data.write import write
    data, index_uri = f"s3://bench/features-{rows}", f"s3://bench/index-{rows}"
    seconds, _ = timed(lambda: write(f"synthetic:{rows}", data, rows_per_shard=25_000,
                                     log=lambda *a, **k: None))
    print(f"wrote {rows} feature rows to {data} in {seconds:.0f} s", flush=True)
    cmd = [sys.executable, "-m", "jobs.embed", "--model", "models:/tnn@champion",
           "--data", data, "--out", index_uri, "--tracking-uri", tracking_uri,
           "--batch-size", str(args.batch_size), "--concurrency", str(args.concurrency)] + \
        (["--object-store-mib", str(args.object_store_mib)] if args.object_store_mib else [])
    out = run_embed(cmd)
    out.update(clips_per_s=rows / out["seconds"],
               features_mib=round(rows * 4 * (128 + 1024) / 2**20, 1))
    return out, index_uri


def run_all(args, tmp: str) -> dict:
    from bench.ingest import moto_server
    from tnn.tracking.registry import smoke_model
    from tnn.data import storage
    out: dict = {"rows": args.rows}
    with moto_server():
        storage.s3_client().create_bucket(Bucket="bench")
        tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        model = smoke_model(tracking_uri, data="synthetic:n=20000,seed=1")
        out["model"] = {"method": "c-cca on synthetic:n=20000,seed=1", **model}
        fs = storage.s3_filesystem()
        for rows in args.also_rows:  # memory against gallery size
            out.setdefault("embed_scaling", {})[rows] = embed_once(rows, tracking_uri, args)[0]
            fs.delete_dir(f"bench/features-{rows}")
        out["embed"], index_uri = embed_once(args.rows, tracking_uri, args)
        seconds, index = timed(lambda: embedding_shards.load_index(index_uri))
        out["index_load_s"] = seconds
        queries = queries_for(index.model, args.queries, tracking_uri)
        out["search"] = search_bench(index.emb["visual_emb"], retrieval.normalise(queries),
                                     args)
    return out


def main(argv=None) -> int:
    args = parse(argv)
    if args.synthetic:
        gallery = synthetic_embeddings(args.rows, args.dim, seed=1)
        out = {"rows": args.rows, "gallery": f"synthetic {args.dim}-d embeddings",
               "search": search_bench(gallery, synthetic_embeddings(args.queries, args.dim, 2),
                                      args)}
    elif args.index:
        index = embedding_shards.load_index(args.index)
        out = {"rows": len(index), "search": search_bench(
            index.emb["visual_emb"], retrieval.normalise(queries_for(
                index.model, args.queries, args.tracking_uri)), args)}
    else:
        with tempfile.TemporaryDirectory(prefix="tnn-bench-retrieval-") as tmp:
            out = run_all(args, tmp)
    report(out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
