"""Cross-validation results (`tnn.methods.protocol.result_json`) as a Markdown table and PNG plots.

`write_report(runs, out)` writes `results.md` (per input file: method, a->v and v->a MAP +- std
over folds, their mean, MRR@1 both ways, fit seconds per fold), `map_bars.png` (MAP per method
and direction, first file), `pr_curves.png` (interpolated precision-recall, first file; needs
per-method `"pr_a2v": {"recall": [...], "precision": [...]}` and `"pr_v2a"`) and
`map_vs_dim.png` (MAP against the CCA dimension over the files; the dimension is the file's
top-level `"dim"`, else a method's `params.dim` or `params.cca.dim`). A plot that lacks its
data is skipped with a note in `results.md`. `jobs.report` is its command line.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from tnn.data.write import Staged
from tnn.errors import DataError

DIRECTIONS = (("a2v", "audio -> visual"), ("v2a", "visual -> audio"))


def read_results(path: str) -> dict:
    """A crossval result JSON, checked: a non-empty `methods` mapping with finite MAPs, per-fold
    MAPs (if any) lists of finite numbers, `params` (if any) a mapping; `DataError` naming the
    file, method and key otherwise (PR data that is not numbers is left out of the plot)."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 JSON ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    except (ValueError, RecursionError) as err:
        raise DataError(f"{path}: not readable JSON ({str(err)[:200]})") from None
    methods = data.get("methods") if isinstance(data, dict) else None
    if not isinstance(methods, dict) or not methods:
        raise DataError(f"{path}: expected a crossval result with a non-empty 'methods' mapping")
    for name, r in methods.items():
        missing = [k for k in ("a2v_map", "v2a_map")
                   if not isinstance(r, dict) or not _real(r.get(k))]
        if missing:
            raise DataError(f"{path}: method {name!r} lacks finite numeric {missing}")
        for key in ("a2v_map_folds", "v2a_map_folds"):
            folds = r.get(key)
            if folds is not None and not (isinstance(folds, list) and all(map(_real, folds))):
                raise DataError(f"{path}: method {name!r}: {key!r} must be a list of finite "
                                "numbers")
        if not isinstance(r.get("params", {}), (dict, type(None))) or \
                not isinstance((r.get("params") or {}).get("cca", {}), (dict, type(None))):
            raise DataError(f"{path}: method {name!r}: 'params' (and 'params.cca') must be "
                            "mappings")
    data["source"] = path
    return data


def _real(x) -> bool:
    """A finite int or float (JSON's true/false are not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and bool(np.isfinite(x))


def fold_stats(r: dict, key: str) -> tuple[float, float]:
    """(mean, std over folds) of a2v/v2a MAP; std 0 when the per-fold values are absent."""
    folds = r.get(f"{key}_map_folds")
    if folds:
        return float(np.mean(folds)), float(np.std(folds))
    return float(r[f"{key}_map"]), 0.0


def method_dim(data: dict, r: dict) -> int | None:
    params = r.get("params") or {}
    dim = data.get("dim", params.get("dim", (params.get("cca") or {}).get("dim")))
    return int(dim) if _real(dim) and 1 <= dim <= 2**31 else None


def _num(x, fmt="{:.4f}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) else "-"


def table(data: dict) -> str:
    """The Markdown table of one result file."""
    head = ("| method | a->v MAP | v->a MAP | mean | MRR@1 a->v | MRR@1 v->a | fit s / fold |\n"
            "|---|---|---|---|---|---|---|")
    rows = []
    for name, r in data["methods"].items():
        (a, sa), (v, sv) = fold_stats(r, "a2v"), fold_stats(r, "v2a")
        rows.append(f"| {name} | {a:.4f} +- {sa:.4f} | {v:.4f} +- {sv:.4f} | {(a + v) / 2:.4f} | "
                    f"{_num(r.get('mrr1_a2v'))} | {_num(r.get('mrr1_v2a'))} | "
                    f"{_num(r.get('fit_seconds'), '{:.2f}')} |")
    return "\n".join([head, *rows])


def header(data: dict) -> str:
    dims = {method_dim(data, r) for r in data["methods"].values()} - {None}
    parts = [f"data `{data.get('data', '?')}`", f"{data.get('folds', '?')} folds",
             f"seed {data.get('seed', '?')}"]
    if dims:
        parts.append("dim " + ", ".join(str(d) for d in sorted(dims)))
    return f"### {data['source']}\n\n" + ", ".join(parts) + " (MAP: mean +- std over folds)"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # a '$' in a method name is text, not TeX
    warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)  # drawn as boxes
    import matplotlib.pyplot as plt
    return plt


def _save(fig, axes, path: Path) -> None:
    """One legend below both panels, so it never hides a curve."""
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120, format="png")


def plot_map_bars(data: dict, path: Path) -> None:
    plt, names = _pyplot(), list(data["methods"])
    x, width = np.arange(len(names)), 0.38
    fig, ax = plt.subplots(figsize=(min(max(6.0, 1.1 * len(names) + 2), 60.0), 4.5))
    for i, (key, label) in enumerate(DIRECTIONS):
        stats = np.array([fold_stats(data["methods"][n], key) for n in names])  # (M, 2)
        bars = ax.bar(x + (i - 0.5) * width, stats[:, 0], width, yerr=stats[:, 1], capsize=3,
                      label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("MAP")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"MAP per method ({data.get('data', '')}, {data.get('folds', '?')} folds, "
                 "error bar = std over folds)", fontsize=10)
    ax.legend(loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def has_pr(r: dict) -> bool:
    """Both directions' PR curves: equal-length, non-empty lists of finite numbers."""
    def curve(pr) -> bool:
        keys = ("recall", "precision")
        lists = isinstance(pr, dict) and all(isinstance(pr.get(k), list) and pr[k] and
                                             all(map(_real, pr[k])) for k in keys)
        return lists and len(pr["recall"]) == len(pr["precision"])
    return all(curve(r.get(f"pr_{k}")) for k, _ in DIRECTIONS)


