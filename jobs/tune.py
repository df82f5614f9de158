"""Search TNN settings with Ray Tune (ASHA on per-epoch validation MAP), tracked in MLflow.

    python -m jobs.tune --space tune_spaces/margin_cca.yaml --out docs/results/tune
    python -m jobs.tune --space tune_spaces/margin_cca.yaml --smoke   # 4 short trials, ~2 min
    python -m jobs.tune --space tune_spaces/e2e.yaml --trials 24 --experiment e2e-search \\
        --data s3://bucket/tnn/mfeat --set base.storage_path=s3://bucket/tnn/tune
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m jobs.tune --space tune_spaces/margin_cca.yaml --data s3://bucket/tnn/vegas \\
        --tracking-uri http://mlflow:5000 --set base.storage_path=s3://bucket/tnn/tune \\
        --set budget.use_gpu=true --set budget.cpus_per_worker=4

The space (`tnn.ray.tune_space.SearchSpace`) is checked against the data (class count, widths)
before Ray starts. Locally Ray gets a `trial_slot` resource for the trial drivers; on a
cluster without it each trial driver takes a CPU (printed). MLflow (`--tracking-uri`, else
$MLFLOW_TRACKING_URI, else SQLite under ./runs/mlflow): one parent run per search, one child
run per trial (tag mlflow.parentRunId; params, per-epoch metrics, finished trials' models);
children of trials the scheduler stopped end KILLED (failed ones FAILED); the parent gets the
best trial's params, scores and run id (tag best_child_run_id) and the plots MAP against
margin and against CCA dimension, also written with tune.json and tune.md to --out. The last
line is
`tune: best val_map 0.xxxx (test 0.xxxx) at tnn.train.margin=..., ... of N trials (F finished,
S stopped, E failed) in N s, parent run <id>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from jobs.common import emit_error, init_ray
from tnn.tracking import runs as tracking
from tnn.ray import tune as tr
from tnn.ray import tune_space as ts
from tnn.config import merge
from tnn.errors import ConfigError, TnnError

JOB = "tune"
PLOTS = (("tnn.train.margin", "tnn.cca.dim", "map_vs_margin.png"),
         ("tnn.cca.dim", "tnn.train.margin", "map_vs_dim.png"))


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m jobs.tune", description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tune_spaces/margin_cca.yaml", help="search space YAML")
    ap.add_argument("--data", help="data source or shard URI (sets base.data)")
    ap.add_argument("--trials", type=int, help="trials in all (a multiple of the grid's size)")
    ap.add_argument("--experiment", default="tnn-tune", help="MLflow experiment")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, "
                    "else sqlite under base.mlflow.local_dir)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="space override, e.g. --set base.tnn.train.epochs=10")
    ap.add_argument("--out", help="also write tune.json, tune.md and the plots here")
    ap.add_argument("--smoke", action="store_true", help="first two values of each grid/choice, "
                    "600 clips, 3 epochs, grace 1")
    return ap.parse_args(argv)


def smoke(space: ts.SearchSpace) -> ts.SearchSpace:
    params = tuple(dataclasses.replace(p, **{p.kind: p.values[:2]})
                   if p.kind in ("grid", "choice") else p for p in space.params)
    base = merge(space.base, {"subset": 600, "tnn": {"train": {"epochs": 3, "patience": 3}}})
    return dataclasses.replace(
        space, params=params, base=base,
        scheduler=dataclasses.replace(space.scheduler, max_t=0, grace_period=1,
                                      reduction_factor=2),
        budget=dataclasses.replace(space.budget, num_samples=1 if space.grid_size > 1 else 2))


def build(args) -> tuple[ts.SearchSpace, dict]:
    """The space (--smoke, --trials, --data applied) and the checked shared trial config."""
    space = ts.load_space(args.space, args.set)
    if args.data:
        space = dataclasses.replace(space, base=merge(space.base, {"data": args.data}))
    space = smoke(space) if args.smoke else space
    space = ts.with_trials(space, args.trials) if args.trials else space
    try:
        job = ts.job_dict(space)
        ts.check(space, job, ts.data_shape(job["data"]))
    except ConfigError as err:
        raise ConfigError(f"{args.space}: {err}") from None
    return space, job


def open_parent(args, space: ts.SearchSpace, job: dict, name: str):
    """The search's MLflow run: the space as params and config, plus a `parent` dict for trials."""
    uri, artifacts = tracking.resolve(args.tracking_uri, job["mlflow"]["local_dir"])
    if uri.startswith("sqlite:///") and artifacts is None:  # else ./mlruns of the cwd
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    logger, _ = tracking.open_run(uri, args.experiment, name, artifact_location=artifacts,
                                  tags={"job": JOB, "space": args.space})
    flat = {k: v for k, v in ts.space_dict(space).items() if k != "params"}
    logger.params({**tracking.params_of(flat), "trials": space.trials,
                   **{f"search.{p.key}": f"{p.kind} {list(p.values)}" for p in space.params}})
    logger.config({"space": ts.space_dict(space), "job": job}, "search.yaml")
    return logger, {"tracking_uri": uri, "experiment": args.experiment, "run_id": logger.run_id}


