"""What a person watching a run sees, and the channel that brings rank 0's epochs to the driver.

Rank 0 of a Ray Train run `send`s each epoch's metrics, a resume, the final scores and
tnn-label's readout lines to a `ray.util.queue.Queue` that the driver created (`Channel`: an
actor pinned to the driver's node, no CPU). A driver thread drains it while `trainer.fit()`
runs, and once more after it returns, so nothing is lost; `TrainWatch` prints one line per
epoch and logs the metrics into the job's MLflow run. A driver killed mid-run loses what its
queue held: the relaunch's resume message carries the checkpoint's epoch history, and the
epochs the MLflow run lacks are logged then. The thread waits in long blocking gets
(a message is handled as soon as it arrives) and is woken by a stop message at the end: every
get is an actor call, and short polls were a steady load beside the training workers. So
MLflow is used by the driver alone and its tracking URI (possibly
`https://user:password@host`) is never shipped to a worker.
Tune trials get the same lines from their results (`tnn.ray.trial_runs.TrialRuns`):

    train: epoch 3/12  loss 0.4121  val MAP 0.7712  1830 samples/s  ~00:41 left

The time left is the mean epoch time of this launch (a restarted worker group counts afresh)
times the epochs still allowed (early stopping may end sooner).
"""

from __future__ import annotations

import queue as stdlib_queue
import sys
import threading
from typing import Callable

from tnn.errors import redact

_STOP = ("tnn-progress-stop", None)  # `Channel.__exit__` -> the driver thread: return


def clock(seconds: float) -> str:
    """MM:SS, or H:MM:SS from an hour on."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60:02d}:{s % 60:02d}"


class EpochClock:
    """Epoch lines with the time left for a run of `epochs` epochs."""

    def __init__(self, epochs: int, prefix: str = "") -> None:
        self.epochs, self.prefix, self.base, self.last = int(epochs), prefix, 0, 0

    def resumed(self, epoch: int) -> None:
        """A launch that starts after `epoch` (its elapsed time counts from there)."""
        self.base = self.last = int(epoch)

    def line(self, metrics: dict) -> str:
        """`epoch k/N  loss L  val MAP M  R samples/s  ~MM:SS left` (what is known of it)."""
        epoch = int(metrics["epoch"])
        if epoch <= self.last:  # the worker group restarted without a checkpoint to resume
            self.base = epoch - 1
        self.last = epoch
        parts = [f"epoch {epoch}/{self.epochs}"]
        for key, text in (("total", "loss {:.4f}"), ("val_map", "val MAP {:.4f}"),
                          ("samples_per_s", "{:.0f} samples/s")):
            if isinstance(metrics.get(key), (int, float)):
                parts.append(text.format(metrics[key]))
        if isinstance(metrics.get("elapsed_s"), (int, float)):
            per_epoch = metrics["elapsed_s"] / max(1, epoch - self.base)
            parts.append(f"~{clock(per_epoch * max(0, self.epochs - epoch))} left")
        return self.prefix + "  ".join(parts)


def send(channel, kind: str, payload) -> None:
    """Rank 0 -> the driver (`Channel`); nothing when `channel` is None. A lost driver does
    not stop training (checkpoints still go to storage): one warning line instead."""
    if channel is None:
        return
    try:
        channel.put((kind, payload), timeout=60)
    except Exception as err:  # the driver's queue is gone or full
        print(f"warning: progress message {kind!r} not delivered to the driver: "
              f"{type(err).__name__}", file=sys.stderr, flush=True)


class Channel:
    """`with Channel(handle) as queue:` a queue on the driver's node for rank 0's messages
    (`queue` goes into the train loop's config); `handle(kind, payload)` runs on a driver
    thread as they arrive and for what is left when the block ends. Errors in `handle` are
    one warning line each (the run goes on). `poll_s`: the longest blocking get (the thread
    is woken at the end by a stop message; `poll_s` bounds the wait if that is lost)."""

    def __init__(self, handle: Callable[[str, object], None], poll_s: float = 5.0) -> None:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        node = ray.get_runtime_context().get_node_id()
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy":
                                          NodeAffinitySchedulingStrategy(node, soft=False)})
        self.handle, self.poll_s = handle, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tnn-progress")

    def __enter__(self):
        self._thread.start()
        return self.queue

    def __exit__(self, *exc) -> None:
        self._stop.set()
        try:
            self.queue.put(_STOP, timeout=self.poll_s)  # wakes the thread's blocking get
        except Exception:  # the queue actor is gone: the thread's get fails and it returns
            pass
        self._thread.join()
        try:
            while not self.queue.empty():
                item = self.queue.get_nowait()
                if item != _STOP:
                    self._one(item)
        except Exception as err:  # Empty, or the queue actor is gone (its node died)
            if not isinstance(err, stdlib_queue.Empty) and type(err).__name__ != "Empty":
                print(f"warning: progress channel lost: {type(err).__name__}",
                      file=sys.stderr, flush=True)
        finally:
            try:
                self.queue.shutdown(force=True)
            except Exception:  # already gone with its node: nothing to free
                pass

    def _run(self) -> None:
        from ray.util.queue import Empty
        while not self._stop.is_set():
            try:
                item = self.queue.get(timeout=self.poll_s)
            except Empty:
                continue
            except Exception as err:  # the queue actor is gone: the run is failing anyway
                print(f"warning: progress channel closed: {type(err).__name__}",
                      file=sys.stderr, flush=True)
                return
            if item == _STOP:
                return
            self._one(item)

    def _one(self, item) -> None:
        try:
            self.handle(*item)
        except Exception as err:
            print(redact(f"warning: progress message not handled: {err}".splitlines()[0]),
                  file=sys.stderr, flush=True)


class TrainWatch:
    """The driver's handler of a Train run's messages: MLflow (`logger`, or None) and lines."""

    def __init__(self, epochs: int, logger=None, prefix: str = "train: ", log=print) -> None:
        self.clock, self.logger, self.log = EpochClock(epochs, prefix), logger, log

    def __call__(self, kind: str, payload) -> None:
        if kind == "epoch":
            if self.logger:
                self.logger.metrics(payload, step=payload["epoch"])
            self.log(self.clock.line(payload), flush=True)
        elif kind == "resumed":
            epoch = int(payload["epoch"])
            self.clock.resumed(epoch)
            late = []
            if self.logger:
                late = self._log_missing(payload["history"])
                self.logger.metrics({"resumed_from_epoch": epoch}, step=epoch)
            note = f" (epochs {late[0]}-{late[-1]} logged from the checkpoint)" if late else ""
            self.log(f"{self.clock.prefix}resumed after epoch {epoch}{note}", flush=True)
        elif kind == "final":
            if self.logger:
                self.logger.metrics({f"final_{k}": v for k, v in payload.items()},
                                    step=payload["epoch"])
        elif kind == "line":
            self.log(f"{self.clock.prefix}{payload}", flush=True)

    def _log_missing(self, history: list[dict]) -> list[int]:
        """Log the checkpoint's epochs that the MLflow run lacks (its `val_map` steps); the
        epochs logged. A driver killed with epochs still in its queue, or before handling
        them, lost them; the checkpoint's state kept every epoch's metrics."""
        have = {step for step, _ in self.logger.history("val_map")}
        late = [m for m in history if int(m["epoch"]) not in have]
        for m in late:
            self.logger.metrics(m, step=int(m["epoch"]))
        return [int(m["epoch"]) for m in late]