def plot_pr(data: dict, path: Path) -> list[str]:
    """Precision-recall per direction; returns the methods left out for lack of PR data."""
    plt = _pyplot()
    with_pr = [n for n, r in data["methods"].items() if has_pr(r)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, (key, label) in zip(axes, DIRECTIONS):
        for name in with_pr:
            pr = data["methods"][name][f"pr_{key}"]
            ax.plot(pr["recall"], pr["precision"], marker="o", markersize=3, label=name)
        ax.set_title(f"{label}", fontsize=10)
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("interpolated precision")
    fig.suptitle(f"Precision-recall ({data.get('data', '')}, mean over queries and folds)",
                 fontsize=10)
    _save(fig, axes, path)
    plt.close(fig)
    return [n for n in data["methods"] if n not in with_pr]


def dim_series(runs: list[dict]) -> dict[str, list[tuple[int, float, float]]]:
    """{method: [(dim, a2v MAP, v2a MAP), ...] sorted by dim} over all files."""
    series: dict[str, dict[int, tuple[float, float]]] = {}
    for data in runs:
        for name, r in data["methods"].items():
            dim = method_dim(data, r)
            if dim is not None:
                series.setdefault(name, {})[dim] = (r["a2v_map"], r["v2a_map"])
    return {n: [(d, *s[d]) for d in sorted(s)] for n, s in series.items() if len(s) >= 2}


def plot_map_vs_dim(series: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    dims = sorted({p[0] for points in series.values() for p in points})
    for ax, (i, label) in zip(axes, ((1, "audio -> visual"), (2, "visual -> audio"))):
        for name, points in series.items():
            ax.plot([p[0] for p in points], [p[i] for p in points], marker="o", label=name)
        ax.set_xticks(dims)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("CCA dimension k")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MAP")
    fig.suptitle("MAP against the common-space dimension", fontsize=10)
    _save(fig, axes, path)
    plt.close(fig)


def write_report(runs: list[dict], out: Path) -> list[str]:
    """results.md and the plots; returns the PNG names written. Everything is rendered under
    temporary names first (`tnn.data.write.Staged`): a failure leaves `out` as it was."""
    out.mkdir(parents=True, exist_ok=True)
    main, notes, written = runs[0], [], []
    with Staged() as stage:
        plot_map_bars(main, stage(out / "map_bars.png"))
        written.append("map_bars.png")
        if any(has_pr(r) for r in main["methods"].values()):
            missing = plot_pr(main, stage(out / "pr_curves.png"))
            written.append("pr_curves.png")
            if missing:
                notes.append(f"pr_curves.png leaves out {', '.join(missing)} "
                             "(no pr_a2v/pr_v2a data).")
        else:
            notes.append("pr_curves.png skipped: no method carries pr_a2v/pr_v2a data.")
        series = dim_series(runs)
        if series:
            plot_map_vs_dim(series, stage(out / "map_vs_dim.png"))
            written.append("map_vs_dim.png")
        else:
            notes.append("map_vs_dim.png skipped: it needs results at two or more CCA "
                         "dimensions (several --json files, each with a 'dim').")
        parts = ["# Cross-modal retrieval results", ""]
        for data in runs:
            parts += [header(data), "", table(data), ""]
        parts += [f"![MAP per method]({written[0]})"]
        parts += [f"![{name[:-4]}]({name})" for name in written[1:]]
        if notes:
            parts += ["", "Notes:", *[f"- {n}" for n in notes]]
        stage(out / "results.md").write_text("\n".join(parts) + "\n")
    return written


def example() -> dict:
    """A small two-method result for --smoke."""
    rec = np.linspace(0, 1, 11).tolist()
    def method(a, v, dim):
        return {"a2v_map": a, "v2a_map": v, "a2v_map_folds": [a - 0.01, a + 0.01],
                "v2a_map_folds": [v - 0.02, v + 0.02], "mrr1_a2v": a + 0.1, "mrr1_v2a": v + 0.1,
                "fit_seconds": 0.5, "params": {"dim": dim},
                "pr_a2v": {"recall": rec, "precision": np.linspace(1, a / 2, 11).tolist()},
                "pr_v2a": {"recall": rec, "precision": np.linspace(1, v / 2, 11).tolist()}}
    return {"data": "example", "folds": 2, "seed": 0, "source": "smoke example",
            "methods": {"cca": method(0.55, 0.5, 9), "c-cca": method(0.7, 0.68, 9)}}
