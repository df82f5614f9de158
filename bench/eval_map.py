"""Benchmark: exact cross-modal MAP at scale, against a per-query sklearn loop.

    python -m bench.eval_map [--n 100000 --dim 10 --classes 10 --subset 500] [--smoke]

Synthetic pairs: audio = class centre + noise, visual = class centre + noise (float32), so MAP is
neither 0 nor 1. Measures `tnn.core.metrics.cross_modal_scores` on all n x n pairs in both directions
(wall time, peak RSS), then, on `subset` audio queries with the same float32 similarity rows,
`sklearn.metrics.average_precision_score` query by query against `tnn.core.metrics.average_precision`
(all threads and one thread) side by side; the two must agree to 1e-9. Prints a table, then one
JSON line. Targets: speed-up >= 20x and peak RSS < 4 GiB at n = 100000.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
from sklearn.metrics import average_precision_score

from tnn.core import metrics


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.eval_map", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="pairs (queries per direction)")
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--noise", type=float, default=1.5, help="noise std around unit-scale centres")
    p.add_argument("--subset", type=int, default=500, help="queries timed against sklearn")
    p.add_argument("--memory-gib", type=float, default=1.0, help="metrics working-memory budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="n=2000, subset=200")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.subset = 2000, 200
    return args


def synthetic(n, dim, classes, noise, seed):
    """(audio (n, dim), visual (n, dim)) float32 and labels (n,) int64."""
    rng = np.random.default_rng(seed)
    centres, labels = rng.standard_normal((classes, dim)), rng.integers(0, classes, n)
    views = [centres[labels] + noise * rng.standard_normal((n, dim)) for _ in range(2)]
    return views[0].astype(np.float32), views[1].astype(np.float32), labels


def rss_mib(peak: bool) -> float:
    """Peak (ru_maxrss, KiB on Linux) or current (VmRSS) resident memory of this process."""
    if peak:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def timed(fn):
    """(fn(), wall seconds, CPU seconds of all threads): CPU time is robust to a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def full_run(audio, visual, labels, memory_gib) -> dict:
    rss_before = rss_mib(peak=False)
    scores, wall, cpu = timed(
        lambda: metrics.cross_modal_scores(audio, visual, labels, memory_gib=memory_gib))
    return {"a2v_map": scores["a2v_map"], "v2a_map": scores["v2a_map"],
            "mrr1_a2v": scores["mrr1_a2v"], "mrr1_v2a": scores["mrr1_v2a"],
            "full_wall_s": wall, "full_cpu_s": cpu, "rss_before_mib": rss_before,
            "peak_rss_mib": rss_mib(peak=True)}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def subset_run(audio, visual, labels, subset, seed) -> dict:
    """Same queries, same float32 similarity rows: sklearn loop vs tnn.core.metrics."""
    idx = np.random.default_rng(seed + 1).choice(len(labels), subset, replace=False)
    sim = unit(audio[idx]) @ unit(visual).T
    ours, t_ours, _ = timed(lambda: metrics.average_precision(sim, labels[idx], labels))
    ours_1, t_ours_1, c_ours_1 = timed(
        lambda: metrics.average_precision(sim, labels[idx], labels, n_threads=1))
    ref, t_sk, c_sk = timed(lambda: np.array([average_precision_score(labels == labels[i], row)
                                              for i, row in zip(idx, sim)]))
    max_diff = float(max(np.abs(ours - ref).max(), np.abs(ours_1 - ref).max()))
    assert max_diff <= 1e-9, f"tnn.core.metrics and sklearn disagree by {max_diff:.3g} on the subset"
    return {"subset_queries": subset, "sklearn_ms_per_query": 1e3 * t_sk / subset,
            "tnn_ms_per_query": 1e3 * t_ours / subset, "tnn_1thread_ms_per_query":
            1e3 * t_ours_1 / subset, "speedup": t_sk / t_ours, "speedup_1thread": t_sk / t_ours_1,
            "speedup_1thread_cpu_time": c_sk / c_ours_1, "max_abs_diff_vs_sklearn": max_diff}


def table(res: dict) -> str:
    rows = [(key, f"{value:.6g}" if isinstance(value, float) else str(value))
            for key, value in res.items()]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    audio, visual, labels = synthetic(args.n, args.dim, args.classes, args.noise, args.seed)
    res = {"n": args.n, "dim": args.dim, "classes": args.classes,
           "threads": len(os.sched_getaffinity(0))}
    res.update(full_run(audio, visual, labels, args.memory_gib))
    res.update(subset_run(audio, visual, labels, args.subset, args.seed))
    res["full_speedup_vs_sklearn_extrapolated"] = (
        2 * args.n * res["sklearn_ms_per_query"] / 1e3 / res["full_wall_s"])
    res["targets_met"] = bool(res["speedup"] >= 20 and res["peak_rss_mib"] < 4096)
    print(table(res))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