def close_children(parent, rows: list[dict]) -> None:
    """Each child run ends as its trial did (Tune knows; a stopped trial's run is RUNNING, or
    FAILED when the stop interrupted `fit`): finished FINISHED, stopped by the scheduler KILLED,
    error FAILED; run ids and statuses go into the rows."""
    by_trial = {r["trial_id"]: r for r in rows}
    end = {"finished": "FINISHED", "stopped": "KILLED", "error": "FAILED"}
    for run in tracking.child_runs(parent):
        row = by_trial.get(run.data.tags.get("tune.trial_id"), {"status": "error"})
        status = end[row["status"]] if run.info.status != "FINISHED" else "FINISHED"
        logger = tracking.RunLogger(parent.tracking_uri, run.info.run_id)
        logger.tags({"tune.status": row["status"]})
        if status != run.info.status:
            logger.finish(status)
        row.update(run_id=run.info.run_id, run_status=status)


def best_row(rows: list[dict], space: ts.SearchSpace) -> dict | None:
    scored = [r for r in rows if r["status"] != "error" and space.metric in r]
    sign = 1 if space.mode == "max" else -1
    return max(scored, key=lambda r: sign * r[space.metric], default=None)


def plot(rows: list[dict], x: str, group: str, metric: str, path: Path) -> Path | None:
    """Validation `metric` and test MAP against param `x`, one line per value of `group`."""
    rows = [r for r in rows if x in r["params"] and metric in r]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    groups = sorted({r["params"].get(group) for r in rows}, key=str)
    for ax, key, title in ((axes[0], metric, f"validation ({metric})"),
                           (axes[1], "test_map", "test fold (test_map)")):
        for i, g in enumerate(groups):
            pts = sorted((r["params"][x], r[key], r["status"] == "finished") for r in rows
                         if r["params"].get(group) == g and key in r)
            if not pts:
                continue
            xs, ys, done = zip(*pts)
            line, = ax.plot(xs, ys, "-", color=f"C{i}", label=f"{group.split('.')[-1]}={g}")
            ax.scatter(xs, ys, color=[line.get_color() if d else "white" for d in done],
                       edgecolors=line.get_color(), zorder=3)
        ax.set_xlabel(x), ax.set_title(title), ax.grid(alpha=0.3)
    axes[0].set_ylabel("MAP (mean of a->v, v->a)")
    axes[1].legend(fontsize=8)
    fig.suptitle("filled: finished trial (its selected encoder); hollow: stopped by the "
                 "scheduler (its best epoch)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def table(rows: list[dict], space: ts.SearchSpace) -> str:
    keys = [p.key for p in space.params]
    head = [k.split(".")[-1] for k in keys] + ["status", "epochs", f"val MAP ({space.metric})",
                                               "test MAP", "trial", "MLflow run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = best_row(rows, space)
    for r in sorted(rows, key=lambda r: [str(r["params"].get(k)) for k in keys]):
        num = lambda k: f"{r[k]:.4f}" if k in r else "-"  # noqa: E731
        val = f"**{num(space.metric)}**" if r is best else num(space.metric)
        cells = [f"{r['params'].get(k):g}" if isinstance(r["params"].get(k), float)
                 else str(r["params"].get(k)) for k in keys]
        lines.append("| " + " | ".join(cells + [r["status"], str(r["epochs"]), val,
                                                num("test_map"), r["trial_id"],
                                                r.get("run_id", "-")[:8]]) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, rows, space, parent, out: str | None) -> None:
    """tune.json, tune.md and the plots into the parent run (and --out)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "tune.json").write_text(json.dumps(report, indent=1, default=str))
        (d / "tune.md").write_text(table(rows, space))
        files = [d / "tune.json", d / "tune.md"] + [
            p for x, g, name in PLOTS if (p := plot(rows, x, g, space.metric, d / name))]
        for f in files:
            if parent:
                parent.artifact(f, "plots" if f.suffix == ".png" else "results")
            if out:
                Path(out).mkdir(parents=True, exist_ok=True)
                (Path(out) / f.name).write_bytes(f.read_bytes())


def summarise(parent, rows, space, best, seconds: float, extra: dict) -> None:
    """The best trial on the parent run: params, scores, tags."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "stopped", "error")}
    parent.metrics({"trials_finished": counts["finished"], "trials_stopped": counts["stopped"],
                    "trials_failed": counts["error"], "search_s": seconds,
                    **({f"best_{k}": best[k] for k in ts.SCORES if k in best} if best else {})})
    if best:
        parent.params({f"best.{k}": v for k, v in best["params"].items()})
        parent.tags({"best_trial_id": best["trial_id"],
                     "best_child_run_id": best.get("run_id", "-")})
    parent.tags({k: str(v) for k, v in extra.items()})


def run_search(args, space, job, name: str) -> tuple[dict, list, dict | None]:
    """Ray, the parent run, the search, the leak check, the children closed, the summary."""
    import ray
    n, driver, note = ts.concurrency(space.budget, ray.cluster_resources())
    print(f"{JOB}: {space.trials} trial(s), {note}", flush=True)
    parent, info = open_parent(args, space, job, name)
    start, before = time.perf_counter(), tr.active_placement_groups()
    try:
        grid = tr.search(space, job, name, info, n, driver)
        seconds = time.perf_counter() - start
        left = tr.wait_released(before)
        rows = tr.summarise(grid, space)
        close_children(parent, rows)
        best = best_row(rows, space)
        report = {"space": args.space, "name": name, "data": job["data"], "method": space.method,
                  "metric": space.metric, "mode": space.mode, "concurrency": n,
                  "seconds": round(seconds, 1), "parent_run_id": parent.run_id,
                  "tracking_uri": info["tracking_uri"], "placement_groups_left": len(left),
                  "space_config": ts.space_dict(space), "best": best, "trials": rows}
        summarise(parent, rows, space, best, seconds, {"placement_groups_left": len(left)})
        write_outputs(report, rows, space, parent, args.out)
        parent.finish("FINISHED")
    except BaseException:
        parent.finish("FAILED")
        raise
    return report, rows, best


def main(argv=None) -> int:
    start, started = time.perf_counter(), False
    try:
        args = parse_args(argv)
        space, job = build(args)
        print(f"{JOB}: resolved space\n  " + yaml.safe_dump(
            ts.space_dict(space), sort_keys=False, default_flow_style=None).rstrip().replace(
            "\n", "\n  "), flush=True)
        name = time.strftime("tune-%Y%m%d-%H%M%S")
        started = init_ray(resources={"trial_slot": space.budget.max_concurrent_trials
                                      or os.cpu_count() or 1})
        report, rows, best = run_search(args, space, job, name)
    except TnnError as err:
        return emit_error(JOB, err)
    finally:
        if started:
            import ray
            ray.shutdown()
    counts = [sum(r["status"] == s for r in rows) for s in ("finished", "stopped", "error")]
    where = ", ".join(f"{k}={v}" for k, v in best["params"].items()) if best else "-"
    score = f"{best[space.metric]:.4f} (test {best.get('test_map', float('nan')):.4f})" \
        if best else "-"
    print(f"{JOB}: best {space.metric} {score} at {where} of {len(rows)} trials ({counts[0]} "
          f"finished, {counts[1]} stopped, {counts[2]} failed) in "
          f"{time.perf_counter() - start:.0f} s, parent run {report['parent_run_id']}",
          flush=True)
    return 0 if best else 1


if __name__ == "__main__":
    sys.exit(main())
