"""Each private Ray attribute of `tnn.ray.compat` still exists with the meaning relied on: these
fail (instead of a silent slowdown or a leaked secret) when a new Ray moves or changes one.
No Ray instance is started."""

from __future__ import annotations

import inspect

from tnn.ray import compat


def test_ray_data_limits_refresh_interval_is_a_class_level_number_of_seconds():
    from ray.data._internal.execution.resource_manager import ResourceManager
    holder = compat.limits_update_interval_holder()
    assert holder is ResourceManager
    value = ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S
    assert isinstance(value, (int, float)) and 0 < value <= 10
    # ResourceManager reads the class attribute when it refreshes, so setting it takes effect
    assert "GLOBAL_LIMITS_UPDATE_INTERVAL_S" in inspect.getsource(ResourceManager)
    try:
        assert compat.refresh_limits_often(value / 2)
        assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == value / 2
        assert compat.refresh_limits_often(value)  # never raised
        assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == value / 2
    finally:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = value


def test_tune_env_propagation_list_is_the_live_set_tune_reads():
    from ray.tune.execution import class_cache
    names = compat.tune_propagated_env()
    assert names is class_cache.ENV_VARS_TO_PROPAGATE
    assert isinstance(names, set) and all(isinstance(n, str) for n in names)
    assert "AWS_ACCESS_KEY_ID" in names  # what `tnn.ray.tune.trial_env` takes off meanwhile
    # the trial actors' runtime env is built from this module-level set when Tune makes them
    assert "ENV_VARS_TO_PROPAGATE" in inspect.getsource(class_cache._ActorClassCache.get)


def test_memory_summary_takes_an_address_and_stats_only():
    from ray._private import internal_api
    assert callable(internal_api.memory_summary)
    params = inspect.signature(internal_api.memory_summary).parameters
    assert {"address", "stats_only"} <= set(params)
    assert "Spilled" in inspect.getsource(internal_api)  # the counters bench/load.py parses
