"""jobs.promote on a real SQLite registry, with hand-made runs (no Ray): linear encoders of
known quality logged as a training run would log them (config.yaml, final metrics, pyfunc
model). The champion alias of the one registered model moves only when the challenger is
better by the margin."""

from __future__ import annotations

import re

import numpy as np
import pytest

from jobs import promote
from tnn.tracking import evaluation, promotion
from tnn.train import checkpoints
from tnn.tracking import registry
from tnn.tracking import runs as tracking
from tnn.core.metrics import cross_modal_scores
from tnn.methods.linear import CCAConfig, fit_linear
from tnn.methods.tnn import TNNConfig

SPLIT = {"data": "uci-mfeat", "folds": 5, "seed": 0, "subset": 0, "test_fold": 0}
LAST = re.compile(r"promote: (promoted|kept): champion (?:is now|stays) m \(version (\d+)\); "
                  r"held-out mean MAP challenger ([0-9.]+) \(run (\w+)\) vs champion "
                  r"(none|[0-9.]+): (.+)$")


@pytest.fixture(scope="module")
def split():
    from tnn.config import from_dict
    from tnn.train.config import TrainJobConfig
    from tnn.train.plan import split_in_memory
    fit, val, test = split_in_memory(from_dict(TrainJobConfig, SPLIT))
    return fit, val, test


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('promote')}/mlflow.db"


def make_run(store, tmp_path, split, name, *, dim, beta, val_map=None, experiment="exp",
             parent=None):
    """A FINISHED run like jobs.train's: config.yaml, final metrics, encoder files + pyfunc."""
    fit, val, test = split
    encoder = fit_linear(fit, CCAConfig(dim=dim), beta)
    s = {p: cross_modal_scores(encoder.embed_audio(x.audio), encoder.embed_visual(x.visual),
                               x.labels) for p, x in (("val", val), ("test", test))}
    maps = {p: (v["a2v_map"] + v["v2a_map"]) / 2 for p, v in s.items()}
    ck = tmp_path / name
    ck.mkdir()
    checkpoints.save_checkpoint(ck, {"epoch": 1, "history": [{"epoch": 1, "total": 1.0,
                                                               "val_map": 0.5}]},
                                SPLIT, encoder, TNNConfig(), 10)
    uri, artifacts = tracking.resolve(store, ".")
    tags = {"mlflow.parentRunId": parent} if parent else {}
    logger, _ = tracking.open_run(uri, experiment, name, artifact_location=artifacts, tags=tags)
    logger.config({**SPLIT, "tnn": {"pipeline": "two-stage"}})
    logger.metrics({"final_val_map": maps["val"] if val_map is None else val_map,
                    "final_test_map": maps["test"]})
    registry.log_checkpoint(logger, ck)
    logger.finish()
    return logger.run_id, maps["test"]


def run_promote(store, capsys, *args) -> re.Match:
    assert promote.main(["--experiment", "exp", "--model-name", "m", "--tracking-uri", store,
                         *args]) == 0
    *_, opened, last = capsys.readouterr().out.strip().splitlines()
    match = LAST.match(last)
    assert match, last
    # the line before: the evaluation runs and the command that opens them; each run names
    # its source and holds the held-out data set as its evaluation input
    assert opened.endswith(f"in experiment tnn-evaluate; open them with: mlflow ui "
                           f"--backend-store-uri {store}"), opened
    run_id = re.match(r"promote: evaluation runs (\w+)", opened).group(1)
    run = tracking.client(store).get_run(run_id)
    assert run.data.tags["mlflow.source.name"] in ("jobs.evaluate", "jobs.promote")
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.name == "uci-mfeat" and given.tags[0].value == "evaluation"
    return match


def champion(store):
    return registry.get_alias("m", "champion", tracking_uri=store)


