"""Benchmark: every registered method on every pair of the six bundled views, plus synthetic sets.

    python -m bench.view_pairs                                # 15 pairs + synthetic, 5 folds
    python -m bench.view_pairs --pairs fou,pix zer,mor --methods c-kcca,tnn-label
    python -m bench.view_pairs --resume                       # continue an interrupted run
    python -m bench.view_pairs --table-only                   # the table from the JSON
    python -m bench.view_pairs --jobs 2                       # data sets in 2 processes
    python -m bench.view_pairs --methods tnn-label --merge docs/results/view_pairs.json \
        --json new.json                                       # re-run one method, keep the rest

Data sets: the 15 unordered pairs of the UCI multiple-features views in the order
fou, fac, kar, pix, zer, mor (the first view of a pair as audio), then the small/noisy
`synthetic:n=1000,noise=1.5` (and `synthetic:n=20000`, VEGAS-shaped, with --big-synthetic).
Each data set x method runs the crossval protocol (`tnn.methods.protocol`: K class-balanced
folds with `--seed`, fit on the training part, MAP both ways on the test fold). The JSON
(`--json`) is {"folds", "seed", "sets": {data set: the crossval result JSON of
`protocol.result_json`, its "methods" holding each method run so far}}; it is rewritten after
every data set x method, and --resume skips the entries already there, so a run of hours can
be resumed. --merge OLD starts from OLD's results (same folds and seed) with the --methods
entries dropped, so only those methods run and every other method's result is kept as it was
(with --resume and an existing --json, that file is continued instead). The end: a JSON summary line, then a Markdown table: per data set the best baseline
(of cca kcca dcca c-cca c-kcca c-dcca: name and mean MAP of both directions), each tnn-*
method's mean MAP, the margin (best tnn-* minus best baseline), the target
min(0.03, (1 - best baseline) / 3) and whether the margin meets it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from tnn import methods as registry
from tnn.config import load
from tnn.core.folds import check_trainable
from tnn.data.sources import load_source
from tnn.methods import protocol
from tnn.methods.protocol import CrossvalConfig

VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
SYNTHETIC = "synthetic:n=1000,noise=1.5"
BIG_SYNTHETIC = "synthetic:n=20000"
BASELINES = ("cca", "kcca", "dcca", "c-cca", "c-kcca", "c-dcca")


def data_sets(pairs: list[str] | None, big_synthetic: bool) -> list[str]:
    """The data-set specs: `pairs` ("fou,pix" -> uci-mfeat:fou,pix; anything with a ':' as is),
    or the 15 view pairs + the small synthetic set; + the big synthetic one if asked."""
    if pairs:
        specs = [p if ":" in p else f"uci-mfeat:{p}" for p in pairs]
    else:
        specs = [f"uci-mfeat:{a},{b}" for a, b in itertools.combinations(VIEWS, 2)] + [SYNTHETIC]
    if big_synthetic and BIG_SYNTHETIC not in specs:
        specs.append(BIG_SYNTHETIC)
    return specs


def read_store(path: str, folds: int, seed: int, resume: bool) -> dict:
    """The JSON to extend: the existing one with --resume (same folds and seed), else empty."""
    if resume and Path(path).is_file():
        store = json.loads(Path(path).read_text())
        if (store.get("folds"), store.get("seed")) != (folds, seed):
            sys.exit(f"view_pairs: {path} has folds={store.get('folds')} seed={store.get('seed')}; "
                     f"--resume needs folds={folds} seed={seed}")
        return store
    return {"folds": folds, "seed": seed, "sets": {}}


def merge_base(path: str, folds: int, seed: int, methods: list[str]) -> dict:
    """`path`'s results without `methods` (they are to be re-run): the start of a --merge run."""
    if not Path(path).is_file():
        sys.exit(f"view_pairs: --merge {path}: no such file")
    store = read_store(path, folds, seed, True)
    for entry in store["sets"].values():
        entry["methods"] = {m: r for m, r in entry["methods"].items() if m not in methods}
    return store


def initial_store(args) -> dict:
    """The JSON a run extends: --json itself with --resume when it exists, else --merge's base,
    else `read_store` (empty without --resume)."""
    if args.merge and not (args.resume and Path(args.json).is_file()):
        if not args.methods:
            sys.exit("view_pairs: --merge needs --methods (the methods to re-run)")
        return merge_base(args.merge, args.folds, args.seed, args.methods.split(","))
    return read_store(args.json, args.folds, args.seed, args.resume)


