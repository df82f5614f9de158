"""jobs.crossval: the paper's protocol end to end, its JSON contract and its errors."""

import json

import numpy as np

from jobs import crossval

KEYS = {"a2v_map", "v2a_map", "a2v_map_folds", "v2a_map_folds", "mrr1_a2v", "mrr1_v2a",
        "fit_seconds", "params"}


def test_bundled_cca_numbers_and_json_contract(tmp_path, capsys):
    out = tmp_path / "cv.json"
    assert crossval.main(["--methods", "cca,c-cca", "--dim", "9", "--json", str(out)]) == 0
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


def test_smoke_runs_every_registered_method(tmp_path):
    out = tmp_path / "cv.json"
    assert crossval.main(["--smoke", "--json", str(out)]) == 0
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
                          "--dim", "2", "--folds", "3"]) == 0
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
                          "--json", str(out)]) == 0, capsys.readouterr().err
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
