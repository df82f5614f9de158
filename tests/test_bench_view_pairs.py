"""bench.view_pairs: the data sets, the JSON written per data set x method, --resume, the table."""

import json

import pytest

from bench import view_pairs
from tnn.methods import protocol


def test_default_data_sets_are_the_15_view_pairs_then_synthetic():
    specs = view_pairs.data_sets(None, big_synthetic=False)
    assert len(specs) == 16 and specs[0] == "uci-mfeat:fou,fac" and specs[4] == "uci-mfeat:fou,mor"
    assert specs[5] == "uci-mfeat:fac,kar" and specs[14] == "uci-mfeat:zer,mor"
    assert specs[-1] == "synthetic:n=1000,noise=1.5"
    assert view_pairs.data_sets(None, big_synthetic=True)[-1] == "synthetic:n=20000"
    assert view_pairs.data_sets(["pix,zer", "synthetic:n=300"], False) == [
        "uci-mfeat:pix,zer", "synthetic:n=300"]


def entry(**means):
    return {"methods": {m: {"a2v_map": v + 0.01, "v2a_map": v - 0.01} for m, v in means.items()}}


def test_summary_margin_and_target():
    store = {"folds": 5, "seed": 0, "sets": {
        "uci-mfeat:fou,pix": entry(**{"cca": 0.6, "c-kcca": 0.84, "tnn-e2e": 0.85, "tnn-label": 0.87}),
        "uci-mfeat:fac,pix": entry(**{"c-kcca": 0.97, "tnn-label": 0.975}),
        "uci-mfeat:kar,pix": entry(**{"c-kcca": 0.97, "tnn-label": 0.985}),
        "synthetic:n=9": entry(**{"cca": 0.3})}}
    s = view_pairs.summarise(store)
    fp = s["uci-mfeat:fou,pix"]
    assert fp["best_baseline"] == ["c-kcca", pytest.approx(0.84)]
    assert fp["margin"] == pytest.approx(0.03) and fp["target"] == 0.03 and fp["met"] is True
    assert s["uci-mfeat:fac,pix"]["target"] == pytest.approx(0.01) and s["uci-mfeat:fac,pix"]["met"] is False
    assert s["uci-mfeat:kar,pix"]["met"] is True  # +0.015 >= a third of the headroom, 0.01
    assert s["synthetic:n=9"]["margin"] is None and s["synthetic:n=9"]["met"] is None
    text = view_pairs.table(s)
    assert "| data | best baseline | tnn-e2e | tnn-label | margin | target | met |" in text
    assert "| fou,pix | c-kcca 0.8400 | 0.8500 | 0.8700 | +0.0300 | 0.030 | yes |" in text
    assert "| synthetic:n=9 | cca 0.3000 | - | - | - | 0.030 | - |" in text
    assert text.endswith("targets met: 2/3")


def test_tiny_run_writes_json_prints_table_and_resumes(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "r" / "vp.json")
    base = ["--pairs", "fou,pix", "--folds", "2", "--smoke", "--json", out,
            "--set", "settings.tnn_label.hidden=[32]", "--set", "settings.tnn_label.kcca.rank=50"]
    assert view_pairs.main(base + ["--methods", "cca,tnn-label"]) == 0
    text = capsys.readouterr().out
    store = json.loads(open(out).read())
    assert store["folds"] == 2 and store["seed"] == 0 and list(store["sets"]) == ["uci-mfeat:fou,pix"]
    res = store["sets"]["uci-mfeat:fou,pix"]
    assert res["data"] == "uci-mfeat:fou,pix" and list(res["methods"]) == ["cca", "tnn-label"]
    assert len(res["methods"]["tnn-label"]["a2v_map_folds"]) == 2
    assert res["methods"]["tnn-label"]["params"]["epochs"] == 2  # smoke settings
    assert res["methods"]["tnn-label"]["fit_cpu_seconds"] > 0  # process CPU seconds per fit
    assert "fold 2/2" in text and "| fou,pix | cca 0." in text and "targets met:" in text
    summary = json.loads(next(line for line in text.splitlines() if line.startswith("{")))
    assert summary["summary"]["uci-mfeat:fou,pix"]["best_baseline"][0] == "cca"

    ran = []
    real = protocol.evaluate
    monkeypatch.setattr(protocol, "evaluate", lambda name, *a, **k: ran.append(name) or real(name, *a, **k))
    assert view_pairs.main(base + ["--methods", "cca,c-cca,tnn-label", "--resume"]) == 0
    assert ran == ["c-cca"]  # the two already in the JSON were skipped
    store = json.loads(open(out).read())
    assert list(store["sets"]["uci-mfeat:fou,pix"]["methods"]) == ["cca", "tnn-label", "c-cca"]
    assert store["sets"]["uci-mfeat:fou,pix"]["methods"]["cca"] == res["methods"]["cca"]
    capsys.readouterr()

    assert view_pairs.main(["--table-only", "--json", out]) == 0
    assert ran == ["c-cca"] and "| fou,pix | c-cca 0." in capsys.readouterr().out
    with pytest.raises(SystemExit, match="folds=2"):
        view_pairs.main(["--pairs", "fou,pix", "--folds", "3", "--json", out, "--resume"])


