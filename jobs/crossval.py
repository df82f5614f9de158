"""Cross-validate retrieval methods with the paper's protocol (K class-balanced folds).

Each fold is the test set once and the rest trains; every query ranks the whole test fold of
the other modality by cosine similarity; MAP, MRR@1 and fit time are reported per method,
averaged over folds, in a table and (with --json) in the JSON contract of DESIGN.md. The
protocol is `tnn.methods.protocol.crossval`; this is its command line.

    python -m jobs.crossval                                   # bundled data, every registered method
    python -m jobs.crossval --data uci-mfeat:fou,pix --methods cca,c-cca --dim 9 --json out.json
    python -m jobs.crossval --data s3://bucket/shards          # shards: their stored folds
    python -m jobs.crossval --methods tnn-c-cca,tnn-e2e --set tnn.train.epochs=20
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m jobs.crossval --data s3://bucket/shards --json s3://bucket/results/cv.json

Settings use `jobs.train`'s keys: `--set tnn.train.epochs=20` sets every TNN method's
(`settings.tnn_c_cca.train.epochs` and `settings.tnn_e2e.train.epochs`, which still set one
method each), `tnn_label.epochs` sets `settings.tnn_label.epochs`; `tnn.pipeline` is refused
(the pipelines are methods). The results are logged as an MLflow run of experiment
tnn-crossval (`--experiment`; `--tracking-uri`, else $MLFLOW_TRACKING_URI, else
./runs/mlflow; `--set mlflow.enabled=false` logs nothing): the settings as params, each
method's mean and std over folds of every score as metrics (`tnn-e2e.a2v_map_mean`), the JSON
and the report's plots as artifacts (`tnn.tracking.crossval`). It prints one progress line per
(method, fold) and ends with two lines: the command that opens the MLflow run, then
`crossval: best <method> mean MAP 0.xxx over K folds (... s)`.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from jobs.common import JobParser, at_least, emit_error, print_config
from tnn import methods as registry
from tnn.config import load
from tnn.data.write import check_writable, write_json
from tnn.errors import ConfigError, TnnError
from tnn.methods import protocol
from tnn.methods.protocol import CrossvalConfig


def parse_args(argv):
    ap = JobParser(prog="python -m jobs.crossval", description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="YAML preset (holds only what it changes)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override, e.g. --set tnn.train.epochs=20 (every TNN method) or "
                    "--set mlflow.enabled=false")
    ap.add_argument("--data", "--source", dest="data",
                    help="data source (default uci-mfeat = fou -> pix)")
    ap.add_argument("--methods", help=f"comma-separated, from {','.join(registry.METHODS)}")
    ap.add_argument("--folds", type=at_least(2))
    ap.add_argument("--seed", type=at_least(0))
    ap.add_argument("--dim", type=at_least(1),
                    help="CCA dimension / common-space width for every method")
    ap.add_argument("--json", help="write the results JSON here (a path or s3://bucket/key)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, "
                    "else sqlite under ./runs/mlflow)")
    ap.add_argument("--experiment", help="MLflow experiment (default tnn-crossval)")
    ap.add_argument("--smoke", action="store_true", help="2 folds, 2 epochs: a seconds-long check")
    return ap.parse_args(argv)


def methods(text: str) -> tuple[str, ...]:
    """`--methods cca,c-cca` -> ('cca', 'c-cca'): names, not YAML; each one registered."""
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise ConfigError(f"--methods {text!r}: expected comma-separated method names from "
                          f"{','.join(registry.METHODS)}")
    for name in names:
        registry.get(name)
    return names


def build_config(args) -> CrossvalConfig:
    """Defaults <- --smoke <- --config <- --set <- the options. Option values are taken as
    they are (`--json 'out #1.json'` is that file), only --set values are YAML."""
    sets = (list(protocol.SMOKE) if args.smoke else []) + protocol.train_spelling(args.set)
    for key, name in (("data", "data"), ("folds", "folds"), ("seed", "seed"), ("json", "json"),
                      ("mlflow.tracking_uri", "tracking_uri"), ("mlflow.experiment", "experiment")):
        if getattr(args, name) is not None:
            sets.append((key, getattr(args, name)))
    if args.methods is not None:
        sets.append(("methods", methods(args.methods)))
    cfg = load(CrossvalConfig, [args.config] if args.config else [], sets)
    if args.dim is not None:
        cfg = dataclasses.replace(cfg, settings=cfg.settings.with_dim(args.dim))
    for name in cfg.methods:
        registry.get(name)
    if cfg.json is not None:
        check_writable(cfg.json, "--json")
    return cfg


def track(cfg, pairs, results) -> str | None:
    """Log the MLflow run (`tnn.tracking.crossval`); the line that opens it, None if off."""
    if not cfg.mlflow.enabled:
        return None
    from tnn.tracking import crossval as tracked
    from tnn.tracking.runs import ui_command
    uri, run_id = tracked.log_run(cfg, pairs, results, protocol.result_json(cfg, pairs, results))
    return (f"crossval: MLflow run {run_id} in experiment {cfg.mlflow.experiment}; open it "
            f"with: {ui_command(uri)}")


def main(argv=None) -> int:
    start = time.perf_counter()
    try:
        cfg = build_config(parse_args(argv))
        print_config("crossval", cfg)
        pairs, results = protocol.crossval(cfg)
    except (TnnError, OSError) as err:
        return emit_error("crossval", err)
    print(protocol.table(results))
    try:
        if cfg.json:
            write_json(cfg.json, protocol.result_json(cfg, pairs, results))
            print(f"wrote {cfg.json}")
        opened = track(cfg, pairs, results)
    except (TnnError, OSError) as err:
        return emit_error("crossval", err)
    if opened:
        print(opened)
    best, mean = protocol.best(results)
    print(f"crossval: best {best} mean MAP {mean:.4f} over {cfg.folds} folds "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
