"""Environment every letta_ray process needs, set before Ray or litellm is imported.

Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when ``ray`` is imported, not at
``ray.init``: with it at "0" an embedded Ray keeps every listener on 127.0.0.1 (an open
Ray port runs anyone's code). litellm fetches its model cost map from the network on
first use unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is set. The runtime and HTTP packages
import this module first thing; it imports nothing heavy.
"""

from __future__ import annotations

import os
import sys

PROCESS_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "RAY_DEDUP_LOGS": "0",
    # Ray's control store keeps the events of the last 100,000 tasks by default: ~120 MB of
    # gcs_server growing for the first hours of a busy server (bench/soak.py). Each agent
    # turn is a task or two; the last 10,000 are plenty to look at in the dashboard.
    "RAY_task_events_max_num_task_in_gcs": "10000",
}


def apply() -> None:
    """Set each variable unless the user already did."""
    for key, value in PROCESS_ENV.items():
        os.environ.setdefault(key, value)


# Set when ray was imported before we could set its environment: init_ray warns then.
RAY_IMPORTED_TOO_EARLY = "ray" in sys.modules and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ

apply()
