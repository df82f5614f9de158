"""Benchmark: plain torch loop vs Ray Train with 1 and 2 workers, and the gather + mining share.

    python -m bench.train_scaling [--n 16384 --epochs 3 --json out.json]
    python -m bench.train_scaling --smoke           # n 4096, 2 epochs, batches 256 and 1024

Same data (synthetic VEGAS-shaped: 128-d audio, 1024-d visual, 10 classes), same method
(tnn-e2e: wide_bn branches, triplet + cluster-CCA loss), measured side by side in one run at
global batch 256 and 1024 (`--loop-batches`), torch at 1 thread per process:

    plain         `tnn.methods.tnn.run_epoch` on in-memory tensors (the `fit_tnn` path), before
                  and after the Ray runs of its batch: the faster counts
    ray 1         `tnn.ray.train_loop.fit`, 1 worker: the default `shard_in_memory="auto"`
                  holds the worker's rows in memory after the first epoch (`tnn.ray.local_shard`)
    ray 1 stream  the same with `shard_in_memory="never"`: every epoch streams from the object
                  store through the local shuffle buffer
    ray 2         2 workers (streaming: shuffle="epoch" deals new rows every epoch)

`--cpus-per-worker` each. Throughput is global training samples/s inside the epoch (best epoch
after the first); `first batch s` is the wait for an epoch's first batch (Ray Data's per-epoch
execution start when streaming). Where a gap goes (`bench.cpu_share`): samples/s = `CPU rate`
(samples per CPU second of the training process) x `on-CPU` (its share of the epoch on a CPU);
`Ray cores`: Ray's other processes and the driver over the epoch (for Ray: between two epoch
lines); `other cores`: other jobs. Targets: ray 1 >= 0.95x plain at both batches; ray 2 >=
1.6x ray 1 (2 cores, 1 CPU per worker).

Part 2, 2 workers under DDP at global batch 256/1024/4096: the time of a full step through
`global_batch_loss` (forward, gather, loss, backward with the gradient all-reduces, Adam) and,
measured alone on the same shapes, the gather (`gather_batch` forward + an all-reduce of its
gradient's size) and the loss forward; and the Python-level collectives of one step (DDP's
gradient all-reduce, in C++, comes on top). Batch-all mining is fused with the hinge (it never lists
triplets), so "mining" is the whole triplet + CCA loss forward: an upper bound. Target: gather
+ mining <= 15% of the step. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

from bench import cpu_share
from tnn.methods import e2e_default
from tnn.methods.linear import input_maps
from tnn.methods.tnn import build_net, loss_kwargs, run_epoch
from tnn.ray.session import TEST_HEAD_ENV as RAY_ENV


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.train_scaling",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16384, help="synthetic clips (all folds)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--loop-batches", default="256,1024", help="global batches for part 1")
    ap.add_argument("--batches", default="256,1024,4096", help="global batches for part 2")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per batch in part 2")
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.epochs, args.batches, args.steps = 4096, 2, "256,1024", 2
    return args


def job_config(args, workers: int, batch: int = 256, **changes):
    from tnn.train.config import MLflowConfig, TrainJobConfig
    tnn = e2e_default()
    tnn = dataclasses.replace(tnn, train=dataclasses.replace(
        tnn.train, epochs=args.epochs, patience=args.epochs, batch_size=batch))
    return TrainJobConfig(data=f"synthetic:{args.n}", tnn=tnn, workers=workers, test_curve=False,
                          cpus_per_worker=args.cpus_per_worker, storage_path=args.tmp,
                          run_name=f"scaling-{workers}w-{time.time_ns()}",
                          mlflow=MLflowConfig(enabled=False), **changes)


def plain(args, batch: int = 256) -> dict:
    """`run_epoch` as `fit_tnn` runs it, on the same split and input stage."""
    from tnn.train.plan import split_in_memory
    cfg = job_config(args, 1, batch)
    fit, _, _ = split_in_memory(cfg)
    a_in, v_in = input_maps(fit, cfg.tnn.cca, project=False)
    with torch.no_grad():
        xa, xv = a_in(torch.from_numpy(fit.audio)), v_in(torch.from_numpy(fit.visual))
    torch.manual_seed(0)
    net = build_net(cfg.tnn, a_in, v_in, fit)
    opt, gen = torch.optim.Adam(net.parameters(), lr=1e-3), torch.Generator().manual_seed(0)
    kwargs = loss_kwargs(cfg.tnn, fit.num_classes, net.audio_branch.cfg.out_dim)
    rates, diag, me = [], [], os.getpid()
    for _ in range(args.epochs):
        snap, cpu, start = cpu_share.snapshot(), time.process_time(), time.perf_counter()
        run_epoch(net, opt, xa, xv, torch.from_numpy(fit.labels), batch, gen, kwargs)
        rates.append(batch * (fit.n // batch) / (wall := time.perf_counter() - start))
        cores = cpu_share.shares(snap, cpu_share.snapshot(), me, lambda pid, cmd: pid == me)
        diag.append(cpu_share.epoch(rates[-1], wall, time.process_time() - cpu, cores))
    return cpu_share.best(rates, diag)


def ray_train(args, workers: int, batch: int = 256, **changes) -> dict:
    from tnn.train.checkpoints import load_state
    from tnn.ray.prepare import prepare
    from tnn.ray.train_loop import fit
    cfg, snaps = job_config(args, workers, batch, **changes), []  # one at each epoch line
    result = fit(cfg, prepare(cfg, log=lambda s: None),
                 log=lambda *line, **kw: snaps.append(cpu_share.snapshot()))
    with result.checkpoint.as_directory() as d:
        history = load_state(d)["history"]
    rates, nan = [h["samples_per_s"] for h in history], float("nan")
    first = [h.get("first_batch_s", nan) for h in history]
    cores = [cpu_share.shares(a, b, os.getpid(), lambda pid, cmd: "RayTrainWorker" in cmd)
             for a, b in zip(snaps, snaps[1:])]  # epoch e (from 0) is cores[e - 1]
    diag = [cpu_share.epoch(h["samples_per_s"], h["train_s"], h.get("train_cpu_s", nan),
                            cores[e - 1] if 0 < e <= len(cores) else {})
            for e, h in enumerate(history)]
    return cpu_share.best(rates, diag, first_batch_s=float(np.median(first[1:] or first)))


def phase_worker(config: dict) -> None:
    """Part 2 on each Ray Train worker: full steps vs gather and loss forward alone."""
    import ray.train
    import ray.train.torch
    from tnn.train import distributed as tdist
    from tnn.core.losses import combined_loss
    torch.set_num_threads(1)
    tnn, world = e2e_default(), tdist.world_size()
    torch.manual_seed(0)
    net = build_net(tnn, torch.nn.Identity(), torch.nn.Identity(), _Widths())
    model = ray.train.torch.prepare_model(net)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    kwargs = loss_kwargs(tnn, 10, net.audio_branch.cfg.out_dim)
    grads = torch.zeros(sum(p.numel() for p in net.parameters()))  # DDP's all-reduce volume
    out = {"latency_ms": 1e3 * _timed(lambda: tdist.all_reduce_sum(torch.zeros(4)), 50),
           "grad_allreduce_ms": 1e3 * _timed(lambda: tdist.all_reduce_sum(grads), 10),
           "params": grads.numel()}
    for batch in config["batches"]:
        b = batch // world
        g = torch.Generator().manual_seed(tdist.rank())
        xa, xv = torch.randn(b, 128, generator=g), torch.randn(b, 1024, generator=g)
        labels = torch.randint(0, 10, (b,), generator=g)

        def step():
            emb = model(xa, xv)
            terms = tdist.global_batch_loss(emb["audio_emb"], emb["visual_emb"], labels,
                                            rows=b, **kwargs)  # as `train_epoch`
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            return emb

        emb = step()  # warm-up
        a, v = emb["audio_emb"].detach(), emb["visual_emb"].detach()
        t_step = _timed(step, config["steps"])
        calls = _collectives(step)
        t_gather = _timed(lambda: tdist.all_reduce_sum(  # forward gather + backward all-reduce
            torch.cat(tdist.gather_batch(labels, a, v, b)[1:], 1)), config["steps"])
        refs, ra, rv = tdist.gather_batch(labels, a, v, b)
        t_loss = _timed(lambda: combined_loss(a, v, labels, ref_audio_emb=ra, ref_visual_emb=rv,
                                              ref_labels=refs, **kwargs), config["steps"])
        out[batch] = {"step_s": t_step, "gather_s": t_gather, "loss_forward_s": t_loss,
                      "share": (t_gather + t_loss) / t_step, "collectives": calls}
    if tdist.rank() == 0:  # Result.metrics only carries metrics reported with a checkpoint
        with open(config["out"], "w") as f:
            json.dump(out, f)
    ray.train.report({})


class _Widths:
    audio, visual, num_classes = np.zeros((1, 128), np.float32), np.zeros((1, 1024), np.float32), 10


def _timed(fn, steps: int) -> float:
    from tnn.train import distributed as tdist
    tdist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    tdist.barrier()
    return (time.perf_counter() - start) / steps


def _collectives(fn) -> int:
    """Python-level collectives (all_gather, all_reduce) of one call of ``fn``; DDP's own
    gradient all-reduce runs in C++ and is not counted."""
    import torch.distributed as dist
    calls, saved = [0], {name: getattr(dist, name) for name in ("all_gather", "all_reduce")}

    def counted(f):
        def call(*a, **k):
            calls[0] += 1
            return f(*a, **k)
        return call
    try:
        for name, f in saved.items():
            setattr(dist, name, counted(f))
        fn()
    finally:
        for name, f in saved.items():
            setattr(dist, name, f)
    return calls[0]


def phases(args) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    out = os.path.join(args.tmp, "phases.json")
    trainer = TorchTrainer(phase_worker, train_loop_config={
        "batches": [int(b) for b in args.batches.split(",")], "steps": args.steps, "out": out},
        scaling_config=ScalingConfig(num_workers=2,
                                     resources_per_worker={"CPU": args.cpus_per_worker}),
        run_config=RunConfig(name=f"phases-{time.time_ns()}", storage_path=args.tmp))
    trainer.fit()
    with open(out) as f:
        return json.load(f)


def table(res: dict) -> str:
    lines, parts = [f"{'loop':13s} {'batch':>5s} {'samples/s':>10s} {'first batch s':>13s} "
                    f"{'ratio':>6s} {'CPU rate':>9s} {'on-CPU':>7s} {'Ray cores':>9s} "
                    f"{'other cores':>11s}"], []
    for batch, row in res["loops"].items():
        p = row["plain"]
        for key, name in (("plain", "plain"), ("ray_1", "ray 1"), ("ray_1_stream", "ray 1 stream")):
            r = row[key]
            lines.append(f"{name:13s} {batch:>5} {r['samples_per_s']:10.0f} "
                         f"{r.get('first_batch_s', float('nan')):13.3f} "
                         f"{r['samples_per_s'] / p['samples_per_s']:5.2f}x {r['cpu_rate']:9.0f} "
                         f"{r['on_cpu']:7.1%} {r['ray_cores']:9.2f} {r['other_cores']:11.2f}"
                         + ("  (target >= 0.95x)" if key == "ray_1" else ""))
        r = row["ray_1"]
        parts.append(f"batch {batch}: ray 1 / plain {r['samples_per_s'] / p['samples_per_s']:.2f} "
                     f"= samples per CPU s {r['cpu_rate'] / p['cpu_rate']:.2f} x on-CPU share "
                     f"{r['on_cpu'] / p['on_cpu']:.2f}; Ray's processes {r['ray_cores']:.2f} cores "
                     f"(plain: {p['ray_cores']:.2f}), other jobs {r['other_cores']:.2f} "
                     f"(plain: {p['other_cores']:.2f})")
    lines += parts
    r1, r2 = res["ray_1"]["samples_per_s"], res["ray_2"]["samples_per_s"]
    lines += [f"{'ray 2':13s} {256:>5} {r2:10.0f} {res['ray_2']['first_batch_s']:13.3f}  "
              f"{r2 / r1:.2f}x ray 1 stream (target >= 1.6)",
             f"collective latency (small all-reduce, 2 ranks): {res['latency_ms']:.2f} ms",
             f"all-reduce of the {res['params']} gradients (DDP's volume per step): "
             f"{res['grad_allreduce_ms']:.1f} ms", "",
             f"{'batch':>6s} {'step ms':>8s} {'gather ms':>10s} {'loss fwd ms':>12s} {'share':>6s} "
             f"{'collectives':>11s}"]
    for batch, ph in res["phases"].items():
        lines.append(f"{batch:6d} {1e3 * ph['step_s']:8.1f} {1e3 * ph['gather_s']:10.1f} "
                     f"{1e3 * ph['loss_forward_s']:12.1f} {ph['share']:6.1%} "
                     f"{ph['collectives']:11d}  (share target <= 15%)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray.data  # binds `ray` too
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        res = {"n": args.n, "epochs": args.epochs, "cpus_per_worker": args.cpus_per_worker,
               "loops": {}}
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=True,
                 dashboard_host="127.0.0.1", logging_level="WARNING", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            for batch in (int(b) for b in args.loop_batches.split(",")):
                runs = [plain(args, batch), ray_train(args, 1, batch),  # side by side; plain
                        ray_train(args, 1, batch, shard_in_memory="never"), plain(args, batch)]
                res["loops"][batch] = {  # before and after, the faster counts (machine drift)
                    "plain": max(runs[0], runs[3], key=lambda r: r["samples_per_s"]),
                    "ray_1": runs[1], "ray_1_stream": runs[2],
                    "plain_runs": [runs[0]["samples_per_s"], runs[3]["samples_per_s"]]}
            res["ray_1"] = res["loops"][256]["ray_1_stream"] if 256 in res["loops"] else \
                ray_train(args, 1, shard_in_memory="never")
            res["ray_2"] = ray_train(args, 2)
            found = phases(args)
            for key in ("latency_ms", "grad_allreduce_ms", "params"):
                res[key] = found.pop(key)
            res["phases"] = {int(k): v for k, v in found.items()}
        finally:
            ray.shutdown()
    res["ratios"] = {f"{key}_over_plain_{b}": row[key]["samples_per_s"] / row["plain"][
        "samples_per_s"] for b, row in res["loops"].items() for key in ("ray_1", "ray_1_stream")}
    res["ratios"]["ray2_over_ray1_stream"] = res["ray_2"]["samples_per_s"] / res["ray_1"][
        "samples_per_s"]
    print(table(res))
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
