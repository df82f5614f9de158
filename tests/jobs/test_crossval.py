"""jobs.crossval: the paper's protocol end to end, its JSON contract and its errors."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from jobs import crossval
from tnn.tracking import runs as tracking

KEYS = {"a2v_map", "v2a_map", "a2v_map_folds", "v2a_map_folds", "mrr1_a2v", "mrr1_v2a",
        "fit_seconds", "params"}


OFF = ["--set", "mlflow.enabled=false"]  # no MLflow run (one test below checks the run)


def test_bundled_cca_numbers_and_json_contract(tmp_path, capsys):
    out, store = tmp_path / "cv.json", f"sqlite:///{tmp_path}/mlflow.db"
    assert crossval.main(["--methods", "cca,c-cca", "--dim", "9", "--json", str(out),
                          "--tracking-uri", store, "--experiment", "cv-test"]) == 0
    res = json.loads(out.read_text())
    assert res["data"] == "uci-mfeat:fou,pix" and res["folds"] == 5
    for name in ("cca", "c-cca"):
        assert KEYS <= set(res["methods"][name]) and len(res["methods"][name]["a2v_map_folds"]) == 5
    cca, ccca = res["methods"]["cca"], res["methods"]["c-cca"]
    # The independently measured values on this protocol (fou -> pix, seed 0, k 9, ridge 1e-3).
    assert abs(cca["a2v_map"] - 0.586) < 0.02 and abs(cca["v2a_map"] - 0.577) < 0.02
    assert abs(ccca["a2v_map"] - 0.71) < 0.02 and abs(ccca["v2a_map"] - 0.68) < 0.02
    assert ccca["params"]["dim"] == 9 and cca["params"]["beta"] == 1.0
    text = capsys.readouterr().out
    assert "crossval: best c-cca mean MAP" in text.splitlines()[-1]
    assert "method" in text and "MRR@1" in text
    assert re.search(r"c-cca +fold 5/5: .*\[10/10, \d+ s elapsed, ~0 s left\]$", text, re.M)
    assert "fold_scores" not in res["methods"]["cca"]  # the JSON contract is unchanged
    # the MLflow run: settings, mean and std of every score, the JSON and the report's plots
    opened = text.splitlines()[-2]
    assert opened.endswith(f"in experiment cv-test; open it with: mlflow ui "
                           f"--backend-store-uri {store}")
    run_id = re.search(r"MLflow run (\w+)", opened).group(1)
    client = tracking.client(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.source.name"] == "jobs.crossval"
    assert run.data.params["folds"] == "5" and run.data.params["methods"] == "['cca', 'c-cca']"
    assert run.data.params["settings.cca.dim"] == "9" and "json" not in run.data.params
    m = run.data.metrics
    folds = res["methods"]["c-cca"]["a2v_map_folds"]
    assert m["c-cca.a2v_map_mean"] == pytest.approx(np.mean(folds))
    assert m["c-cca.a2v_map_std"] == pytest.approx(np.std(folds))
    assert m["cca.map_mean"] == pytest.approx((res["methods"]["cca"]["a2v_map"] +
                                               res["methods"]["cca"]["v2a_map"]) / 2)
    assert {"cca.mrr1_v2a_std", "cca.a2v_p_at_10_mean", "c-cca.fit_seconds_mean"} <= set(m)
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.name == "uci-mfeat"
    paths = {a.path for a in client.list_artifacts(run_id)} | \
        {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"crossval.json", "config.yaml", "report/results.md", "report/map_bars.png",
            "report/pr_curves.png"} <= paths
    logged = json.loads(Path(client.download_artifacts(run_id, "crossval.json", str(tmp_path)))
                        .read_text())
    assert logged == res


def test_train_spelling_options_and_switches(tmp_path, capsys):
    """`tnn.train.epochs` sets every TNN method's (a later per-method key still wins),
    `tnn_label.*` tnn-label's; `--source` is `--data`; the MLflow options land in `mlflow`."""
    args = crossval.parse_args(["--source", "uci-mfeat:fou,kar", "--set", "tnn.train.epochs=3",
                                "--set", "settings.tnn_e2e.train.epochs=4", "--set",
                                "tnn_label.epochs=5", "--set", "tnn.cca.dim=7",
                                "--tracking-uri", "sqlite:///x.db", "--experiment", "e"])
    cfg = crossval.build_config(args)
    s = cfg.settings
    assert (s.tnn_c_cca.train.epochs, s.tnn_e2e.train.epochs, s.tnn_label.epochs) == (3, 4, 5)
    assert s.tnn_c_cca.cca.dim == s.tnn_e2e.cca.dim == 7 and cfg.data == "uci-mfeat:fou,kar"
    assert (cfg.mlflow.tracking_uri, cfg.mlflow.experiment, cfg.mlflow.enabled) == \
        ("sqlite:///x.db", "e", True)
    assert crossval.main(["--set", "tnn.pipeline=e2e"]) == 2
    assert "crossval runs each TNN pipeline as its own method" in capsys.readouterr().err
    assert crossval.main(["--experiment", " "]) == 2
    assert capsys.readouterr().err == ("crossval: error: mlflow.experiment: empty; name an "
                                       "MLflow experiment\n")
    one = crossval.build_config(crossval.parse_args(["--set", "tnn_label.krr.scalings=[feature]"]))
    assert one.settings.tnn_label.krr.scalings == ("feature",)
    assert crossval.main(["--set", "tnn_label.krr.scalings=[sideways]"]) == 2
    assert capsys.readouterr().err == ("crossval: error: tnn_label.krr.scalings must be distinct "
                                       "names of ('feature', 'global'), got ('sideways',)\n")


