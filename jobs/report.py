"""Turn cross-validation JSON (`jobs.crossval --json`) into a Markdown table and PNG plots.

    python -m jobs.report --json cv.json --out report/
    python -m jobs.report --json cv_dim5.json cv_dim9.json cv_dim20.json --out report/
    python -m jobs.report --smoke --out /tmp/report      # a built-in two-method example

Writes into --out: `results.md` (per input file: method, a->v and v->a MAP +- std over folds,
their mean, MRR@1 both ways, fit seconds per fold), `map_bars.png` (MAP per method and direction,
first file), `pr_curves.png` (interpolated precision-recall, first file; needs per-method
`"pr_a2v": {"recall": [...], "precision": [...]}` and `"pr_v2a"`) and `map_vs_dim.png` (MAP
against the CCA dimension over the files; the dimension is the file's top-level `"dim"`, else a
method's `params.dim` or `params.cca.dim`). A plot that lacks its data is skipped with a note in
`results.md` (`tnn.methods.report`). Every input file is read and checked before anything is
written, and the outputs are rendered under temporary names, then renamed: a refusal or a crash
leaves --out as it was. It ends with one line: `report: wrote N plots and results.md to DIR`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.common import JobParser, emit_error
from tnn.errors import TnnError
from tnn.methods import report


def parse_args(argv):
    ap = JobParser(prog="python -m jobs.report", description=__doc__.split("\n")[0])
    ap.add_argument("--json", nargs="+", default=[], metavar="RESULTS.json",
                    help="crossval results; several files (e.g. one per --dim) add map_vs_dim")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--smoke", action="store_true", help="render a built-in example instead")
    args = ap.parse_args(argv)
    if not args.json and not args.smoke:
        ap.error("give --json RESULTS.json (or --smoke)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        runs = [report.example()] if args.smoke else [report.read_results(p) for p in args.json]
        written = report.write_report(runs, Path(args.out))
    except (TnnError, OSError) as err:  # every input is read and checked before any write
        return emit_error("report", err)
    print(report.table(runs[0]))
    print(f"report: wrote {len(written)} plots and results.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