def write_store(path: str, store: dict) -> None:
    """Write atomically (a killed run leaves the previous complete JSON)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(store, indent=1))
    os.replace(tmp, path)


def run_set(spec: str, cfg: CrossvalConfig, store: dict, path: str) -> int:
    """Every method of `cfg` not yet in `store` for `spec`, through the crossval protocol;
    the JSON is rewritten after each. Returns the number of methods run."""
    done = store["sets"].get(spec, {}).get("methods", {})
    todo = [m for m in cfg.methods if m not in done]
    if not todo:
        print(f"{spec}: all {len(cfg.methods)} methods already in {path}, skipped", flush=True)
        return 0
    pairs = load_source(spec)
    check_trainable(pairs.labels, pairs.clip_ids, pairs.class_names, pairs.name)
    protocol.check_dims(cfg, pairs)
    folds = protocol.fold_ids(pairs, cfg.folds, cfg.seed)
    print(f"{spec}: {pairs.n} clips, {pairs.num_classes} classes; running {', '.join(todo)}",
          flush=True)
    for name in todo:
        start = time.perf_counter()
        result = protocol.evaluate(name, pairs, folds, cfg, log=print)  # a line per fold
        entry = protocol.result_json(cfg, pairs, {**done, name: result})
        store["sets"][spec] = entry
        done = entry["methods"]
        write_store(path, store)
        print(f"{spec:28s} {name:10s} mean MAP {mean_map(result):.4f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return len(todo)


def mean_map(result: dict) -> float:
    return (result["a2v_map"] + result["v2a_map"]) / 2


def summarise(store: dict) -> dict:
    """Per data set: best baseline (name, mean MAP), each tnn-* mean MAP, margin, target, met
    (margin and met are None without both a baseline and a tnn-* method)."""
    out = {}
    for spec, entry in store["sets"].items():
        means = {m: mean_map(r) for m, r in entry["methods"].items()}
        base = {m: v for m, v in means.items() if m in BASELINES}
        tnn = {m: v for m, v in means.items() if m.startswith("tnn-")}
        row: dict = {"best_baseline": None, "tnn": tnn, "margin": None, "target": None,
                     "met": None}
        if base:
            name = max(base, key=base.get)
            row["best_baseline"] = [name, base[name]]
            row["target"] = min(0.03, (1 - base[name]) / 3)
        if base and tnn:
            row["margin"] = max(tnn.values()) - row["best_baseline"][1]
            row["met"] = bool(row["margin"] >= row["target"])
        out[spec] = row
    return out


def table(summary: dict) -> str:
    """The Markdown table of `summarise`, with a last line counting the targets met."""
    variants = sorted({m for row in summary.values() for m in row["tnn"]},
                      key=lambda m: list(registry.METHODS).index(m) if m in registry.METHODS else 99)
    fmt = lambda v, f="{:.4f}": "-" if v is None else f.format(v)  # noqa: E731
    head = ["data", "best baseline", *variants, "margin", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spec, row in summary.items():
        bb = row["best_baseline"]
        cells = [spec.removeprefix("uci-mfeat:"), "-" if bb is None else f"{bb[0]} {bb[1]:.4f}"]
        cells += [fmt(row["tnn"].get(m)) for m in variants]
        cells += [fmt(row["margin"], "{:+.4f}"), fmt(row["target"], "{:.3f}"),
                  "-" if row["met"] is None else ("yes" if row["met"] else "no")]
        lines.append("| " + " | ".join(cells) + " |")
    judged = [r["met"] for r in summary.values() if r["met"] is not None]
    lines.append(f"\ntargets met: {sum(judged)}/{len(judged)}")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.view_pairs", description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", nargs="+", help="data sets, e.g. fou,pix zer,mor synthetic:n=500 "
                    "(default: the 15 view pairs and the small synthetic set)")
    ap.add_argument("--methods", help="comma-separated (default: every registered method)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="docs/results/view_pairs.json")
    ap.add_argument("--resume", action="store_true", help="skip data set x method already in --json")
    ap.add_argument("--merge", metavar="JSON", help="start from this results JSON minus the "
                    "--methods entries: re-run only those, keep every other method's results")
    ap.add_argument("--table-only", action="store_true", help="only print the table of --json")
    ap.add_argument("--big-synthetic", action="store_true", help=f"also {BIG_SYNTHETIC}")
    ap.add_argument("--smoke", action="store_true", help="crossval's smoke settings (2 epochs, ...)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: as the reference numbers were made)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="run the data sets in this many processes (each --threads), then merge")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="crossval override, e.g. --set settings.tnn_label.epochs=20")
    return ap.parse_args(argv)


def build_config(args) -> CrossvalConfig:
    """The crossval config: defaults, smoke settings if asked, --set, then folds/seed/methods."""
    sets = [s for s in protocol.SMOKE if not s.startswith("folds=")] if args.smoke else []
    sets += list(args.set) + [f"folds={args.folds}", f"seed={args.seed}"]
    if args.methods:
        sets.append(f"methods=[{args.methods}]")
    cfg = load(CrossvalConfig, [], sets)
    for name in cfg.methods:
        registry.get(name)
    return cfg


def child_argv(args) -> list[str]:
    """The options a `--jobs` child repeats (it gets its own --json and --pairs)."""
    out = ["--folds", str(args.folds), "--seed", str(args.seed), "--threads", str(args.threads)]
    out += ["--methods", args.methods] if args.methods else []
    out += ["--smoke"] if args.smoke else []
    return out + [x for s in args.set for x in ("--set", s)]


def merge(store: dict, other: dict) -> None:
    """Add `other`'s data set x method results to `store` (`other`'s win)."""
    for spec, entry in other["sets"].items():
        mine = store["sets"].setdefault(spec, entry)
        if mine is not entry:
            mine["methods"] = {**mine["methods"], **entry["methods"]}


def run_parallel(args, specs: list[str]) -> None:
    """`--jobs N`: the data sets dealt round-robin to N child runs of this command, each with its
    own part JSON (seeded from --json with --resume), merged into --json at the end."""
    store = initial_store(args)
    if args.resume:  # the parts an interrupted --jobs run left behind
        for part in sorted(Path(args.json).parent.glob(Path(args.json).name + ".part*")):
            merge(store, read_store(str(part), args.folds, args.seed, True))
    children = []
    for k in range(args.jobs):
        part, mine = f"{args.json}.part{k}", specs[k::args.jobs]
        if not mine:
            continue
        write_store(part, {**store, "sets": {s: store["sets"][s] for s in mine
                                             if s in store["sets"]}})
        cmd = [sys.executable, "-m", "bench.view_pairs", *child_argv(args), "--resume",
               "--json", part, "--pairs", *mine]
        children.append((part, subprocess.Popen(cmd)))
    for part, child in children:
        if child.wait() != 0:
            sys.exit(f"view_pairs: a child run failed (exit {child.returncode}); its results "
                     f"so far are in {part}")
    for part, _ in children:
        merge(store, json.loads(Path(part).read_text()))
    keep = specs + ([s for s in store["sets"] if s not in specs] if args.merge else [])
    store["sets"] = {s: store["sets"][s] for s in keep if s in store["sets"]}
    write_store(args.json, store)
    for part, _ in children:
        os.remove(part)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.table_only and args.jobs > 1:
        run_parallel(args, data_sets(args.pairs, args.big_synthetic))
    elif not args.table_only:
        torch.set_num_threads(args.threads)
        cfg = build_config(args)
        store = initial_store(args)
        start, ran = time.perf_counter(), 0
        specs = data_sets(args.pairs, args.big_synthetic)
        for i, spec in enumerate(specs, 1):
            print(f"[{i}/{len(specs)}] {spec}", flush=True)
            ran += run_set(spec, cfg, store, args.json)
        print(f"view_pairs: {ran} data set x method runs in {time.perf_counter() - start:.0f} s; "
              f"wrote {args.json}", flush=True)
    elif not Path(args.json).is_file():
        sys.exit(f"view_pairs: {args.json}: no such file")
    store = json.loads(Path(args.json).read_text())
    summary = summarise(store)
    print(json.dumps({"folds": store["folds"], "seed": store["seed"], "summary": summary}))
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
