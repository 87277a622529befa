"""The HTTP layer: Letta's REST API on Ray Serve.

Imported before any module here imports ``ray``: the process environment Ray reads at
import time (loopback-only listeners) is set first.
"""

from letta_ray import _process_env  # noqa: F401  (sets the environment before ray is imported)
