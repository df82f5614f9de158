"""jobs.tune and tnn.ray.tune_space / tnn.ray.tune: spaces and their checks (no Ray), the trial
summary, and a real 2-trial ASHA search on the session Ray with a SQLite MLflow store."""

from __future__ import annotations

import json
import re
import time
import types

import numpy as np
import pytest
import yaml

from jobs import tune
from tnn.tracking import registry
from tnn.tracking import runs as tracking
from tnn.ray import tune as tr
from tnn.ray import tune_report
from tnn.ray import tune_space as ts
from tnn.errors import ConfigError

EPOCH_LINE = re.compile(r"^tune: trial-(\w+)  epoch [12]/2  loss \d+\.\d{4}  val MAP \d\.\d{4}  "
                        r"\d+ samples/s  ~\d\d:\d\d left$")
LAST = re.compile(r"tune: best val_map ([0-9.]+) \(test ([0-9.]+)\) at (.+) of 2 trials "
                  r"\((\d) finished, (\d) stopped, (\d) failed\) in \d+ s, parent run (\w+)$")


def _build(*sets: str, space: str = "tune_spaces/margin_cca.yaml", **kw):
    args = ["--space", space] + [a for s in sets for a in ("--set", s)]
    for key, value in kw.items():
        args += [f"--{key}", str(value)]
    return tune.build(tune.parse_args(args))


def test_bundled_spaces_load_and_pass_their_checks():
    space, job = _build()
    assert space.method == "tnn-c-cca" and space.trials == 20 and space.grid_size == 20
    assert job["tnn"]["pipeline"] == "two-stage" and job["tnn"]["train"]["batch_size"] == 64
    assert job["workers"] == 1 and job["cpus_per_worker"] == 0.5 and not job["use_gpu"]
    assert [p.values for p in space.params] == [(0.1, 0.25, 0.5, 0.75, 1.0), (3, 5, 7, 9)]
    e2e, job = _build(space="tune_spaces/e2e.yaml")
    assert e2e.trials == 12 and job["tnn"]["pipeline"] == "e2e" and job["workers"] == 2
    assert {p.kind for p in e2e.params} == {"uniform", "choice", "loguniform"}
    assert _build(trials=40)[0].budget.num_samples == 2


@pytest.mark.parametrize("sets, message", [
    (["params=[{key: tnn.cca.dim, grid: [3, 12]}]"], "tnn.cca.dim=12: must lie in 1..9"),
    (["base.data=uci-mfeat:fou,mor", "params=[{key: tnn.cca.dim, grid: [5, 7]}]"],
     "tnn.cca.dim=7: exceeds the feature widths of uci-mfeat:fou,mor (audio 76, visual 6)"),
    (["params=[{key: tnn.train.margin, grid: [0.5, 0.0]}]"], "tnn.train.margin=0.0: the margin"),
    (["params=[{key: tnn.train.margin, uniform: [0.0, 1.0]}]"], "margin=0.0: the margin must be > 0"),
    (["params=[{key: tnn.train.margin, grid: []}]"], "tnn.train.margin: grid is empty"),
    (["params=[{key: tnn.train.margn, grid: [0.1]}]"], "unknown key(s) tnn.train.margn"),
    (["params=[{key: tnn.cca.dim, uniform: [2, 5]}]"], "tnn.cca.dim: expected int; got 2.0"),
    (["params=[{key: tnn.train.lr, loguniform: [0, 0.1]}]"], "loguniform needs low > 0"),
    (["params=[{key: tnn.train.lr, grid: [0.1], choice: [1]}]"], "give exactly one of"),
    (["params=[{key: tnn.train.w_cca, choice: [0.1, -1.0]}]"], "w_cca=-1.0: the CCA loss"),
    (["base.workers=2"], "workers: set by the tuning job"),
    (["base.tnn.train.batch_size=65", "budget.workers=2"], "divide tnn.train.batch_size=65"),
    (["metric=test_map"], "metric='test_map': expected one of val_map"),
    (["scheduler.max_t=40"], "scheduler.max_t=40 must exceed tnn.train.epochs=40"),
    (["scheduler.grace_period=41"], "grace_period=41 exceeds tnn.train.epochs=40"),
    (["bogus=1"], "unknown key(s) bogus"),
])
def test_impossible_spaces_are_refused_naming_the_value(sets, message):
    with pytest.raises(ConfigError) as err:
        _build(*sets)
    assert message in str(err.value) and str(err.value).startswith("tune_spaces/margin_cca.yaml")


