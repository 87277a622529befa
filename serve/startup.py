"""Starting Ray Serve on letta_ray's terms: loopback listeners, a lean request path, direct ingress.

The HTTP API (``serve.deployment``) and the bundled local LLM (``letta_ray.local_llm.app``)
share one Serve instance and its port; both start it through ``start_serve``, and their
replicas call ``keep_replica_grpc_on_loopback`` (a patch of Serve, in ``_serve_internals``).
"""

from __future__ import annotations

import ipaddress
import os

# Ray reads this once, when it is imported (not at ray.init): set it before the first
# `import ray`, or an embedded Ray listens on every interface instead of 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ray import serve

from letta_ray._urls import free_port

from ._serve_internals import keep_replica_grpc_on_loopback, reuse_address_for_direct_ingress, serve_running

# Serve's per-request CPU, measured on 2 cores (a trivial route, one sender): 6.4 ms in
# the proxy and replica by default, 2.2 ms with these. Each removes work Serve does per
# request: the proxy sends requests to the replica over gRPC instead of as Ray actor
# calls (with a call back to the proxy for the body); the proxy's router and the
# replica's user code run on the process's own event loop instead of a second loop
# thread that every request crosses twice. Our handlers never block the loop.
PROXY_ENV = {"RAY_SERVE_PROXY_USE_GRPC": "1", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine's loopback."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


_direct_ingress_started: int | None = None  # the API's port, if the Serve this process started serves it itself


def direct_ingress_port() -> int | None:
    """The API's port if the Serve this process started serves it by direct ingress."""
    return _direct_ingress_started


def direct_ingress_running() -> bool:
    """Whether Serve runs with the API on direct ingress, started by this process.

    Its controller hands every replica it starts the direct-ingress environment, so
    such a Serve can carry the API's one replica and no other HTTP application."""
    return _direct_ingress_started is not None and serve_running()


def one_node() -> bool:
    """Whether the Ray cluster has one live node."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive")) == 1


def direct_ingress_env(port: int) -> dict[str, str]:
    """Serve's environment for direct ingress on ``port``: the API replica listens there itself.

    Serve's default path costs ~8 ms of CPU per message on 2 cores (proxy 3.8, replica
    4.6): the proxy parses the request, forwards it, and the replica calls back into the
    proxy for the body and to watch for a disconnect. With direct ingress the replica
    serves HTTP itself (~1.9 ms per message). The controller hands ports out of a range;
    a range of exactly ``port`` makes the one API replica listen where the user asked.
    Serve still starts a proxy (on a port of its own, unused); replicas are not kept for
    30 s after a shutdown as they would be behind an external load balancer, and a
    replica that dies is replaced on the same port at once.
    """
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),  # the range is [min, max)
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
            # A released port is held back for 150 s (for HAProxy, unused here); with a
            # range of one port, a replica that restarts would have none to listen on.
            "RAY_SERVE_PORT_QUARANTINE_S": "0"}


def start_serve(host: str, port: int, *, direct_ingress: bool = False) -> None:
    """Start Serve on ``host:port`` unless it runs already (then it keeps its own options).

    The controller's environment (``PROXY_ENV``) is inherited by the proxies it starts.
    With ``direct_ingress`` the controller also gets ``direct_ingress_env(port)`` and the
    (unused) proxy a free port of its own; the API replica must then be deployed with
    the same environment (``start_http`` does)."""
    global _direct_ingress_started
    env = dict(PROXY_ENV)
    if not serve_running():
        _direct_ingress_started = port if direct_ingress else None
    if direct_ingress:
        env |= direct_ingress_env(port)
        port = free_port(host=host)
    serve.start(http_options={"host": host, "port": port}, logging_config={"enable_access_log": False},
                controller_options={"runtime_env": {"env_vars": env}})


__all__ = [
    "PROXY_ENV", "REPLICA_ENV", "direct_ingress_env", "direct_ingress_port", "direct_ingress_running", "free_port",
    "is_loopback", "keep_replica_grpc_on_loopback", "one_node", "reuse_address_for_direct_ingress", "serve_running",
    "start_serve",
]
