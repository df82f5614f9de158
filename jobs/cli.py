"""The `tnn` console script: `tnn <job> ...` is `python -m jobs.<job> ...`.

    tnn --help                       # the jobs, one line each
    tnn train --smoke                # = python -m jobs.train --smoke
    tnn crossval --methods cca,c-cca --json cv.json

Installed by `pip install -e .` ([project.scripts] in pyproject.toml). A job's own options and
exit status are unchanged; `tnn <job> --help` shows them. An unknown job is one line on stderr,
exit status 2. The job list is read from the job modules' docstrings (nothing imported).
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

JOBS = ("make_shards", "crossval", "report", "train", "tune", "promote", "evaluate", "embed",
        "query", "serve")
"""In the order of the README's path: data, comparison, training, registry, serving."""


def summary(job: str) -> str:
    """The first line of a job module's docstring, read without importing it (Ray, MLflow)."""
    path = Path(__file__).with_name(f"{job}.py")
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.split("\n")[0]


def usage() -> str:
    lines = ["usage: tnn <job> [options]   (the same as python -m jobs.<job> [options])", "",
             "jobs:"]
    lines += [f"  {job:12s} {summary(job)}" for job in JOBS]
    lines += ["", "tnn <job> --help shows a job's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run job `argv[0]` with the rest of `argv` (default: the command line); its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"tnn: error: unknown job {job!r}; choose from {', '.join(JOBS)} (see tnn --help)",
              file=sys.stderr, flush=True)
        return 2
    module = importlib.import_module(f"jobs.{job}")
    try:
        return module.main(rest)
    except SystemExit as exit_:  # argparse's --help and refusals
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)


def entry() -> None:
    """The console script's entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
