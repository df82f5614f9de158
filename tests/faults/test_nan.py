"""Numerical faults: a loss, output or parameter that becomes NaN or inf stops the run with a
message naming the epoch and the step (`tnn.methods.tnn.check_finite`), before another step or
checkpoint; on Ray Train the last checkpoint stays the last good epoch's.

Injected three ways: an absurd learning rate (lr=1e20: the first Adam step overflows float32,
the next step's outputs are NaN) through jobs.crossval; a loss made NaN at a chosen step
(monkeypatched, one process); and on Ray, a stream of fit blocks whose audio features are
scaled to the edge of float32 (x 1e38) from the third epoch on, so the network's output
overflows mid-run after two good epochs."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import crossval, train
from tnn.methods import tnn as pipelines
from tnn.tracking import runs as tracking
from tnn.errors import NumericalError
from tnn.data.sources import load_source

pytestmark = pytest.mark.faults


def test_an_absurd_learning_rate_stops_crossval_naming_epoch_and_step(capsys):
    rc = crossval.main(["--methods", "tnn-e2e", "--folds", "2",  # (YAML reads 1e20 as a string)
                        "--set", "settings.tnn_e2e.train.lr=1.0e+20"])
    assert rc == 2
    assert capsys.readouterr().err == (
        "crossval: error: training diverged at epoch 1, step 2: audio_emb has NaN or inf values "
        "(a lower tnn.train.lr may help)\n")


def test_a_nan_loss_stops_fit_tnn_at_its_epoch_and_step(monkeypatch):
    pairs = load_source("uci-mfeat")
    train_part = pairs.subset(np.arange(pairs.n) % 5 != 0)  # 1600 clips: fit 1360, 5 steps
    calls, loss = [], pipelines.combined_loss

    def nan_at_call_13(*args, **kwargs):  # epoch 3, step 3 at 5 steps per epoch
        calls.append(1)
        terms = loss(*args, **kwargs)
        if len(calls) == 13:
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(pipelines, "combined_loss", nan_at_call_13)
    cfg = pipelines.TNNConfig(pipeline="e2e", train=pipelines.TrainConfig(epochs=5))
    with pytest.raises(NumericalError, match=r"^training diverged at epoch 3, step 3: loss has "
                                             r"NaN or inf values \(a lower tnn.train.lr may "
                                             r"help\)$"):
        pipelines.fit_tnn(train_part, cfg, log=lambda s: None)
    assert len(calls) == 13  # no step after it


# --- Ray Train: two good epochs, then an overflowing block ------------------------------------

def overflow_after(batch: dict, counter: str, rows: int) -> dict:
    """Ray Data transform: pass blocks through until `rows` rows went by (counted in a file that
    every task appends to), then scale the audio features by 1e38."""
    n = len(batch["label"])
    with open(counter, "a") as f:
        f.write(f"{n}\n")
    seen = sum(int(line) for line in Path(counter).read_text().split())
    if seen > rows:
        audio = batch["audio"]
        audio = np.stack(list(audio)) if audio.dtype == object else audio
        batch["audio"] = (audio.astype(np.float64) * 1e38).astype(np.float32)
    return batch


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_ray_run_that_overflows_stops_and_keeps_the_last_good_checkpoint(
        ray_local, tmp_path, capsys, monkeypatch, request):
    import ray.cloudpickle

    from tnn.ray import prepare as ray_prepare
    from tnn.train.checkpoints import load_encoder, load_state
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)  # the transform goes by value
    request.addfinalizer(lambda: ray.cloudpickle.unregister_pickle_by_value(module))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prepare = ray_prepare.prepare

    def prepare_overflowing(cfg, log=print):
        prep = prepare(cfg, log)
        prep.fit = prep.fit.map_batches(
            overflow_after, batch_format="numpy", batch_size=None, num_cpus=cfg.read_cpus,
            fn_kwargs={"counter": str(tmp_path / "rows"), "rows": 2 * prep.n_fit})
        return prep

    monkeypatch.setattr(ray_prepare, "prepare", prepare_overflowing)
    runs = tmp_path / "runs"
    sets = {"subset": 600, "workers": 1, "tnn.train.batch_size": 64, "tnn.train.epochs": 5,
            "storage_path": runs, "run_name": "job", "mlflow.local_dir": tmp_path / "mlflow",
            "shard_in_memory": "never"}  # the overflow is injected into the stream, per epoch
    rc = train.main([a for k, v in sets.items() for a in ("--set", f"{k}={v}")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1
    assert re.fullmatch(r"train: error: training failed after 0 restart\(s\) allowed: .*"
                        r"training diverged at epoch 3, step 1: audio_emb has NaN or inf values "
                        r"\(a lower tnn.train.lr may help\)", err), err

    snapshot = json.loads((runs / "job" / "checkpoint_manager_snapshot.json").read_text())
    reported = [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]
    assert reported == ["epoch-0001", "epoch-0002"]
    assert sorted(p for p in os.listdir(runs / "job") if p.startswith("epoch-")) == reported
    state = load_state(runs / "job" / "epoch-0002")
    assert state["epoch"] == 2 and not state["done"]
    assert all(bool(torch.isfinite(v).all()) for v in state["net"].values())
    pairs = load_source("uci-mfeat")
    emb = load_encoder(runs / "job" / "epoch-0002").embed_audio(pairs.audio[:50])
    assert np.isfinite(emb).all()
    run_id = json.loads((runs / "job" / "tnn_run.json").read_text())["mlflow_run_id"]
    run = tracking.RunLogger(tracking.resolve(None, tmp_path / "mlflow")[0], run_id)
    assert run.client.get_run(run_id).info.status == "FAILED"
    assert [s for s, _ in run.history("val_map")] == [1, 2]
    with capsys.disabled():
        print(f"\n{err}\nkept: {reported}")
