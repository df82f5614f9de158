"""Every job's `main(argv)` walked with generated hostile input (hypothesis; the strategies are in
tests/hostile/inputs.py): mutated npz / npy files, VEGAS labels.csv files, shard manifests and
Parquet files, crossval result JSON, `--set` / `--methods` YAML and CLI option values.

Each example passes only if the job ends with exit status 0 or 2 (no traceback, no other
status), a refusal (2) is ONE stderr line `JOB: error: ...` naming the file, option or value it
was given, and a refusal changes nothing in a prepared tree (a shard set, a crossval JSON, a
report folder with its PNG, an embedding index), hashed file by file before and after. The
jobs are pointed at that tree (`make_shards --overwrite` onto the shard set, `crossval --json`
onto the JSON, `report --out` onto the report), so a job that wrote before checking is caught.

Expensive success paths are kept out: crossval runs only `cca` on <= 40 clips; the jobs that
start Ray or MLflow (train, tune, embed, evaluate, promote) run with that first expensive step
replaced by a sentinel, so an input that gets that far counts as accepted (their data loading
is the same `load_source` crossval and make_shards are walked through).

Modes (hypothesis, derandomized: the same examples every run, no example database):
- CI (default): a fixed number of examples per test, about 2 min in all on 2 cores.
- long: `TNN_HOSTILE_EXAMPLES=2000 pytest -m slow tests/hostile` (that many per test).
The number of examples run is printed at the end of the session ("hostile input: N cases").
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs import crossval, embed, evaluate, make_shards, promote, query, report, train, tune
from tests.hostile import inputs as hi
from tests.support import ROOT, free_port
from tnn.data import write as shard_write
from tnn.serve import index as es

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
EXAMPLES = int(os.environ.get("TNN_HOSTILE_EXAMPLES", "0"))
CASES: Counter = Counter()  # examples run, per test (printed by tests/hostile/conftest.py)
QUIET = {"log": lambda *a, **k: None}
SHARDS = "synthetic:n=300,audio_dim=4,visual_dim=8"


def budget(ci: int) -> settings:
    return settings(max_examples=EXAMPLES or ci, derandomize=True, database=None, deadline=None,
                    print_blob=False, suppress_health_check=list(HealthCheck))


class Reached(Exception):
    """The job passed every check and got to its first expensive step (Ray, MLflow)."""


def _reached(*args, **kwargs):
    raise Reached()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """(kept: the prepared tree every refusal must leave as it is, work: a scratch folder)."""
    root = tmp_path_factory.mktemp("hostile")
    kept = root / "kept"
    shard_write.write(SHARDS, str(kept / "shards"), rows_per_shard=100, **QUIET)
    shutil.copytree(kept / "shards", root / "pristine-shards")
    (kept / "cv.json").write_text('{"methods": {"cca": {"a2v_map": 0.5, "v2a_map": 0.5}}}')
    with contextlib.redirect_stdout(io.StringIO()):
        assert report.main(["--smoke", "--out", str(kept / "report")]) == 0
    rng = np.random.default_rng(0)
    with es.EmbeddingWriter(str(kept / "index"), model={"model_uri": "runs:/r1", "run_id": "r1"},
                            class_names=("x", "y", "z"), rows_per_shard=50) as w:
        w.write(np.array([f"clip{i}" for i in range(120)]), np.arange(120) % 3,
                rng.normal(size=(120, 5)).astype(np.float32),
                rng.normal(size=(120, 5)).astype(np.float32))
    np.savez(root / "ok.npz", **hi.base_arrays())
    return kept, root


@pytest.fixture(scope="module", autouse=True)
def sandbox(tree):
    """A scratch working directory, S3 pointed at a closed local port (nothing leaves the
    machine, failures are fast), MLflow unset, and the sentinels in place."""
    mp = pytest.MonkeyPatch()
    work = tree[1] / "cwd"
    work.mkdir()
    mp.chdir(work)
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                       "AWS_MAX_ATTEMPTS": "1", "AWS_ACCESS_KEY_ID": "k",
                       "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}.items():
        mp.setenv(key, value)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    for module, name in ((train, "init_ray"), (train, "start_tracking"), (tune, "init_ray"),
                         (embed, "init_ray"), (embed, "smoke_model"), (promote, "promote"),
                         (crossval, "track"),
                         (evaluate.evaluation, "evaluate")):
        mp.setattr(module, name, _reached)
    yield
    mp.undo()


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(job, argv: list[str], names, kept: Path | None = None) -> int:
    """`job.main(argv)`; checks the exit status, the one error line (naming one of `names`)
    and, on a refusal, that `kept` is unchanged. Any other exception propagates (a failure)."""
    CASES[job.__name__] += 1
    before = snapshot(kept) if kept else None
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = job.main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    except Reached:
        return 0
    name, text = job.__name__.split(".")[-1], err.getvalue()
    assert rc in (0, 2), f"{name} {argv}: exit status {rc!r}; stderr: {text}"
    if rc == 2:
        lines = text.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{name}: error: "), \
            f"{name} {argv}: not one error line: {text!r}"
        shown = [str(n) for n in names if str(n)] + [repr(str(n))[1:-1] for n in names if str(n)]
        assert any(n in lines[0] for n in shown), f"{lines[0]!r} names none of {names}"
        if kept:
            assert snapshot(kept) == before, f"{name} {argv} refused, but changed {kept}"
    return rc


@contextlib.contextmanager
def scratch(root: Path):
    folder = Path(tempfile.mkdtemp(dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------- data files

@budget(60)
@given(recipe=hi.npz_recipe)
def test_make_shards_on_mutated_npz(tree, recipe):
    kept, root = tree
    with scratch(root) as d:
        path = hi.write_npz(d, recipe)
        run(make_shards, ["--source", f"npz:{path}", "--out", str(kept / "shards"),
                          "--overwrite", "--rows-per-shard", "10"], [path, path.name], kept)


@budget(60)
@given(recipe=hi.npz_recipe)
def test_crossval_on_mutated_npz(tree, recipe):
    kept, root = tree
    with scratch(root) as d:
        path = hi.write_npz(d, recipe)
        run(crossval, ["--data", f"npz:{path}", "--methods", "cca", "--folds", "2",
                       "--json", str(kept / "cv.json")], [path, path.name], kept)


@budget(40)
@given(recipe=hi.csv_recipe)
def test_crossval_on_mutated_labels_csv(tree, recipe):
    kept, root = tree
    with scratch(root) as d:
        clips = hi.write_clip_dir(d, recipe)
        run(crossval, ["--data", f"vegas:{clips}", "--methods", "cca", "--folds", "2",
                       "--json", str(kept / "cv.json")], [clips, "labels.csv"], kept)


def _shard_set_case(tree, recipe, job):
    kept, root = tree
    with scratch(root) as d:
        shutil.copytree(root / "pristine-shards", d / "set")
        (hi.edit_manifest if recipe[0] == "manifest" else hi.edit_parquet)(d / "set", recipe[1])
        src = str(d / "set")
        if job == "crossval":
            run(crossval, ["--data", src, "--methods", "cca", "--json", str(kept / "cv.json")],
                [src, "_manifest.json", "part-"], kept)
        else:
            run(make_shards, ["--source", src, "--out", str(kept / "shards"), "--overwrite"],
                [src, "_manifest.json", "part-"], kept)


@budget(40)
@given(recipe=hi.manifest_recipe, job=st.sampled_from(["crossval", "make_shards"]))
def test_jobs_on_mutated_manifests(tree, recipe, job):
    _shard_set_case(tree, ("manifest", recipe), job)


@budget(20)
@given(recipe=hi.parquet_recipe, job=st.sampled_from(["crossval", "make_shards"]))
def test_jobs_on_mutated_parquet_files(tree, recipe, job):
    _shard_set_case(tree, ("parquet", recipe), job)


@budget(30)
@given(recipe=hi.result_recipe)
def test_report_on_mutated_results(tree, recipe):
    kept, root = tree
    with scratch(root) as d:
        path = hi.write_result(d, recipe)
        run(report, ["--json", str(path), "--out", str(kept / "report")], [path], kept)


@budget(60)
@given(recipe=hi.npy_recipe, k=st.none() | hi.option_value)
def test_query_on_mutated_npy(tree, recipe, k):
    kept, root = tree
    with scratch(root) as d:
        path = hi.write_npy(d, recipe)
        argv = ["--index", str(kept / "index"), "--audio", str(path), "--embedded"]
        run(query, argv + ([f"--k={k}"] if k is not None else []),
            [path, path.name, kept / "index", "--k", "k ", k or "-"], kept)


# ------------------------------------------------------------------------- options

CROSSVAL_OPTIONS = ["--folds", "--seed", "--dim", "--methods", "--json", "--data", "--config",
                    "--set", "--tracking-uri", "--experiment", "--source"]
SET_KEYS = ["folds", "seed", "methods", "data", "json", "settings.cca.dim", "settings.cca.beta",
            "settings.cca", "settings", "nope.key", "", "a..b", ".", "folds.x",
            "settings.tnn_label.hidden", "settings.baselines.dcca.hidden",
            "settings.tnn_e2e.ensemble", "tnn.train.epochs", "tnn.pipeline", "tnn_label.hidden",
            "mlflow.enabled", "mlflow.experiment"]


@budget(120)
@given(option=st.sampled_from(CROSSVAL_OPTIONS), value=hi.option_value,
       key=st.sampled_from(SET_KEYS))
def test_crossval_option_values(tree, option, value, key):
    kept, root = tree
    with scratch(root) as d:
        argv = ["--data", f"npz:{root / 'ok.npz'}", "--methods", "cca", "--folds", "2",
                "--json", str(d / "out.json")]
        given_value = f"{key}={value}" if option == "--set" else value
        rc = run(crossval, argv + [f"{option}={given_value}"],
                 [option, option[2:], given_value, value.strip(), key or "override", "config"],
                 kept)
        if rc == 0 and option == "--json" and not value.startswith("s3://"):
            assert Path(value).is_file(), f"--json {value!r} was not written as that file"
            Path(value).unlink()


MAKE_SHARDS_OPTIONS = ["--rows-per-shard", "--folds", "--seed", "--chunk-rows", "--source",
                       "--out", "--data"]


@budget(60)
@given(option=st.sampled_from(MAKE_SHARDS_OPTIONS), value=hi.option_value)
def test_make_shards_option_values(tree, option, value):
    kept, root = tree
    if option in ("--source", "--data") and value.startswith("synthetic"):
        value = "synthetic:" + value  # only small or refused synthetic specs below
    with scratch(root) as d:
        argv = ["--source", f"npz:{root / 'ok.npz'}", "--out", str(d / "set")]
        run(make_shards, argv + [f"{option}={value}"], [option, option[2:], value], kept)


SYNTHETIC = st.lists(st.tuples(st.sampled_from(["n", "seed", "classes", "audio_dim",
                                                "visual_dim", "latent", "modes", "hidden",
                                                "noise", "spread", "x", ""]),
                               st.one_of(hi.nasty_text, st.sampled_from(
                                   ["-3", "0", "1", "3", "4", "10**12", "1e12", "2.5",
                                    "100000000000"]))), max_size=3)


@budget(40)
@given(parts=SYNTHETIC, job=st.sampled_from(["make_shards", "crossval"]))
def test_synthetic_specs(tree, parts, job):
    kept, root = tree
    spec = "synthetic:" + ",".join(f"{k}={v}" for k, v in parts)
    spec += ",n=40,audio_dim=4,visual_dim=6,hidden=8" if not any(
        k in ("n", "audio_dim", "visual_dim", "hidden") for k, _ in parts) else ""
    big = any(k in ("n", "audio_dim", "visual_dim", "hidden", "classes") and
              v.strip().isdigit() and 64 < int(v) <= 10**9 for k, v in parts)
    if big:  # a valid but large set: its streaming is measured elsewhere, not walked here
        return
    with scratch(root) as d:
        if job == "make_shards":
            run(make_shards, ["--source", spec, "--out", str(kept / "shards"), "--overwrite"],
                ["synthetic", spec], kept)
        else:
            run(crossval, ["--data", spec, "--methods", "cca", "--folds", "2",
                           "--json", str(d / "o.json")], ["synthetic", spec], kept)


RAY_OPTIONS = {
    train: (["--set", "mlflow.enabled=false"], ["--set", "--data", "--config", "--tracking-uri",
                                                 "--experiment"]),
    tune: (["--space", str(ROOT / "tune_spaces/margin_cca.yaml"), "--data", "uci-mfeat"],
           ["--set", "--data", "--trials", "--space", "--source"]),
    embed: (["--model", "models:/m@a", "--data", "uci-mfeat", "--out", "idx"],
            ["--model", "--batch-size", "--concurrency", "--num-cpus", "--folds",
             "--object-store-mib", "--rows-per-shard", "--out"]),
    evaluate: (["--model", "models:/m@a"], ["--data", "--fold", "--model", "--run"]),
    promote: (["--experiment", "e"], ["--experiment", "--min-improvement", "--model-name",
                                      "--metric"]),
}


@budget(60)
@given(job=st.sampled_from(list(RAY_OPTIONS)), pick=st.integers(0, 7), value=hi.option_value,
       key=st.sampled_from(["workers", "tnn.train.lr", "base.data", "data", "seed",
                            "test_fold", "nope", "space.x", "trials", "tnn.train.epochs",
                            "mlflow.experiment"]))
def test_ray_and_mlflow_job_option_values(tree, job, pick, value, key):
    """train, tune, embed, evaluate, promote up to their first Ray or MLflow call."""
    kept, root = tree
    base, options = RAY_OPTIONS[job]
    option = options[pick % len(options)]
    given_value = f"{key}={value}" if option == "--set" else value
    if option == "--data" and "synthetic" in value:
        return  # synthetic specs are walked above (a valid one would be generated in full)
    run(job, base + [f"{option}={given_value}"],
        [option, option[2:], given_value, key, key.split(".")[-1] + "=", "config", "space"], kept)


@budget(30)
@given(recipe=hi.npz_recipe, job=st.sampled_from([tune, train]))
def test_tune_and_train_on_mutated_npz(tree, recipe, job):
    kept, root = tree
    with scratch(root) as d:
        path = hi.write_npz(d, recipe)
        base = ["--set", "mlflow.enabled=false"] if job is train else \
            ["--space", str(ROOT / "tune_spaces/margin_cca.yaml")]
        run(job, base + ["--data", f"npz:{path}"], [path, path.name], kept)


@budget(50)
@given(recipe=hi.config_recipe, sets=st.lists(st.tuples(st.sampled_from(SET_KEYS),
                                                        hi.option_value), max_size=3))
def test_crossval_config_files_and_repeated_sets(tree, recipe, sets):
    kept, root = tree
    with scratch(root) as d:
        path = hi.write_config(d, recipe)
        argv = ["--data", f"npz:{root / 'ok.npz'}", "--methods", "cca", "--folds", "2",
                "--json", str(d / "o.json"), "--config", str(path)]
        for key, value in sets:
            argv += ["--set", f"{key}={value}"]
        names = [path, "override", "config", "settings.", "folds", "seed", "methods", "data",
                 "json", *(f"{k}={v}" for k, v in sets), *(k for k, _ in sets)]  # a key named
        run(crossval, argv, names, kept)
