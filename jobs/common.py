"""What every job shares: the resolved config printed and error output (Ray: `tnn.ray.session`)."""

from __future__ import annotations

import sys

import yaml

from tnn.config import to_dict
from tnn.errors import TnnError


def print_config(job: str, cfg) -> None:
    """Print the resolved config at start, so a log always shows what ran."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None).rstrip()
    print(f"{job}: resolved config\n  " + text.replace("\n", "\n  "), flush=True)


def emit_error(job: str, err: TnnError) -> int:
    """One readable line on stderr for an error the user can fix; exit status 2."""
    print(f"{job}: error: {err}", file=sys.stderr, flush=True)
    return 2
