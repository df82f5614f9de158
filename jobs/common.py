"""What every job shares: its argument parser, the resolved config printed and error output (Ray:
`tnn.ray.session`).

Every refusal is ONE line on stderr, `JOB: error: ...`, naming the option, file or value, and exit
status 2: `emit_error` for errors the library raises (`tnn.errors`), `JobParser` for bad command
lines (argparse's usage block is left out; `--help` shows it), `at_least` for integer
options.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from tnn.config import one_line, to_dict
from tnn.errors import TnnError, redact, redacted


class JobParser(argparse.ArgumentParser):
    """argparse, but a bad command line gets one line (`crossval: error: argument --folds: ...`)."""

    def error(self, message: str):
        job = self.prog.rsplit(".", 1)[-1]
        print(f"{job}: error: {one_line(message)} (see --help)", file=sys.stderr, flush=True)
        raise SystemExit(2)


def at_least(lo: int):
    """An argparse type: an integer >= lo (`--seed -1` is refused by the parser, by name)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}; got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}; got {value}")
        return value
    parse.__name__ = f"integer >= {lo}"
    return parse


def print_config(job: str, cfg) -> None:
    """Print the resolved config at start, so a log always shows what ran."""
    text = yaml.safe_dump(redacted(to_dict(cfg)), sort_keys=False,
                          default_flow_style=None).rstrip()
    print(f"{job}: resolved config\n  " + text.replace("\n", "\n  "), flush=True)


def emit_error(job: str, err: TnnError | OSError) -> int:
    """One readable line on stderr for an error the user can fix; exit status 2."""
    print(f"{job}: error: {redact(one_line(str(err))) or type(err).__name__}", file=sys.stderr,
          flush=True)
    return 2
