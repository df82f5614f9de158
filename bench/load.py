"""Load: a data set several times larger than Ray's object store, trained and tuned through it.

    python -m bench.load         # 24k rows x (128 + 4096) floats = 390 MB of shards, object
                                 # store 96 MB, 1 epoch; a tune search of 3 trials on 1 slot
    python -m bench.load --rows 6000 --store-mb 80 --trials 0 --shuffle local   # as tests/

Starts a local Ray with a small `object_store_memory` (and `trial_slot` resources = --slots),
writes synthetic shards (`tnn.data.write`; wide visual rows so that the bytes, not the row
count, exceed the store), then runs `python -m jobs.train` on them with the defaults (2
workers; the projected fit set is cached in the object store, so it spills) and a
`python -m jobs.tune` search with more trials than slots (each trial reads the whole set and
keeps a subset); both jobs are subprocesses connected to this Ray (RAY_ADDRESS). A thread
samples every 0.25 s the RSS of this process and every process it started (Ray's and the
jobs' included; shared pages are counted in each process that touches them) and the bytes
used in /dev/shm above what was used before. Ray's spilling counters come from its memory
summary (`tnn.ray.compat.memory_summary`). Prints a table and one JSON line.
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
from pathlib import Path

from tnn.ray.session import TEST_HEAD_ENV as RAY_ENV

ROOT = Path(__file__).resolve().parents[1]


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=24_000)
    ap.add_argument("--visual-dim", type=int, default=4096)
    ap.add_argument("--store-mb", type=int, default=96, help="object_store_memory (>= 75)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--slots", type=int, default=1, help="trial_slot resources (trial drivers)")
    ap.add_argument("--tune-subset", type=int, default=2000, help="clips each trial keeps")
    ap.add_argument("--shuffle", default="epoch", help="train's shuffle (epoch, once, local)")
    ap.add_argument("--out", help="a directory for shards, runs and MLflow (default: a temp dir)")
    return ap.parse_args(argv)


class Peaks(threading.Thread):
    """Samples the RSS of this process and its descendants and /dev/shm usage; keeps peaks."""

    def __init__(self, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.every, self.stop = every, threading.Event()
        self.rss_total = self.rss_max = self.shm = 0
        self.rss_max_name, self.shm_before = "", shm_used()

    def run(self) -> None:
        while not self.stop.is_set():
            procs = [(p, rss(p)) for p in [os.getpid()] + descendants(os.getpid())]
            self.rss_total = max(self.rss_total, sum(r for _, r in procs))
            top = max(procs, key=lambda x: x[1])
            if top[1] > self.rss_max:
                self.rss_max, self.rss_max_name = top[1], name(top[0])
            self.shm = max(self.shm, shm_used() - self.shm_before)
            self.stop.wait(self.every)

    def summary(self) -> dict:
        mb = 1 << 20
        return {"peak_rss_sum_mb": round(self.rss_total / mb), "peak_rss_max_mb":
                round(self.rss_max / mb), "peak_rss_max_process": self.rss_max_name,
                "peak_dev_shm_mb": round(self.shm / mb)}


def shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def rss(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", _read(f"/proc/{pid}/status"), re.M)
    return int(m.group(1)) * 1024 if m else 0


def name(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace("\0", " ")[:60].strip()


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _read(f"/proc/{entry.name}/stat").rpartition(")")[2].split()
            if len(stat) > 1:
                children.setdefault(int(stat[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def spilled() -> dict:
    """Ray's cumulative spill / restore counters (MiB) from its memory summary."""
    import ray

    from tnn.ray.compat import memory_summary
    # this Ray's address: the default resolution may find another cluster's stale address file
    text = memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    out = {}
    for key, pattern in (("spilled_mb", r"Spilled (\d+) MiB"),
                         ("restored_mb", r"Restored (\d+) MiB")):
        m = re.search(pattern, text)
        out[key] = int(m.group(1)) if m else 0
    return out


def job(module: str, args: list[str]) -> int:
    """`python -m jobs.<module> ARGS` connected to this process's Ray; its exit status."""
    import ray
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.run([sys.executable, "-m", f"jobs.{module}", *args], cwd=ROOT,
                          env=env).returncode


def run(rows: int, visual_dim: int, store_mb: int, epochs: int, trials: int, slots: int,
        tune_subset: int, out: Path, train_sets: dict | None = None, log=print) -> dict:
    """Everything above on a Ray of its own (the caller must have none running); `train_sets`:
    more `jobs.train --set` overrides; `trials` 0: no search."""
    import ray
    import yaml

    from tnn.data.write import write
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    result: dict = {"rows": rows, "visual_dim": visual_dim, "store_mb": store_mb,
                    "trials": trials, "slots": slots}
    peaks = Peaks()
    peaks.start()
    ray.init(address="local", num_cpus=2, object_store_memory=store_mb << 20,
             resources={"trial_slot": slots}, include_dashboard=True, dashboard_host="127.0.0.1",
             logging_level="WARNING", log_to_driver=False)
    try:
        import ray.data
        ray.data.DataContext.get_current().enable_progress_bars = False
        shards, t0 = out / "shards", time.perf_counter()
        man = write(f"synthetic:n={rows},visual_dim={visual_dim}", str(shards),
                                rows_per_shard=max(1000, rows // 8), log=lambda *a, **k: None)
        result["shard_mb"] = round(sum(p.stat().st_size for p in shards.iterdir()) / 2**20)
        result["write_s"] = round(time.perf_counter() - t0, 1)
        log(f"load: {man.rows} rows, {result['shard_mb']} MB of shards, object store "
            f"{store_mb} MB")
        mlflow = f"sqlite:///{out / 'mlflow.db'}"
        sets = {"data": shards, "tnn.train.epochs": epochs, "storage_path": out / "runs",
                "run_name": "load", "mlflow.tracking_uri": mlflow, **(train_sets or {})}
        t0 = time.perf_counter()
        result["train_rc"] = job("train", [a for k, v in sets.items()
                                           for a in ("--set", f"{k}={v}")])
        result["train_s"] = round(time.perf_counter() - t0, 1)
        result.update({f"after_train_{k}": v for k, v in spilled().items()})
        if trials:
            space = out / "space.yaml"
            space.write_text(yaml.safe_dump({
                "method": "tnn-e2e", "base": {"data": str(shards), "subset": tune_subset,
                                              "tnn": {"train": {"epochs": epochs}}},
                "params": [{"key": "tnn.train.margin",
                            "grid": [round(0.1 * (i + 1), 2) for i in range(trials)]}],
                "scheduler": {"name": "fifo"}}))
            t0 = time.perf_counter()
            result["tune_rc"] = job("tune", ["--space", str(space), "--experiment", "load-tune",
                                             "--set", f"base.storage_path={out / 'tune'}",
                                             "--tracking-uri", mlflow])
            result["tune_s"] = round(time.perf_counter() - t0, 1)
        result.update(spilled())
    finally:
        ray.shutdown()
        peaks.stop.set()
        peaks.join()
    result.update(peaks.summary())
    return result


def main(argv=None) -> int:
    args = parse(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tnn-load-"))
    r = run(args.rows, args.visual_dim, args.store_mb, args.epochs, args.trials, args.slots,
            args.tune_subset, out, {"shuffle": args.shuffle})
    width = max(map(len, r))
    print("\n".join(f"{k:{width}s}  {v}" for k, v in r.items()))
    print(json.dumps(r))
    return 0 if r["train_rc"] == 0 and r.get("tune_rc", 0) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