def test_smoke_runs_every_registered_method(tmp_path):
    out = tmp_path / "cv.json"
    assert crossval.main(["--smoke", "--json", str(out), *OFF]) == 0
    res = json.loads(out.read_text())
    assert res["folds"] == 2 and res["dim"] == 9
    assert list(res["methods"]) == ["cca", "kcca", "dcca", "c-cca", "c-kcca", "c-dcca",
                                    "tnn-c-cca", "tnn-e2e", "tnn-label"]
    assert res["methods"]["tnn-e2e"]["params"]["pipeline"] == "e2e"
    pr = res["methods"]["c-cca"]["pr_a2v"]
    assert len(pr["recall"]) == len(pr["precision"]) == 11 and pr["recall"][-1] == 1.0


def test_npz_source_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", audio=rng.normal(size=(60, 5)), visual=rng.normal(size=(60, 7)),
             labels=np.arange(60) % 3)
    assert crossval.main(["--data", f"npz:{tmp_path / 'd.npz'}", "--methods", "cca",
                          "--dim", "2", "--folds", "3", *OFF]) == 0
    assert crossval.main(["--methods", "cca,foo"]) == 2
    assert "unknown method 'foo'" in capsys.readouterr().err
    assert crossval.main(["--methods", "c-cca", "--dim", "80"]) == 2
    assert "settings.cca.dim=80 is impossible for c-cca" in capsys.readouterr().err
    assert crossval.main(["--data", f"npz:{tmp_path / 'none.npz'}"]) == 2
    assert "npz file not found" in capsys.readouterr().err
    assert crossval.main(["--set", "settings.cca.ridge=abc"]) == 2
    assert "settings.cca.ridge: expected float" in capsys.readouterr().err


def test_small_data_runs_the_whole_protocol(tmp_path, capsys):
    """40 clips, 5 classes, 5 folds (8 clips per test fold): every default method is evaluated;
    precision@10 on an 8-clip gallery is left out, not an error (short runs via --smoke, with
    --folds 5 overriding its 2)."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 5
    np.savez(tmp_path / "small.npz", audio=rng.normal(size=(40, 6)) + y[:, None],
             visual=rng.normal(size=(40, 8)) - y[:, None], labels=y)
    out = tmp_path / "cv.json"
    assert crossval.main(["--data", f"npz:{tmp_path / 'small.npz'}", "--smoke", "--folds", "5",
                          "--json", str(out), *OFF]) == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["folds"] == 5 and list(res["methods"]) == list(crossval.registry.METHODS)
    for name, r in res["methods"].items():
        assert len(r["a2v_map_folds"]) == 5 and 0 < r["a2v_map"] <= 1 and 0 < r["v2a_map"] <= 1
    assert "crossval: best" in capsys.readouterr().out


def test_widths_that_would_allocate_without_bound_are_refused_before_the_data(capsys):
    """--dim 10**12 once made dcca / tnn-e2e / tnn-label try to allocate petabytes."""
    cases = [(["--methods", "tnn-e2e", "--dim", str(10**12)],
              "settings.cca.dim=1000000000000: above 16384, the largest this job builds"),
             (["--methods", "dcca", "--set", "settings.baselines.dcca.hidden=[100000000]"],
              "settings.baselines.dcca.hidden=[100000000]: above 16384, the largest this job "
              "builds"),
             (["--methods", "cca", "--set", "settings.cca.dim=0"],
              "settings.cca.dim=0: must be an integer >= 1 (or null: the default for the data)")]
    for argv, message in cases:
        assert crossval.main(argv) == 2
        assert capsys.readouterr().err == f"crossval: error: {message}\n"