def test_class_count_comes_from_the_data(tmp_path):
    """4 classes in an npz source and in a shard set (from its manifest): dim <= 3."""
    from tnn.data.write import write
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    np.savez(tmp_path / "d.npz", audio=rng.normal(size=(200, 8)).astype(np.float32),
             visual=rng.normal(size=(200, 12)).astype(np.float32), labels=labels)
    write(f"npz:{tmp_path / 'd.npz'}", str(tmp_path / "shards"), rows_per_shard=80,
          log=lambda *a, **k: None)
    for data in (f"npz:{tmp_path / 'd.npz'}", str(tmp_path / "shards")):
        assert ts.data_shape(data) == (4, 8, 12)
        _build("params=[{key: tnn.cca.dim, grid: [1, 3]}]", data=data)
        with pytest.raises(ConfigError, match=r"tnn.cca.dim=5: must lie in 1..3 \(classes - 1\)"):
            _build(data=data)


def test_tune_search_space_objects():
    from ray import tune as ray_tune
    space, _ = _build(space="tune_spaces/e2e.yaml")
    got = tr.param_space(space)
    assert list(got) == ["tnn.train.margin", "tnn.cca.dim", "tnn.train.lr", "tnn.train.w_cca"]
    assert isinstance(got["tnn.train.lr"], ray_tune.search.sample.Float)
    assert (got["tnn.train.margin"].lower, got["tnn.train.margin"].upper) == (0.05, 0.6)
    assert got["tnn.cca.dim"].categories == [5, 7, 9]
    grid = tr.param_space(_build()[0])
    assert grid["tnn.cca.dim"] == {"grid_search": [3, 5, 7, 9]}


def test_trials_must_fill_the_grid():
    with pytest.raises(ConfigError, match="--trials 4: the grid has 20 points"):
        _build(trials=4)


def test_refused_before_ray_or_mlflow(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tune, "init_ray", lambda **k: pytest.fail("Ray started"))
    db = tmp_path / "mlflow.db"
    code = tune.main(["--set", "params=[{key: tnn.cca.dim, grid: [3, 10]}]",
                      "--tracking-uri", f"sqlite:///{db}"])
    assert code == 2 and not db.exists()
    assert capsys.readouterr().err.strip() == (
        "tune: error: tune_spaces/margin_cca.yaml: tnn.cca.dim=10: must lie in 1..9 (classes - 1)"
        " for uci-mfeat with 10 classes: cluster-CCA spans at most classes - 1 directions")


def test_smoke_keeps_two_values_of_each_grid_and_a_short_run():
    space, job = tune.build(tune.parse_args(["--smoke"]))
    assert [p.values for p in space.params] == [(0.1, 0.25), (3, 5)] and space.trials == 4
    assert job["subset"] == 600 and job["tnn"]["train"]["epochs"] == 3
    assert space.scheduler.grace_period == 1


