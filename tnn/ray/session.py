"""Connecting a job to Ray: the cluster it runs in, or a local Ray started for it.

`init_ray` connects to the cluster of $RAY_ADDRESS (set by `ray job submit`) or starts a local
Ray on 127.0.0.1 with the dashboard (the State API that Train/Tune need); `shutdown` ends a
Ray this process started. Jobs use these two and import no `ray` themselves.

The console is quiet unless TNN_VERBOSE=1 (`verbose`): the workers' output is not sent to the
driver (`log_to_driver=False`: Ray Train's "Reporting training result ..." lines, actors'
deprecation warnings; it stays in the session's log files, `ray logs`), Ray's own driver
loggers show warnings and errors only, Ray Data's console only errors (its INFO lines and
warnings go to ray-data.log), and DeprecationWarnings raised inside Ray are not shown.
What the jobs print (`tnn.ray.progress`: one line per epoch) is the console.
"""

from __future__ import annotations

import logging
import os
import warnings

LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                 "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2"}
"""Set (unless already set) before a job starts a local Ray: every listener on 127.0.0.1, no
usage stats, a 2 s shutdown."""
TEST_HEAD_ENV = {**LOCAL_RAY_ENV, "RAY_AUTH_MODE": "disabled"}
"""The environment of a throw-away local Ray for tests and benches (`ray start --head` or
in-process): token auth off, so `ray job submit` needs no token. Real clusters keep tokens."""


VERBOSE_ENV = "TNN_VERBOSE"


def verbose() -> bool:
    """TNN_VERBOSE set to anything but "", 0, false or no: Ray's own output on the console."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def init_ray(resources: dict[str, float] | None = None) -> bool:
    """Connect to the cluster this process runs in (RAY_ADDRESS, set by `ray job submit`) or
    start a local Ray on 127.0.0.1 with the dashboard (the State API that Train/Tune need);
    True if this call started Ray (and so must shut it down). `resources`: custom logical
    resources of the local Ray (a cluster declares its own in its node config). The console
    is quiet unless `verbose()` (module doc)."""
    import ray
    if ray.is_initialized():
        return False
    address, loud = os.environ.get("RAY_ADDRESS"), verbose()
    if not address:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
    if not loud:
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
    ray.init(address=address or "local", logging_level="INFO" if loud else "WARNING",
             log_to_driver=loud, include_dashboard=not address, dashboard_host="127.0.0.1",
             resources=None if address else resources)
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not loud:
        quiet_ray_data()
    return True


def quiet_ray_data() -> None:
    """Ray Data's console handlers in this process show errors only (its log file keeps all)."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and \
                not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)


def shutdown(started: bool) -> None:
    """Shut Ray down if this process started it (`init_ray` returned True)."""
    if started:
        import ray
        ray.shutdown()
