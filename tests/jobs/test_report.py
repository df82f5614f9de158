"""jobs.report: crossval JSON -> results.md + PNG plots."""
import json

import pytest

from jobs import report

PNG = b"\x89PNG\r\n\x1a\n"


def method(a2v_folds, v2a_folds, dim, pr=True, **extra):
    r = {"a2v_map": sum(a2v_folds) / len(a2v_folds), "v2a_map": sum(v2a_folds) / len(v2a_folds),
         "a2v_map_folds": a2v_folds, "v2a_map_folds": v2a_folds, "mrr1_a2v": 0.91,
         "mrr1_v2a": 0.82, "fit_seconds": 12.25, "params": {"cca": {"dim": dim}}, **extra}
    if pr:
        r["pr_a2v"] = {"recall": [0, 0.5, 1], "precision": [1, 0.6, 0.2]}
        r["pr_v2a"] = {"recall": [0, 0.5, 1], "precision": [1, 0.5, 0.1]}
    return r


def write(tmp_path, name, methods, **top):
    path = tmp_path / name
    path.write_text(json.dumps({"data": "uci-mfeat:fou,pix", "folds": 2, "seed": 0,
                                "methods": methods, **top}))
    return str(path)


def test_report_writes_table_and_plots(tmp_path, capsys):
    main = write(tmp_path, "cv9.json", {"cca": method([0.5, 0.6], [0.4, 0.44], 9),
                                        "c-kcca": method([0.8, 0.9], [0.7, 0.7], 9, pr=False)})
    other = write(tmp_path, "cv5.json", {"cca": method([0.3, 0.3], [0.2, 0.2], 5)}, dim=5)
    assert report.main(["--json", main, other, "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    for name in ("map_bars.png", "pr_curves.png", "map_vs_dim.png"):
        assert (out / name).read_bytes()[:8] == PNG
        assert f"]({name})" in (out / "results.md").read_text()
    md = (out / "results.md").read_text()
    # cca: a->v mean 0.55, std 0.05; v->a 0.42 +- 0.02; mean (0.55 + 0.42) / 2 = 0.485
    assert "| cca | 0.5500 +- 0.0500 | 0.4200 +- 0.0200 | 0.4850 | 0.9100 | 0.8200 | 12.25 |" in md
    assert "| c-kcca | 0.8500 +- 0.0500 | 0.7000 +- 0.0000 | 0.7750 |" in md
    assert "| cca | 0.3000 +- 0.0000 | 0.2000 +- 0.0000 | 0.2500 |" in md  # the dim-5 file
    assert "leaves out c-kcca" in md
    assert "report: wrote 3 plots and results.md" in capsys.readouterr().out


def test_plots_without_data_are_skipped_with_a_note(tmp_path):
    path = write(tmp_path, "cv.json", {"cca": {"a2v_map": 0.5, "v2a_map": 0.4}})
    assert report.main(["--json", path, "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "results.md").read_text()
    assert "| cca | 0.5000 +- 0.0000 | 0.4000 +- 0.0000 | 0.4500 | - | - | - |" in md
    assert "pr_curves.png skipped" in md and "map_vs_dim.png skipped" in md
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["map_bars.png", "results.md"]


def test_bad_input_is_one_error_line(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert report.main(["--json", str(tmp_path / "bad.json"), "--out", str(tmp_path)]) == 2
    assert report.main(["--json", str(tmp_path / "none.json"), "--out", str(tmp_path)]) == 2
    empty = write(tmp_path, "e.json", {})
    assert report.main(["--json", empty, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("report: error: ") for line in err)


def test_smoke_and_help(tmp_path, capsys):
    assert report.main(["--smoke", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "pr_curves.png").is_file()
    with pytest.raises(SystemExit) as exc:
        report.main(["--help"])
    assert exc.value.code == 0 and "--json" in capsys.readouterr().out