@pytest.mark.parametrize("budget, resources, expect", [
    (ts.Budget(), {"CPU": 2.0, "trial_slot": 2.0}, (1, {"trial_slot": 1})),  # 1.5 CPU a trial
    (ts.Budget(), {"CPU": 8.0, "trial_slot": 2.0}, (2, {"trial_slot": 1})),  # slots bind
    (ts.Budget(), {"CPU": 16.0}, (6, {"CPU": 1})),  # no slots: +1 CPU for the driver
    (ts.Budget(workers=2, cpus_per_worker=4, use_gpu=True), {"CPU": 64.0, "GPU": 8.0, "trial_slot": 8},
     (4, {"trial_slot": 1})),  # GPUs bind
    (ts.Budget(max_concurrent_trials=2), {"CPU": 2.0, "trial_slot": 2.0}, (2, {"trial_slot": 1})),
])
def test_concurrency_from_cluster_resources(budget, resources, expect):
    n, driver, note = ts.concurrency(budget, resources)
    assert (n, driver) == expect
    assert ("no 'trial_slot'" in note) == ("trial_slot" not in resources)


def test_concurrency_refuses_a_cluster_too_small():
    with pytest.raises(ConfigError, match="cannot hold one trial: 2.5 CPU; declare a 'trial_slot'"):
        ts.concurrency(ts.Budget(), {"CPU": 2.0})
    with pytest.raises(ConfigError, match="and 2 GPU"):
        ts.concurrency(ts.Budget(workers=2, use_gpu=True), {"CPU": 8.0, "GPU": 1.0,
                                                             "trial_slot": 1.0})


def _result(trial_id, params, reports, error=None):
    import pandas as pd
    return types.SimpleNamespace(path=f"/s/tune-x/trial-{trial_id}", config=params, error=error,
                                 metrics_dataframe=pd.DataFrame(reports) if reports else None)


def test_summary_uses_the_final_encoder_or_the_best_epoch():
    space, _ = _build()
    p = {"tnn.train.margin": 0.5, "tnn.cca.dim": 9}
    epochs = [{"epoch": e, "val_map": v, "test_map": v - 0.01} for e, v in ((1, 0.5), (2, 0.7),
                                                                             (3, 0.6))]
    final = {"epoch": 3, "best_epoch": 2, "val_map": 0.72, "test_map": 0.69, "train_done": 1}
    rows = tr.summarise([_result("a", p, epochs + [final]), _result("b", p, epochs[:2]),
                         _result("c", p, None, error=RuntimeError("boom\nlast line"))], space)
    assert [r["status"] for r in rows] == ["finished", "stopped", "error"]
    assert rows[0]["val_map"] == 0.72 and rows[0]["test_map"] == 0.69 and rows[0]["epochs"] == 3
    assert rows[1]["val_map"] == 0.7 and rows[1]["best_epoch"] == 2 and rows[1]["epochs"] == 2
    assert rows[2]["error"] == "last line" and "val_map" not in rows[2]
    assert [r["trial_id"] for r in rows] == ["a", "b", "c"] and rows[0]["params"] == p
    assert tune_report.best_row(rows, space) is rows[0]
    assert "| 0.5 | 9 | finished | 3 | **0.7200** | 0.6900 | a | - |" in tune_report.table(rows, space)


