"""Benchmark: training speed of both pipelines at VEGAS sizes, and mining cost against batch size.

    python -m bench.train_speed [--n 8192 --threads 1] [--smoke]

Part 1: samples/s of one training epoch (forward, loss, backward, Adam) on synthetic
VEGAS-shaped data (128-d audio, 1024-d visual, 10 classes) for `tnn-c-cca` (the paper's network
on 9-d cluster-CCA projections) and `tnn-e2e` (wide_bn branches on the raw features, triplet +
cluster-CCA loss), with the batch-all and batch-hard miners.
Part 2: time of one loss forward+backward on 10-d embeddings against the batch size B, for
batch-all through the fused path (never lists triplets, O(B^2 log B)), batch-all through the
explicit index list (O(B^3) triplets: the naive way, stopped once a step exceeds the budget),
and batch-hard (O(B^2)). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from tnn.core.losses import triplet_loss
from tnn.methods import MethodsConfig
from tnn.core.mining import batch_all
from tnn.methods.linear import input_maps
from tnn.methods.tnn import build_net, loss_kwargs, run_epoch
from tnn.data.synthetic import synthetic


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8192, help="training clips for part 1")
    ap.add_argument("--batch", type=int, default=256, help="batch size for part 1")
    ap.add_argument("--sizes", default="64,256,1024,2048,4096", help="batch sizes for part 2")
    ap.add_argument("--budget", type=float, default=5.0, help="seconds: stop the naive path past this")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--smoke", action="store_true", help="n=1024, sizes 64,256")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.sizes = 1024, "64,256"
    return args


def epoch_speed(pairs, tnn_cfg, miner: str, batch: int) -> float:
    """Samples/s of one epoch after a warm-up epoch."""
    cfg = dataclasses.replace(tnn_cfg, train=dataclasses.replace(tnn_cfg.train, miner=miner,
                                                                 batch_size=batch))
    a_in, v_in = input_maps(pairs, cfg.cca, project=cfg.pipeline == "two-stage")
    net = build_net(cfg, a_in, v_in, pairs)
    with torch.no_grad():
        xa, xv = a_in(torch.from_numpy(pairs.audio)), v_in(torch.from_numpy(pairs.visual))
    labels, gen = torch.from_numpy(pairs.labels), torch.Generator().manual_seed(0)
    opt, kw = torch.optim.Adam(net.parameters()), loss_kwargs(cfg, pairs.num_classes)
    run_epoch(net, opt, xa, xv, labels, batch, gen, kw)
    start = time.perf_counter()
    run_epoch(net, opt, xa, xv, labels, batch, gen, kw)
    return (len(labels) // batch) * batch / (time.perf_counter() - start)


def step_time(fn, b: int, repeats: int = 3) -> float:
    """Median seconds of fn(q, labels, r) forward + backward on random 10-d embeddings."""
    g = torch.Generator().manual_seed(b)
    q = torch.rand(b, 10, generator=g, requires_grad=True)
    r = torch.rand(b, 10, generator=g, requires_grad=True)
    labels = torch.randint(0, 10, (b,), generator=g)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(q, labels, r).backward()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def naive_batch_all(q, labels, r):
    trip = batch_all(labels, labels)  # the explicit (a, p, n) index list
    return triplet_loss(q, labels, r, labels, 0.5, miner="batch_all", triplets=trip).loss


LOSSES = {
    "batch_all_fused": lambda q, y, r: triplet_loss(q, y, r, y, 0.5, miner="batch_all").loss,
    "batch_all_index_list": naive_batch_all,
    "batch_hard": lambda q, y, r: triplet_loss(q, y, r, y, 0.5, miner="batch_hard").loss,
}


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    pairs = synthetic(n=args.n, seed=0)
    methods = MethodsConfig()
    speeds = {f"{name}/{miner}": epoch_speed(pairs, cfg, miner, args.batch)
              for name, cfg in (("tnn-c-cca", methods.tnn_c_cca), ("tnn-e2e", methods.tnn_e2e))
              for miner in ("batch_all", "batch_hard")}
    steps: dict[str, dict[int, float | None]] = {k: {} for k in LOSSES}
    for b in map(int, args.sizes.split(",")):
        for name, fn in LOSSES.items():
            prev = [t for t in steps[name].values() if t is not None]
            too_slow = name == "batch_all_index_list" and prev and prev[-1] > args.budget / 8
            steps[name][b] = None if too_slow else step_time(fn, b, 1 if b > 1024 else 3)
    print(f"part 1: samples/s of one epoch, n={args.n}, batch {args.batch}, 128-d audio, "
          f"1024-d visual, {args.threads} thread(s)")
    for key, v in speeds.items():
        print(f"  {key:26s} {v:10.0f}")
    print("part 2: seconds per loss forward+backward (10-d embeddings, 10 classes)")
    print(f"  {'B':>6s} " + " ".join(f"{k:>22s}" for k in LOSSES))
    for b in map(int, args.sizes.split(",")):
        cells = [f"{steps[k][b]:22.4f}" if steps[k][b] is not None else f"{'(skipped: too slow)':>22s}"
                 for k in LOSSES]
        print(f"  {b:6d} " + " ".join(cells))
    print(json.dumps({"n": args.n, "batch": args.batch, "threads": args.threads,
                      "epoch_samples_per_s": speeds, "loss_step_seconds": steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
