"""A search's results as files: the best trial, a Markdown table, MAP plots (`jobs.tune --out`).

Rows are `tnn.ray.tune.summarise`'s (one per trial: params, status, epochs, scores, run id).
`write_outputs` puts tune.json, tune.md and the plots (MAP against margin and against CCA
dimension) into the search's parent MLflow run and an output folder.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tnn.errors import redact
from tnn.ray.tune_space import SearchSpace

PLOTS = (("tnn.train.margin", "tnn.cca.dim", "map_vs_margin.png"),
         ("tnn.cca.dim", "tnn.train.margin", "map_vs_dim.png"))
STATUSES = ("finished", "stopped", "error")


def counts(rows: list[dict]) -> dict[str, int]:
    """Trials per status: finished, stopped (by the scheduler), error."""
    return {s: sum(r["status"] == s for r in rows) for s in STATUSES}


def best_row(rows: list[dict], space: SearchSpace) -> dict | None:
    """The trial with the best `space.metric` (errors left out), None if none has it."""
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


def table(rows: list[dict], space: SearchSpace) -> str:
    """One Markdown row per trial (sorted by params), the best validation score in bold."""
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
    """tune.json, tune.md and the plots into the parent run (and `out`)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "tune.json").write_text(redact(json.dumps(report, indent=1, default=str)))
        (d / "tune.md").write_text(table(rows, space))
        files = [d / "tune.json", d / "tune.md"] + [
            p for x, g, name in PLOTS if (p := plot(rows, x, g, space.metric, d / name))]
        for f in files:
            if parent:
                parent.artifact(f, "plots" if f.suffix == ".png" else "results")
            if out:
                Path(out).mkdir(parents=True, exist_ok=True)
                (Path(out) / f.name).write_bytes(f.read_bytes())