def _space_file(path) -> str:
    """2 trials in grid order (dim varies fastest): dim 1 reports far below dim 9 at epoch 1,
    so ASHA (grace 1, reduction 2) stops (0.2, 1) against (0.2, 9) for certain (a trial costs
    ~50 s here, mostly its Train workers starting: 2 trials show a finished and a stopped one)."""
    path.write_text(yaml.safe_dump({
        "method": "tnn-c-cca",
        "base": {"subset": 300, "tnn": {"train": {"epochs": 2, "patience": 2}}},
        "params": [{"key": "tnn.train.margin", "grid": [0.2]},
                   {"key": "tnn.cca.dim", "grid": [9, 1]}],
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}}))
    return str(path)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_trial_search_tracks_parent_and_children(ray_local, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "out"
    start = time.perf_counter()
    code = tune.main(["--space", _space_file(tmp_path / "space.yaml"), "--experiment", "t",
                      "--tracking-uri", uri, "--set", f"base.storage_path={tmp_path / 'runs'}",
                      "--out", str(out)])
    seconds = time.perf_counter() - start
    printed = capsys.readouterr().out.strip().splitlines()
    last, match = printed[-1], LAST.match(printed[-1])
    assert code == 0 and match, last
    report = json.loads((out / "tune.json").read_text())
    rows = {(r["params"]["tnn.train.margin"], r["params"]["tnn.cca.dim"]): r
            for r in report["trials"]}
    with capsys.disabled():
        print(f"\n2-trial search in {seconds:.0f} s: " + ", ".join(
            f"{k}: {r['status']} {r.get('val_map', 0):.3f}" for k, r in sorted(rows.items())))
    assert len(rows) == 2 and rows[(0.2, 1)]["status"] == "stopped"
    assert rows[(0.2, 9)]["status"] == "finished" and rows[(0.2, 9)]["epochs"] == 2
    # the driver prints one line per epoch result of each trial (`tnn.ray.trial_runs`)
    epoch_lines = [ln for ln in printed if EPOCH_LINE.match(ln)]
    assert len(epoch_lines) == sum(r["epochs"] for r in rows.values()), printed
    assert {EPOCH_LINE.match(ln).group(1) for ln in epoch_lines} == {
        r["trial_id"] for r in rows.values()}
    assert not [ln for ln in printed if "Trial status" in ln or "Reporting training" in ln]
    assert report["placement_groups_left"] == 0 and report["concurrency"] == 1
    assert {f.name for f in out.iterdir()} == {"tune.json", "tune.md", "map_vs_margin.png",
                                               "map_vs_dim.png"}

    # nothing holds resources after the search (a leaked placement group would hold 0.5 CPU)
    deadline = time.monotonic() + 30
    while ray_local.available_resources().get("CPU") != 2.0 and time.monotonic() < deadline:
        time.sleep(1)
    assert ray_local.available_resources().get("CPU") == 2.0

    parent = tracking.RunLogger(uri, match.group(7))
    run = parent.client.get_run(parent.run_id)
    best = report["best"]
    assert run.info.status == "FINISHED" and run.data.tags["best_child_run_id"] == best["run_id"]
    assert best is not None and best["val_map"] == max(
        r["val_map"] for r in rows.values() if "val_map" in r)
    assert run.data.metrics["best_val_map"] == pytest.approx(best["val_map"])
    assert float(run.data.params["best.tnn.train.margin"]) == best["params"]["tnn.train.margin"]
    assert run.data.params["search.tnn.cca.dim"] == "grid [9, 1]"
    assert {a.path for a in parent.client.list_artifacts(parent.run_id, "plots")} == {
        "plots/map_vs_margin.png", "plots/map_vs_dim.png"}

    children = tracking.child_runs(parent)
    assert len(children) == 2
    (data,) = run.inputs.dataset_inputs  # the search's data set, digested once per run
    for child in children:
        row = next(r for r in rows.values() if r["trial_id"] == child.data.tags["tune.trial_id"])
        assert row["run_id"] == child.info.run_id
        assert child.info.status == {"finished": "FINISHED", "stopped": "KILLED"}[row["status"]]
        steps = [m.step for m in parent.client.get_metric_history(child.info.run_id, "val_map")]
        # rank 0 keeps training (and logging) while Tune decides to stop a trial
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= row["epochs"]
        params = child.data.params
        assert float(params["tnn.train.margin"]) == row["params"]["tnn.train.margin"]
        assert params["tnn.cca.dim"] == str(row["params"]["tnn.cca.dim"])
        assert params["mlflow.run_id"] == child.info.run_id
        (given,) = child.inputs.dataset_inputs  # the same data set as the parent's
        assert (given.dataset.name, given.dataset.digest) == (data.dataset.name,
                                                              data.dataset.digest)
        assert child.data.tags["mlflow.source.type"] in ("LOCAL", "JOB")
        if row["status"] == "finished":
            assert child.data.metrics["final_val_map"] == pytest.approx(row["val_map"])
            assert registry.logged_model(child.info.run_id, tracking_uri=uri).name == \
                registry.LOGGED_NAME