def test_promotion_moves_the_alias_only_when_better(store, tmp_path, split, capsys):
    # 1. no champion: the best run becomes it; loaded by alias, it reproduces its logged MAP
    mid, mid_map = make_run(store, tmp_path, split, "mid", dim=9, beta=1.0)
    m = run_promote(store, capsys)
    assert m.group(1) == "promoted" and m.group(4) == mid and m.group(5) == "none"
    assert champion(store) == "1" == m.group(2)
    assert float(m.group(3)) == pytest.approx(mid_map, abs=1e-4)
    out = evaluation.evaluate("models:/m@champion", tracking_uri=store, log=lambda s: None)
    assert out["info"]["run_id"] == mid and out["info"]["version"] == "1"
    assert out["scores"]["map"] == pytest.approx(mid_map, abs=1e-6)

    # 2. a run that looks best on validation but is worse on held-out data: kept
    worse, worse_map = make_run(store, tmp_path, split, "worse", dim=2, beta=1.0, val_map=0.99)
    m = run_promote(store, capsys)
    assert m.group(1) == "kept" and m.group(4) == worse and worse_map < mid_map
    assert float(m.group(3)) == pytest.approx(worse_map, abs=1e-4)
    assert float(m.group(5)) == pytest.approx(mid_map, abs=1e-4)
    assert champion(store) == "1" == m.group(2)
    assert registry.get_alias("m", "challenger", tracking_uri=store) == "2"

    # 3. better but not by the required margin: kept; then without the margin: promoted
    better, better_map = make_run(store, tmp_path, split, "better", dim=9, beta=0.2,
                                  val_map=1.0)
    assert better_map > mid_map + 0.05
    m = run_promote(store, capsys, "--min-improvement", "0.5")
    assert m.group(1) == "kept" and "not more than the required +0.5000" in m.group(6)
    assert champion(store) == "1"
    m = run_promote(store, capsys, "--min-improvement", "0.05")
    assert m.group(1) == "promoted" and m.group(4) == better
    assert champion(store) == "3" == m.group(2)  # no re-registration of the same run
    loaded = registry.load_encoders("models:/m@champion", tracking_uri=store)
    assert loaded.info["run_id"] == better
    fit, _, test = split
    ref = fit_linear(fit, CCAConfig(dim=9), 0.2)
    np.testing.assert_allclose(loaded.audio.predict(test.audio), ref.embed_audio(test.audio),
                               atol=1e-6, rtol=0)

    # 4. the same best run again: nothing moves, nothing new is registered
    m = run_promote(store, capsys)
    assert m.group(1) == "kept" and "already is the champion" in m.group(6)
    from mlflow import MlflowClient
    assert len(MlflowClient(store).search_model_versions("name = 'm'")) == 3

    # every evaluation is a tnn-evaluate run linked to its model versions
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("tnn-evaluate").experiment_id])
    assert {r.data.tags["source_run_id"] for r in runs} == {mid, worse, better}
    assert all(r.data.tags.get("model_name") == "m" for r in runs)
    assert all(r.data.tags["model_version"] in {"1", "2", "3"} for r in runs)
    assert client.get_model_version("m", "3").tags["evaluation_run"] in {
        r.info.run_id for r in runs}


def test_a_failing_alias_move_leaves_the_champion_where_it_was(store, tmp_path, split, capsys,
                                                             monkeypatch):
    from mlflow import MlflowClient
    exp = "exp-fail"
    make_run(store, tmp_path, split, "first", dim=2, beta=1.0, experiment=exp)
    assert promote.main(["--experiment", exp, "--model-name", "f", "--tracking-uri", store]) == 0
    before = registry.get_alias("f", "champion", tracking_uri=store)
    make_run(store, tmp_path, split, "second", dim=9, beta=0.2, experiment=exp)
    original = MlflowClient.set_registered_model_alias

    def fail(self, name, alias, version):
        if name == "f" and alias == "champion":
            raise RuntimeError("registry went away")
        return original(self, name, alias, version)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", fail)
    with pytest.raises(RuntimeError):
        promote.main(["--experiment", exp, "--model-name", "f", "--tracking-uri", store])
    assert registry.get_alias("f", "champion", tracking_uri=store) == before


def test_best_run_is_searched_among_tuning_children(store, tmp_path, split, capsys):
    exp = "exp-tune"
    uri, artifacts = tracking.resolve(store, ".")
    parent, _ = tracking.open_run(uri, exp, "search", artifact_location=artifacts)
    parent.metrics({"final_val_map": 2.0})  # the best trial's summary, no encoders
    parent.finish()
    make_run(store, tmp_path, split, "trial-a", dim=2, beta=1.0, experiment=exp,
             parent=parent.run_id)
    child, _ = make_run(store, tmp_path, split, "trial-b", dim=9, beta=0.2, experiment=exp,
                        parent=parent.run_id)
    assert promotion.best_run(uri, exp, "final_val_map").info.run_id == child
    with pytest.raises(Exception, match="no FINISHED run with metric 'nope'"):
        promotion.best_run(uri, exp, "nope")
    assert promote.main(["--experiment", "missing", "--tracking-uri", store]) == 2
    assert "experiment 'missing' not found" in capsys.readouterr().err


def test_decide():
    assert promotion.decide(0.8, None, 0.1) == (True, "there was no champion")
    assert promotion.decide(0.8, 0.7, 0.05)[0] and not promotion.decide(0.8, 0.7, 0.15)[0]
    assert not promotion.decide(0.7, 0.7, 0.0)[0]  # a tie keeps the champion