def test_jobs_split_the_data_sets_over_processes_and_merge_in_order(tmp_path, capsys):
    out = str(tmp_path / "vp.json")
    specs = ["fou,pix", "zer,mor", "synthetic:n=200"]
    args = ["--pairs", *specs, "--methods", "cca,c-cca", "--folds", "2", "--json", out]
    assert view_pairs.main(args + ["--jobs", "2"]) == 0
    text = capsys.readouterr().out
    store = json.loads(open(out).read())
    assert list(store["sets"]) == ["uci-mfeat:fou,pix", "uci-mfeat:zer,mor", "synthetic:n=200"]
    assert not list(tmp_path.glob("vp.json.part*"))  # parts merged and removed
    assert "| data | best baseline | margin | target | met |" in text
    one = str(tmp_path / "one.json")
    assert view_pairs.main(["--pairs", *specs, "--methods", "cca,c-cca", "--folds", "2",
                            "--json", one]) == 0
    single = json.loads(open(one).read())["sets"]
    maps = lambda sets: {(d, m): (r["a2v_map_folds"], r["v2a_map_folds"])  # noqa: E731
                         for d, e in sets.items() for m, r in e["methods"].items()}
    assert maps(single) == maps(store["sets"])  # the same results as one process


def test_jobs_resume_picks_up_the_parts_of_an_interrupted_run(tmp_path, monkeypatch):
    out = tmp_path / "vp.json"
    args = ["--pairs", "fou,pix", "zer,mor", "--methods", "cca,c-cca", "--folds", "2",
            "--json", str(out)]
    assert view_pairs.main(args[:-2] + ["--json", str(tmp_path / "one.json")]) == 0
    done = json.loads((tmp_path / "one.json").read_text())
    # as if a --jobs 2 run was killed: part0 has fou,pix (both methods), part1 zer,mor (cca only)
    zm = done["sets"]["uci-mfeat:zer,mor"]
    part1 = {**done, "sets": {"uci-mfeat:zer,mor": {**zm, "methods": {"cca": zm["methods"]["cca"]}}}}
    (tmp_path / "vp.json.part0").write_text(json.dumps({**done, "sets": {
        "uci-mfeat:fou,pix": done["sets"]["uci-mfeat:fou,pix"]}}))
    (tmp_path / "vp.json.part1").write_text(json.dumps(part1))
    ran = []
    monkeypatch.setattr(view_pairs.subprocess, "Popen", lambda cmd: ran.append(cmd) or
                        type("P", (), {"wait": lambda self: view_pairs.main(cmd[3:]),
                                       "returncode": 0})())
    assert view_pairs.main(args + ["--jobs", "2", "--resume"]) == 0
    sets = json.loads(out.read_text())["sets"]
    assert sets["uci-mfeat:fou,pix"] == done["sets"]["uci-mfeat:fou,pix"]  # kept as it was
    assert sets["uci-mfeat:zer,mor"]["methods"]["cca"] == zm["methods"]["cca"]  # not rerun
    got = sets["uci-mfeat:zer,mor"]["methods"]["c-cca"]  # the missing one, filled in
    assert got["a2v_map_folds"] == zm["methods"]["c-cca"]["a2v_map_folds"]
    assert len(ran) == 2 and not list(tmp_path.glob("vp.json.part*"))


def test_merge_reruns_only_the_given_methods_and_keeps_the_rest(tmp_path, monkeypatch):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    base = ["--folds", "2", "--methods", "cca,c-cca"]
    assert view_pairs.main(["--pairs", "fou,pix", "zer,mor", *base, "--json", str(old)]) == 0
    before = json.loads(old.read_text())
    ran = []
    real = protocol.evaluate
    monkeypatch.setattr(protocol, "evaluate", lambda name, *a, **k: ran.append(name) or real(name, *a, **k))
    argv = ["--pairs", "fou,pix", "--folds", "2", "--methods", "c-cca", "--merge", str(old),
            "--json", str(new)]
    assert view_pairs.main(argv) == 0
    assert ran == ["c-cca"] and json.loads(old.read_text()) == before  # OLD is only read
    sets = json.loads(new.read_text())["sets"]
    assert list(sets) == ["uci-mfeat:fou,pix", "uci-mfeat:zer,mor"]  # zer,mor kept, not run,
    zm = before["sets"]["uci-mfeat:zer,mor"]  # without its stale c-cca
    assert sets["uci-mfeat:zer,mor"] == {**zm, "methods": {"cca": zm["methods"]["cca"]}}
    fp, was = sets["uci-mfeat:fou,pix"]["methods"], before["sets"]["uci-mfeat:fou,pix"]["methods"]
    assert fp["cca"] == was["cca"] and list(fp) == ["cca", "c-cca"]  # c-cca: a fresh run
    assert fp["c-cca"]["a2v_map_folds"] == was["c-cca"]["a2v_map_folds"]
    with pytest.raises(SystemExit, match="needs --methods"):
        view_pairs.main(["--pairs", "fou,pix", "--folds", "2", "--merge", str(old), "--json", str(new)])
    with pytest.raises(SystemExit, match="folds=2"):
        view_pairs.main(argv[:2] + ["--folds", "3"] + argv[4:])
