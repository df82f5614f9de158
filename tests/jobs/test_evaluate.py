"""jobs.evaluate: the registered / logged encoders reproduce the training run's test MAP on the
same held-out fold; the held-out part of shards equals the training split's."""

from __future__ import annotations

import re

import numpy as np
import pytest

from jobs import evaluate, promote
from tnn.tracking import evaluation
from tests.jobs.test_promote import SPLIT, make_run
from tnn.tracking import runs as tracking

LAST = re.compile(r"evaluate: (\S+) on (\S+) fold (\d) \((\d+) clips\): a->v MAP ([0-9.]+) v->a MAP "
                  r"([0-9.]+) \(mean ([0-9.]+)\) MRR@1 ([0-9.]+) / ([0-9.]+) in \d+ s, run (\w+)$")


def _last(capsys) -> re.Match:
    out = capsys.readouterr().out.strip().splitlines()
    match = LAST.match(out[-1])
    assert match, out[-3:]
    assert out[-2].startswith(f"evaluate: MLflow run {match.group(10)} in experiment "
                              "tnn-evaluate; open it with: mlflow ui --backend-store-uri "
                              "sqlite:///"), out[-2]  # the line before: what opens the run
    return match


@pytest.fixture
def trained(ray_local, tmp_path_factory):
    """One `jobs.train --smoke` run (1 worker) into a SQLite store: (tracking URI, run id).
    (Function scope: `ray_local` is; one test uses it.)"""
    from jobs import train
    tmp = tmp_path_factory.mktemp("trained")
    store = f"sqlite:///{tmp}/mlflow.db"
    assert train.main(["--smoke", "--set", f"mlflow.tracking_uri={store}", "--set",
                       f"storage_path={tmp}/runs", "--set", "workers=1", "--set",
                       "run_name=smoke"]) == 0
    from mlflow import MlflowClient
    exp = MlflowClient(store).get_experiment_by_name("tnn-train")
    (run,) = MlflowClient(store).search_runs([exp.experiment_id])
    return store, run.info.run_id


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_evaluate_reproduces_the_training_runs_test_map(trained, capsys):
    store, run_id = trained
    logged = tracking.RunLogger(store, run_id).data().metrics
    assert evaluate.main(["--run", run_id, "--tracking-uri", store]) == 0
    m = _last(capsys)
    assert m.group(1) == f"runs:/{run_id}" and m.group(2) == "uci-mfeat" and m.group(3) == "0"
    assert int(m.group(4)) == 120  # the smoke subset's test fold (600 clips / 5)
    eval_run = tracking.RunLogger(store, m.group(10)).data()
    for key in ("a2v_map", "v2a_map", "map", "mrr1_a2v", "mrr1_v2a"):
        assert eval_run.metrics[key] == pytest.approx(logged[f"final_test_{key}"], abs=1e-6)
    assert eval_run.tags["source_run_id"] == run_id and "model_name" not in eval_run.tags
    assert {"a2v_p_at_10", "v2a_p_at_5"} <= set(eval_run.metrics)

    # promoted to champion, the pair loads by alias and scores the same
    assert promote.main(["--experiment", "tnn-train", "--tracking-uri", store]) == 0
    assert "promoted: champion is now tnn (version 1)" in capsys.readouterr().out
    assert evaluate.main(["--model", "models:/tnn@champion", "--tracking-uri", store]) == 0
    m = _last(capsys)
    eval_run = tracking.RunLogger(store, m.group(10)).data()
    assert eval_run.metrics["map"] == pytest.approx(logged["final_test_map"], abs=1e-6)
    assert {k: eval_run.tags[k] for k in ("model_name", "model_alias", "model_version",
                                          "source_run_id")} == {
        "model_name": "tnn", "model_alias": "champion", "model_version": "1",
        "source_run_id": run_id}


def test_held_out_shards_is_the_training_split(tmp_path):
    from tnn.data.write import write
    from tnn.data.reader import read_pairs
    from tnn.core.folds import validation_split
    out = tmp_path / "shards"
    write("uci-mfeat", str(out), rows_per_shard=300, folds=5, seed=3, log=lambda *a, **k: None)
    pairs = read_pairs(str(out))
    for subset, fold in ((0, 2), (600, 4)):
        got = evaluation.held_out({"data": str(out), "folds": 5, "seed": 1, "subset": subset,
                                 "test_fold": fold})
        ref = pairs if not subset else pairs.subset(
            validation_split(pairs.labels, subset / pairs.n, 1)[1])
        ref = ref.subset(np.flatnonzero(ref.folds == fold))
        order = np.argsort(got.clip_ids)
        ref_order = np.argsort(ref.clip_ids)
        np.testing.assert_array_equal(got.clip_ids[order], ref.clip_ids[ref_order])
        np.testing.assert_array_equal(got.audio[order], ref.audio[ref_order])
        np.testing.assert_array_equal(got.visual[order], ref.visual[ref_order])
        np.testing.assert_array_equal(got.labels[order], ref.labels[ref_order])
        assert got.n == ref.n and 100 < got.n <= 400


def test_smoke_overrides_and_errors(tmp_path, capsys):
    from tnn.config import from_dict
    from tnn.train.config import TrainJobConfig
    from tnn.train.plan import split_in_memory
    store = f"sqlite:///{tmp_path}/mlflow.db"
    split = split_in_memory(from_dict(TrainJobConfig, SPLIT))
    run_id, _ = make_run(store, tmp_path, split, "lin", dim=9, beta=0.2)
    assert evaluate.main(["--run", run_id, "--tracking-uri", store, "--smoke", "--fold", "3"]) == 0
    m = _last(capsys)
    assert m.group(3) == "3" and int(m.group(4)) == evaluation.SMOKE_CLIPS
    # a run without config.yaml: the split comes from its params
    uri, artifacts = tracking.resolve(store, ".")
    bare, _ = tracking.open_run(uri, "exp", "params-only", artifact_location=artifacts)
    bare.params({"data": "uci-mfeat", "folds": 5, "seed": 0, "test_fold": 1})
    assert evaluation.split_of(bare.run_id, uri) == {"data": "uci-mfeat", "folds": 5, "seed": 0,
                                                   "test_fold": 1}
    empty, _ = tracking.open_run(uri, "exp", "nothing", artifact_location=artifacts)
    with pytest.raises(Exception, match="cannot tell which data"):
        evaluation.split_of(empty.run_id, uri)
    assert evaluate.main(["--model", "models:/nobody@champion", "--tracking-uri", store]) == 2
    assert "no model version has alias 'champion'" in capsys.readouterr().err
    assert evaluate.main(["--run", empty.run_id, "--tracking-uri", store]) == 2
    assert "has no logged encoder model" in capsys.readouterr().err
