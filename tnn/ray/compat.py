"""Every use of a private Ray attribute, in one place (each has a test in tests/ray/test_compat.py
that fails when a new Ray moves or changes it; MLflow's are gone: `tnn.tracking.runs.using`
uses the public API).

- `refresh_limits_often`: `ray.data._internal.execution.resource_manager.ResourceManager.
  GLOBAL_LIMITS_UPDATE_INTERVAL_S` (seconds between Ray Data's reads of its resource limits;
  why: `tnn.ray.dataset.refresh_limits_often`).
- `tune_propagated_env`: `ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE` (the names of
  the driver's environment variables that Tune copies into trial actors' runtime env; why:
  `tnn.ray.tune.trial_env`).
- `memory_summary`: `ray._private.internal_api.memory_summary` (the text of `ray memory`,
  whose spill / restore counters `bench/load.py` reads).
Ray is imported inside the functions.
"""

from __future__ import annotations


def limits_update_interval_holder():
    """The class holding Ray Data's limits refresh interval (`GLOBAL_LIMITS_UPDATE_INTERVAL_S`,
    seconds), or None if this Ray has no such setting."""
    try:
        from ray.data._internal.execution.resource_manager import ResourceManager
    except ImportError:
        return None
    current = getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None)
    return ResourceManager if isinstance(current, (int, float)) else None


def refresh_limits_often(seconds: float) -> bool:
    """Lower Ray Data's limits refresh interval to `seconds` (never raise it); False if the
    setting is not found (then nothing changes)."""
    holder = limits_update_interval_holder()
    if holder is None:
        return False
    if holder.GLOBAL_LIMITS_UPDATE_INTERVAL_S > seconds:
        holder.GLOBAL_LIMITS_UPDATE_INTERVAL_S = seconds
    return True


def tune_propagated_env() -> set[str]:
    """The live set of environment variable names that Tune copies from the driver into each
    trial actor's runtime env (mutating it changes what the next trials get)."""
    from ray.tune.execution import class_cache
    return class_cache.ENV_VARS_TO_PROPAGATE


def memory_summary(address: str, stats_only: bool = True) -> str:
    """The text of `ray memory` for the cluster at GCS `address` (spill / restore counters)."""
    from ray._private.internal_api import memory_summary as summary
    return summary(address=address, stats_only=stats_only)
