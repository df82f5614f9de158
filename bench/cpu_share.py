"""Where a training process's wall time goes on a shared machine (Linux /proc).

`snapshot()` reads the CPU seconds of every process and of the whole machine; `shares(a, b,
root, is_trainer)` splits the interval between two snapshots into the cores used by the
trainer, by the rest of `root`'s process tree (a driver that started a local Ray: its raylet,
GCS, dashboard, log monitor and actors) and by everything else (other jobs). With the
trainer's own CPU seconds this explains a throughput gap: compute per sample times the share
of the epoch the trainer spent on a CPU (`bench/train_scaling.py`). Processes that start
inside an interval count from zero; those that end inside it are left out.
"""

from __future__ import annotations

import os
import time

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def snapshot() -> dict:
    """{"t": perf_counter, "machine": busy CPU s of all cores, "procs": {pid: (ppid, CPU s,
    command line)}}; empty on a system without /proc."""
    procs = {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return {"t": time.perf_counter(), "machine": float("nan"), "procs": {}}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read(200).replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        procs[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, cmd)
    busy = (sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)) / TICK  # not idle, not iowait
    return {"t": time.perf_counter(), "machine": busy, "procs": procs}


def tree(snap: dict, root: int) -> set[int]:
    """`root` and its descendants in `snap`."""
    out, grew = {root}, True
    while grew:
        new = {p for p, (ppid, _, _) in snap["procs"].items() if ppid in out} - out
        out, grew = out | new, bool(new)
    return out


def shares(a: dict, b: dict, root: int, is_trainer) -> dict:
    """Cores used between snapshots `a` and `b`: "trainer" (processes of `root`'s tree for which
    `is_trainer(pid, cmdline)`), "ray" (the rest of the tree) and "other" (the rest of the
    machine)."""
    seconds = max(b["t"] - a["t"], 1e-9)
    used = {"trainer": 0.0, "ray": 0.0}
    for pid in tree(b, root):
        _, cpu, cmd = b["procs"][pid]
        before = a["procs"].get(pid)
        delta = cpu - (before[1] if before else 0.0)
        used["trainer" if is_trainer(pid, cmd) else "ray"] += max(delta, 0.0)
    other = b["machine"] - a["machine"] - used["trainer"] - used["ray"]
    return {"trainer": used["trainer"] / seconds, "ray": used["ray"] / seconds,
            "other": max(other, 0.0) / seconds}


def epoch(rate: float, wall: float, cpu: float, cores: dict) -> dict:
    """An epoch's throughput `rate` (over `wall` seconds) as compute x on-CPU share: samples
    per CPU second of the trainer (`cpu` seconds), its share of the epoch on a CPU, and the
    cores used beside it (`shares`, or {} if unknown)."""
    nan = float("nan")
    return {"cpu_rate": rate * wall / cpu if cpu > 0 else nan, "on_cpu": cpu / wall,
            "ray_cores": cores.get("ray", nan), "other_cores": cores.get("other", nan)}


def best(rates: list, diag: list, **extra) -> dict:
    """The fastest epoch after the first (the first if it is the only one), with its `epoch`
    view, all `rates` and `extra`."""
    i = max(range(1, len(rates)) if len(rates) > 1 else [0], key=rates.__getitem__)
    return {"samples_per_s": rates[i], "epochs": rates, **diag[i], **extra}
