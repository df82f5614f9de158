"""The `tnn` console script (jobs/cli.py) and one spelling per setting across the jobs:
jobs.train's dotted keys in tune, --tracking-uri / --experiment / --data on train."""

import subprocess
import sys
from importlib import metadata

import pytest

from jobs import cli, report, train, tune
from tests.support import ROOT
from tnn.ray import tune_space as ts


def test_tnn_runs_a_job_lists_them_and_refuses_unknown_ones(tmp_path, capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {job} " in out for job in cli.JOBS)
    assert "crossval     Cross-validate retrieval methods" in out
    assert cli.main(["nope", "--x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tnn: error: unknown job 'nope'; choose from make_shards, ") and \
        err.count("\n") == 1
    assert cli.main([]) == 2 and "usage: tnn <job>" in capsys.readouterr().err
    # the same as python -m jobs.report: its options, output, files and exit statuses
    assert cli.main(["report", "--smoke", "--out", str(tmp_path / "a")]) == 0
    via_tnn = capsys.readouterr().out
    assert report.main(["--smoke", "--out", str(tmp_path / "b")]) == 0
    assert via_tnn == capsys.readouterr().out.replace(str(tmp_path / "b"), str(tmp_path / "a"))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == \
        sorted(p.name for p in (tmp_path / "b").iterdir())
    assert cli.main(["report", "--help"]) == 0 and "--json" in capsys.readouterr().out
    assert cli.main(["report", "--out", str(tmp_path), "--bogus"]) == 2
    assert capsys.readouterr().err.startswith("report: error: unrecognized arguments: --bogus")


def test_the_installed_console_script():
    """pyproject's [project.scripts] entry, and `.venv/bin/tnn` after `pip install -e .`."""
    text = (ROOT / "pyproject.toml").read_text()
    assert '\ntnn = "jobs.cli:entry"' in text
    try:
        (point,) = metadata.entry_points(group="console_scripts", name="tnn")
    except ValueError:
        pytest.skip("the tnn package is not installed (pip install -e .)")
    assert point.value == "jobs.cli:entry"
    script = ROOT / ".venv" / "bin" / "tnn"
    script = script if script.exists() else sys.prefix + "/bin/tnn"
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "train        Train a TNN pipeline" in res.stdout
    res = subprocess.run([str(script), "trian"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "'trian'" in res.stderr


def test_train_options_set_the_mlflow_section_and_data():
    cfg = train.build_config(train.parse_args([
        "--source", "uci-mfeat:fou,kar", "--tracking-uri", "sqlite:///x.db",
        "--experiment", "mine", "--set", "tnn.train.epochs=12"]))
    assert (cfg.data, cfg.mlflow.tracking_uri, cfg.mlflow.experiment) == \
        ("uci-mfeat:fou,kar", "sqlite:///x.db", "mine")
    assert cfg.tnn.train.epochs == 12
    cfg = train.build_config(train.parse_args(["--experiment", "a", "--set",
                                               "mlflow.experiment=b"]))
    assert cfg.mlflow.experiment == "b"  # --set comes last, as for --data


def test_tune_takes_train_keys_and_still_the_old_base_spelling(capsys):
    sets, notes = ts.space_overrides(["tnn.train.epochs=12", "budget.workers=1", "metric=val_map",
                                      "method=tnn-e2e", "base.subset=600", "storage_path=/s"])
    assert sets == ["base.tnn.train.epochs=12", "budget.workers=1", "metric=val_map",
                    "method=tnn-e2e", "base.subset=600", "base.storage_path=/s"]
    assert notes == ["tune: --set base.subset=600: deprecated spelling; use --set subset=600"]
    space = ROOT / "tune_spaces/margin_cca.yaml"
    args = tune.parse_args(["--space", str(space), "--set", "tnn.train.epochs=12"])
    args.set, _ = ts.space_overrides(args.set)
    new = tune.build(args)[1]
    args = tune.parse_args(["--space", str(space), "--set", "base.tnn.train.epochs=12"])
    args.set, _ = ts.space_overrides(args.set)
    assert new == tune.build(args)[1] and new["tnn"]["train"]["epochs"] == 12

    class Reached(Exception):
        pass

    def reached(**kwargs):
        raise Reached()

    mp = pytest.MonkeyPatch()
    mp.setattr(tune, "init_ray", reached)
    try:
        with pytest.raises(Reached):
            tune.main(["--space", str(space), "--set", "base.tnn.train.epochs=12"])
    finally:
        mp.undo()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("tune: --set base.tnn.train.epochs=12: deprecated spelling; use --set "
                      "tnn.train.epochs=12")
    assert tune.main(["--space", str(space), "--set", "workers=3"]) == 2
    assert "workers: set by the tuning job" in capsys.readouterr().err
