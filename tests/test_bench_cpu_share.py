"""bench.cpu_share: CPU seconds by process tree and machine, and an epoch's throughput split
into compute x on-CPU share (bench/train_scaling's diagnostics). No Ray."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import cpu_share


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc")
def test_a_busy_child_counts_as_the_trainer_and_the_rest_of_the_tree_as_ray():
    me = os.getpid()
    before = cpu_share.snapshot()
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.6: pass\n"
                              "print('busy done', flush=True)\ntime.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "busy done"  # 0.6 CPU s spent, still alive
        after = cpu_share.snapshot()
    finally:
        child.kill()
        child.wait()
    assert child.pid in cpu_share.tree(after, me) and me in cpu_share.tree(after, me)
    seconds = after["t"] - before["t"]
    used = {k: v * seconds for k, v in cpu_share.shares(
        before, after, me, lambda pid, cmd: pid == child.pid).items()}
    assert 0.55 <= used["trainer"] < 1.0  # the child's CPU s (it started inside the interval)
    assert 0 <= used["ray"] < 0.5 and used["other"] >= 0  # this process mostly waited
    alone = cpu_share.shares(before, after, me, lambda pid, cmd: False)
    assert alone["trainer"] == 0 and alone["ray"] * seconds >= 0.55


def test_an_epoch_is_compute_times_on_cpu_share_and_the_best_skips_the_first():
    e = cpu_share.epoch(1000.0, 2.0, 1.5, {"ray": 0.2, "other": 0.9})
    assert e["cpu_rate"] == pytest.approx(2000 / 1.5) and e["on_cpu"] == pytest.approx(0.75)
    assert e["cpu_rate"] * e["on_cpu"] == pytest.approx(1000.0)
    assert (e["ray_cores"], e["other_cores"]) == (0.2, 0.9)
    unknown = cpu_share.epoch(1000.0, 2.0, 0.0, {})
    assert all(unknown[k] != unknown[k] for k in ("cpu_rate", "ray_cores", "other_cores"))
    diag = [{"i": 0}, {"i": 1}, {"i": 2}]
    best = cpu_share.best([900.0, 700.0, 800.0], diag, first_batch_s=0.1)
    assert (best["samples_per_s"], best["i"], best["first_batch_s"]) == (800.0, 2, 0.1)
    assert cpu_share.best([5.0], [{"i": 0}])["i"] == 0
