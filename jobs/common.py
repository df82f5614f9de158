"""What every job shares: the resolved config printed, error output, and connecting to Ray."""

from __future__ import annotations

import os
import sys

import yaml

from tnn.config import to_dict
from tnn.errors import TnnError

LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                 "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2"}


def print_config(job: str, cfg) -> None:
    """Print the resolved config at start, so a log always shows what ran."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None).rstrip()
    print(f"{job}: resolved config\n  " + text.replace("\n", "\n  "), flush=True)


def emit_error(job: str, err: TnnError) -> int:
    """One readable line on stderr for an error the user can fix; exit status 2."""
    print(f"{job}: error: {err}", file=sys.stderr, flush=True)
    return 2


def init_ray(resources: dict[str, float] | None = None) -> bool:
    """Connect to the cluster this process runs in (RAY_ADDRESS, set by `ray job submit`) or
    start a local Ray on 127.0.0.1 with the dashboard (the State API that Train/Tune need);
    True if this call started Ray (and so must shut it down). `resources`: custom logical
    resources of the local Ray (a cluster declares its own in its node config)."""
    import ray
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
    ray.init(address=address or "local", logging_level="WARNING", include_dashboard=not address,
             dashboard_host="127.0.0.1", resources=None if address else resources)
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    return True
