"""Connecting a job to Ray: the cluster it runs in, or a local Ray started for it.

`init_ray` connects to the cluster of $RAY_ADDRESS (set by `ray job submit`) or starts a local
Ray on 127.0.0.1 with the dashboard (the State API that Train/Tune need); `shutdown` ends a
Ray this process started. Jobs use these two and import no `ray` themselves.
"""

from __future__ import annotations

import os

LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                 "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2"}
"""Set (unless already set) before a job starts a local Ray: every listener on 127.0.0.1, no
usage stats, a 2 s shutdown."""
TEST_HEAD_ENV = {**LOCAL_RAY_ENV, "RAY_AUTH_MODE": "disabled"}
"""The environment of a throw-away local Ray for tests and benches (`ray start --head` or
in-process): token auth off, so `ray job submit` needs no token. Real clusters keep tokens."""


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


def shutdown(started: bool) -> None:
    """Shut Ray down if this process started it (`init_ray` returned True)."""
    if started:
        import ray
        ray.shutdown()
