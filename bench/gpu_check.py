"""GPU check: the GPU-only tests plus a single-GPU throughput bench at VEGAS widths, one table.

    python -m bench.gpu_check                  # on a machine with a CUDA device (< 8 minutes)
    python -m bench.gpu_check --json out.json  # also write the results
    python -m bench.gpu_check --device cpu --tiny --no-tests   # exercise the code paths on CPU

On a machine without a CUDA device it says so and exits 0 (nothing to check). On a GPU it
1. runs the tests marked `gpu` (`pytest -m gpu`: NCCL gather, SyncBatchNorm, `--gpu` embedding,
   `use_gpu` trials) in a subprocess and counts passed / failed / skipped;
2. measures, on synthetic VEGAS-shaped tensors already on the device (128-d audio, 1024-d
   visual, 10 classes):
   - training samples/s of both pipelines (tnn-e2e: wide_bn branches, triplet + cluster-CCA;
     tnn-c-cca: the authors' branches and loss, here on the raw widths) at batch 256 / 1024 / 4096:
     forward, `combined_loss`, backward and Adam, synchronised;
   - the step time of the loss alone (forward + backward of `combined_loss` on fixed embeddings)
     with batch-all and batch-hard mining;
   - embedding clips/s of the e2e network in eval mode (both branches, batch 8192).
Each measurement is a warm-up step then timed steps until `--seconds` (default 2 s) or
`--steps` have passed, so the whole bench stays well under 8 minutes. Prints a table, then one
JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import time

import torch

from tnn.core.losses import combined_loss
from tnn.core.model import PRESETS, TwoBranchNet
from tnn.methods import e2e_default, two_stage_default
from tnn.methods.tnn import e2e_dim, loss_kwargs, net_out_dim

AUDIO, VISUAL, CLASSES = 128, 1024, 10
PIPELINES = {"tnn-e2e": e2e_default, "tnn-c-cca": two_stage_default}


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (to exercise the code)")
    ap.add_argument("--batches", default="256,1024,4096", help="batch sizes, comma-separated")
    ap.add_argument("--steps", type=int, default=50, help="at most this many timed steps each")
    ap.add_argument("--seconds", type=float, default=2.0, help="at most this long per measurement")
    ap.add_argument("--embed-clips", type=int, default=200_000, help="clips to embed")
    ap.add_argument("--tiny", action="store_true", help="batches 32,64, 2 steps, 1,000 clips")
    ap.add_argument("--no-tests", action="store_true", help="skip the pytest -m gpu run")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.tiny:
        args.batches, args.steps, args.seconds, args.embed_clips = "32,64", 2, 0.5, 1000
    try:
        args.batches = [int(b) for b in str(args.batches).split(",")]
    except ValueError:
        ap.error(f"--batches must be comma-separated integers; got {args.batches!r}")
    if any(b < 2 for b in args.batches):
        ap.error(f"--batches must be >= 2; got {args.batches}")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, steps: int, seconds: float) -> float:
    """Seconds per call of ``fn``: one warm-up call, then up to ``steps`` calls or ``seconds``."""
    fn()
    sync(device)
    start, done = time.perf_counter(), 0
    while done < max(1, steps) and (done == 0 or time.perf_counter() - start < seconds):
        fn()
        done += 1
    sync(device)
    return (time.perf_counter() - start) / done


def build(name: str, device: torch.device) -> tuple[TwoBranchNet, dict]:
    cfg = PIPELINES[name]()
    branch = PRESETS[cfg.preset]
    if cfg.pipeline == "e2e":
        branch = dataclasses.replace(branch, out_dim=e2e_dim(cfg.cca, CLASSES))
    if cfg.dropout is not None:
        branch = dataclasses.replace(branch, dropout=cfg.dropout)
    net = TwoBranchNet(AUDIO, VISUAL, branch, branch, shared=False).to(device)
    return net, loss_kwargs(cfg, CLASSES, net_out_dim(cfg, CLASSES))


def batch(n: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xa, xv = torch.randn(n, AUDIO, generator=g), torch.randn(n, VISUAL, generator=g)
    return xa.to(device), xv.to(device), torch.arange(n).remainder(CLASSES).to(device)


def train_rates(args, device: torch.device) -> dict:
    out = {}
    for name in PIPELINES:
        net, kwargs = build(name, device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for b in args.batches:
            xa, xv, y = batch(b, device)

            def step():
                emb = net(xa, xv)
                terms = combined_loss(emb["audio_emb"], emb["visual_emb"], y, **kwargs)
                opt.zero_grad(set_to_none=True)
                terms["total"].backward()
                opt.step()
            out[f"{name} b{b}"] = b / timed(step, device, args.steps, args.seconds)
    return out


def loss_times(args, device: torch.device) -> dict:
    net, kwargs = build("tnn-e2e", device)
    out = {}
    for b in args.batches:
        xa, xv, y = batch(b, device)
        with torch.no_grad():
            emb = net(xa, xv)
        a = emb["audio_emb"].detach().requires_grad_(True)
        v = emb["visual_emb"].detach().requires_grad_(True)
        for miner in ("batch_all", "batch_hard"):
            def step():
                combined_loss(a, v, y, **{**kwargs, "miner": miner})["total"].backward()
            out[f"{miner} b{b}"] = 1e3 * timed(step, device, args.steps, args.seconds)
    return out


@torch.no_grad()
def embed_rate(args, device: torch.device) -> float:
    net, _ = build("tnn-e2e", device)
    net.eval()
    xa, xv, _ = batch(min(args.embed_clips, 8192), device)
    rounds = max(1, args.embed_clips // len(xa))

    def all_clips():
        for _ in range(rounds):
            net.encode_audio(xa)
            net.encode_visual(xv)
    return rounds * len(xa) / timed(all_clips, device, 3, args.seconds)


def gpu_tests() -> dict:
    """`pytest -m gpu` in a subprocess: counts from its summary line."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                           "tests"], capture_output=True, text=True, timeout=300)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail):
        counts[word.rstrip("s") if word.startswith("error") else word] = int(number)
    return {"returncode": proc.returncode, "summary": tail, **counts}


def table(res: dict) -> str:
    lines = [f"GPU check on {res['device_name']}"]
    if "tests" in res:
        lines.append(f"  gpu tests: {res['tests']['summary']}")
    lines.append(f"  {'training (forward + loss + backward + Adam)':<46} {'samples/s':>12}")
    lines += [f"  {k:<46} {v:>12,.0f}" for k, v in res["train_samples_per_s"].items()]
    lines.append(f"  {'loss step, e2e embeddings (forward + backward)':<46} {'ms':>12}")
    lines += [f"  {k:<46} {v:>12.3f}" for k, v in res["loss_step_ms"].items()]
    lines.append(f"  {'embedding, both branches (clips/s)':<46} {res['embed_clips_per_s']:>12,.0f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device on this machine: the GPU check has nothing to run here "
              "(run `python -m bench.gpu_check` on a GPU machine)")
        return 0
    device = torch.device(args.device)
    torch.manual_seed(0)
    res = {"device": str(device), "device_name": torch.cuda.get_device_name(device)
           if device.type == "cuda" else "cpu", "batches": args.batches}
    if not args.no_tests:
        res["tests"] = gpu_tests()
    res["train_samples_per_s"] = train_rates(args, device)
    res["loss_step_ms"] = loss_times(args, device)
    res["embed_clips_per_s"] = embed_rate(args, device)
    print(table(res))
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 1 if res.get("tests", {}).get("failed") or res.get("tests", {}).get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
