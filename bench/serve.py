"""Benchmark: the Ray Serve search endpoint against in-process search, latency and queries/s.

    flock /tmp/tnn-ray.lock nice python -m bench.serve            # 100k-clip gallery
    flock /tmp/tnn-ray.lock python -m bench.serve --rows 20000 --queries 200 --clients 1,8

1. Registers c-cca fitted on `synthetic:n=20000,seed=1` as tnn@champion in a temp MLflow store
   and embeds a gallery of `--rows` synthetic clips (128-d audio, 1024-d visual -> 9-d) with it
   into an index (in this process, 20k clips at a time).
2. In-process baseline: raw audio features of `--queries` other synthetic clips, one query at
   a time: the champion's audio branch (`registry.load_encoders`), then exact search of the
   visual embeddings (`Index.search`), top `--k`; also the same queries in batches of 32 (what
   the endpoint's batcher can reach at most).
3. The endpoint: a local Ray, the app of cluster/serve.yaml (`tnn.ray.serving.start`) on
   127.0.0.1, and `--clients` concurrent clients (threads of this process, one kept-alive HTTP
   connection each) sending the same queries, one per request; p50/p99 latency and queries/s
   per level, and queries/s relative to the in-process one-by-one rate (the issue's target:
   >= 0.5x at 32 clients, p99 < 10x p50).
Prints a table, then one JSON line (`--json FILE` also writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK = 20_000


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="gallery clips")
    p.add_argument("--queries", type=int, default=640, help="queries per level")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", help="also write the JSON here")
    return p.parse_args(argv)


def gallery(uri: str, rows: int, out: str) -> None:
    """`rows` synthetic clips embedded by tnn@champion into an index at `out`."""
    from tnn.data.synthetic import synthetic
    from tnn.serve.index import EmbeddingWriter
    from tnn.tracking import registry
    enc = registry.load_encoders("models:/tnn@champion", tracking_uri=uri)
    with EmbeddingWriter(out, model=enc.info, source=f"synthetic:{rows}") as writer:
        for start in range(0, rows, CHUNK):
            p = synthetic(n=min(CHUNK, rows - start), seed=100 + start // CHUNK)
            writer.write(np.char.add(f"c{start // CHUNK}-", p.clip_ids.astype(str)), p.labels,
                         enc.audio.predict(p.audio), enc.visual.predict(p.visual))


def stats(latencies: list[float], wall: float) -> dict:
    ms = np.asarray(latencies) * 1e3
    return {"queries": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "qps": len(ms) / wall}


def in_process(uri: str, index_uri: str, queries: np.ndarray, k: int) -> dict:
    """One query at a time (embed + exact search), and in batches of 32."""
    from tnn.serve.index import load_index
    from tnn.tracking import registry
    enc, index = registry.load_encoders("models:/tnn@champion", tracking_uri=uri), \
        load_index(index_uri)
    lat, embed_s = [], 0.0
    t0 = time.perf_counter()
    for i in range(len(queries)):
        a = time.perf_counter()
        emb = enc.audio.predict(queries[i:i + 1])
        b = time.perf_counter()
        index.search(emb, "audio", k, model=enc.info)
        lat.append(time.perf_counter() - a)
        embed_s += b - a
    out = {"one_by_one": {**stats(lat, time.perf_counter() - t0),
                          "embed_share": embed_s / sum(lat)}}
    t0 = time.perf_counter()
    for i in range(0, len(queries), 32):
        index.search(enc.audio.predict(queries[i:i + 32]), "audio", k, model=enc.info)
    out["batches_of_32_qps"] = len(queries) / (time.perf_counter() - t0)
    return out


def endpoint(url: str, queries: np.ndarray, clients: int, k: int) -> dict:
    """`clients` threads, each with its own connection, sharing the queries one per request."""
    from tnn.ray.serving import Client
    bodies = [{"audio": q[None].tolist(), "k": k} for q in queries]
    lock, todo = threading.Lock(), iter(range(len(bodies)))

    def work() -> list[float]:
        client, mine = Client(url), []
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                client.close()
                return mine
            a = time.perf_counter()
            client.search(bodies[i])
            mine.append(time.perf_counter() - a)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        parts = [pool.submit(work) for _ in range(clients)]
        lat = [x for f in parts for x in f.result()]
    return stats(lat, time.perf_counter() - t0)


def run(args, tmp: str) -> dict:
    from tnn.data.synthetic import synthetic
    from tnn.ray import serving
    from tnn.ray.session import TEST_HEAD_ENV, init_ray, shutdown
    from tnn.tracking.registry import smoke_model
    uri, index_uri = f"sqlite:///{tmp}/mlflow.db", f"{tmp}/index"
    model = smoke_model(uri, data="synthetic:n=20000,seed=1")
    t0 = time.perf_counter()
    gallery(uri, args.rows, index_uri)
    out = {"rows": args.rows, "k": args.k, "model": model, "gallery_s": time.perf_counter() - t0,
           "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}
    queries = synthetic(n=args.queries, seed=7).audio.astype(np.float32)
    out["in_process"] = in_process(uri, index_uri, queries, args.k)
    for key, value in TEST_HEAD_ENV.items():
        os.environ.setdefault(key, value)
    started = init_ray()
    try:
        url, _ = serving.start(serving.read_config(serving_config()), "models:/tnn@champion",
                               index_uri, uri, host="127.0.0.1", port=free_port())
        endpoint(url, queries[:64], 8, args.k)  # warm-up
        base = out["in_process"]["one_by_one"]["qps"]
        out["endpoint"] = {}
        for c in (int(x) for x in args.clients.split(",")):
            level = endpoint(url, queries, c, args.k)
            out["endpoint"][c] = {**level, "vs_in_process": level["qps"] / base,
                                  "p99_over_p50": level["p99_ms"] / level["p50_ms"]}
        serving.stop()
    finally:
        shutdown(started)
    return out


def serving_config() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "cluster", "serve.yaml")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(out: dict) -> None:
    one = out["in_process"]["one_by_one"]
    print(f"gallery {out['rows']} clips, top {out['k']}, {out['cpus']} CPUs, load average "
          f"{out['load_avg']:.1f}")
    print(f"{'':24s} {'p50 ms':>8s} {'p99 ms':>8s} {'queries/s':>10s} {'vs in-process':>14s}")
    print(f"{'in-process, one by one':24s} {one['p50_ms']:8.2f} {one['p99_ms']:8.2f} "
          f"{one['qps']:10.0f} {1:14.2f}   (embedding {one['embed_share']:.0%} of it)")
    b32 = out["in_process"]["batches_of_32_qps"]
    print(f"{'in-process, batches of 32':24s} {'':8s} {'':8s} {b32:10.0f} {b32 / one['qps']:14.2f}")
    for c, level in out["endpoint"].items():
        print(f"{f'endpoint, {c} clients':24s} {level['p50_ms']:8.2f} {level['p99_ms']:8.2f} "
              f"{level['qps']:10.0f} {level['vs_in_process']:14.2f}   (p99/p50 "
              f"{level['p99_over_p50']:.1f})")


def main(argv=None) -> int:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="tnn-bench-serve-") as tmp:
        out = run(args, tmp)
    report(out)
    line = json.dumps(out)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
