"""tnn.ray.progress and the quiet console (tnn.ray.session): epoch lines with the time left, the
driver's handling of rank 0's messages (MLflow + lines). The console of a real `python -m
jobs.train --smoke` (one line per epoch, none of Ray's report dicts or warnings) is checked by
tests/jobs/test_readme_path.py, which runs it as the README shows."""

from __future__ import annotations

import re

from tnn.ray import session
from tnn.ray.progress import EpochClock, TrainWatch, clock

EPOCH = re.compile(r"^train: epoch (\d+)/(\d+)  loss -?\d+\.\d{4}  val MAP \d\.\d{4}  "
                   r"\d+ samples/s  ~\d\d:\d\d left$")


def test_clock_and_epoch_lines_with_the_time_left():
    assert (clock(0), clock(41.4), clock(3599), clock(3725)) == ("00:00", "00:41", "59:59",
                                                                 "1:02:05")
    c = EpochClock(12, "train: ")
    m = {"epoch": 3, "total": 0.41213, "val_map": 0.77121, "samples_per_s": 1830.4,
         "elapsed_s": 15.0, "test_map": 0.9}
    assert c.line(m) == "train: epoch 3/12  loss 0.4121  val MAP 0.7712  1830 samples/s  " \
                        "~00:45 left"  # 5 s an epoch, 9 to go; no test-fold score
    c.resumed(6)  # a new launch after epoch 6: its elapsed time counts from there
    assert c.line({**m, "epoch": 8, "elapsed_s": 4.0}).endswith("~00:08 left")
    c.line({**m, "epoch": 2, "elapsed_s": 3.0})  # restarted from scratch
    assert c.line({**m, "epoch": 3, "elapsed_s": 6.0}).endswith("~00:27 left")
    assert EPOCH.match(EpochClock(2, "train: ").line({**m, "epoch": 1}))
    assert EpochClock(4).line({"epoch": 1}) == "epoch 1/4"


class FakeLogger:
    def __init__(self) -> None:
        self.logged: list = []

    def metrics(self, metrics, step=None):
        self.logged.append((dict(metrics), step))

    def history(self, key):
        return sorted((step, m[key]) for m, step in self.logged if key in m)


def test_train_watch_logs_what_rank_0_logged_and_prints_a_line_per_epoch():
    lines, logger = [], FakeLogger()
    watch = TrainWatch(3, logger, log=lambda s, **k: lines.append(s))
    first = {"epoch": 1, "val_map": 0.5}
    epoch = {"epoch": 2, "total": 0.5, "val_map": 0.6, "samples_per_s": 100.0, "elapsed_s": 2.0}
    logger.metrics(first, step=1)  # logged by the launch before
    watch("resumed", {"epoch": 1, "history": [first]})
    watch("epoch", epoch)
    watch("line", "readout: s=16")
    watch("final", {"epoch": 3, "val_map": 0.7})
    assert logger.logged == [(first, 1), ({"resumed_from_epoch": 1}, 1), (epoch, 2),
                             ({"final_epoch": 3, "final_val_map": 0.7}, 3)]
    assert lines == ["train: resumed after epoch 1",
                     "train: epoch 2/3  loss 0.5000  val MAP 0.6000  100 samples/s  ~00:02 left",
                     "train: readout: s=16"]
    TrainWatch(3, None, log=lambda s, **k: lines.append(s))("epoch", epoch)  # MLflow off


def test_a_resume_logs_the_checkpoints_epochs_that_a_killed_driver_never_logged():
    """The CI failure of session 6: the driver was killed with epochs 3-6 trained and
    checkpointed but still in its queue; the relaunch resumed after epoch 6 and ran none, so
    MLflow's history stopped at epoch 2. The checkpoint's history fills the gap, once."""
    lines, logger = [], FakeLogger()
    history = [{"epoch": e, "total": 1.0 / e, "val_map": 0.1 * e} for e in range(1, 7)]
    for m in history[:2]:
        logger.metrics(m, step=m["epoch"])
    watch = TrainWatch(6, logger, log=lambda s, **k: lines.append(s))
    watch("resumed", {"epoch": 6, "history": history})
    assert [s for s, _ in logger.history("val_map")] == [1, 2, 3, 4, 5, 6]
    assert logger.logged[-1] == ({"resumed_from_epoch": 6}, 6)
    assert lines == ["train: resumed after epoch 6 (epochs 3-6 logged from the checkpoint)"]
    watch("resumed", {"epoch": 6, "history": history})  # a second restart logs nothing twice
    assert [s for s, _ in logger.history("val_map")] == [1, 2, 3, 4, 5, 6]
    assert lines[-1] == "train: resumed after epoch 6"


def test_init_ray_is_quiet_unless_verbose(monkeypatch):
    import ray
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(session, "quiet_ray_data", lambda: calls.append("quiet"))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # no local env set
    for value, loud in (("", False), ("0", False), ("1", True), ("yes", True)):
        monkeypatch.setenv(session.VERBOSE_ENV, value)
        calls.clear()
        assert session.init_ray() is True
        assert calls[0]["log_to_driver"] is loud
        assert calls[0]["logging_level"] == ("INFO" if loud else "WARNING")
        assert ("quiet" in calls) is not loud
