"""The HTTP API as a Ray Serve deployment, and starting it (``letta-ray serve``).

Each replica holds a driver ``Client`` attached to the deployment actors of the same
data directory, so HTTP requests reach the very hosts and stores Python drivers use.
Every listener is on 127.0.0.1 unless a host is given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import threading
from typing import Any

# Ray reads this once, when it is imported (not at ray.init): set it before the first
# `import ray`, or an embedded Ray listens on every interface instead of 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from fastapi import FastAPI
from ray import serve

from letta_ray.actors.client import Client, connect
from letta_ray.actors.runtime import start_deployment
from letta_ray.settings import Settings

from .app import create_app

log = logging.getLogger(__name__)

APP_NAME = "letta_ray"
# Sends wait on LLM calls, not CPU: one replica carries many at once. A send to a busy
# agent waits its turn inside the runtime, so requests queue there, not in Serve.
MAX_ONGOING_REQUESTS = 1_000

# Serve's per-request CPU, measured on 2 cores (a trivial route, one sender): 6.4 ms in
# the proxy and replica by default, 2.2 ms with these. Each removes work Serve does per
# request: the proxy sends requests to the replica over gRPC instead of as Ray actor
# calls (with a call back to the proxy for the body); the proxy's router and the
# replica's user code run on the process's own event loop instead of a second loop
# thread that every request crosses twice. Our handlers never block the loop.
PROXY_ENV = {"RAY_SERVE_PROXY_USE_GRPC": "1", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


@serve.deployment(name="letta_ray_http", max_ongoing_requests=MAX_ONGOING_REQUESTS,
                  ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": REPLICA_ENV}},
                  logging_config={"enable_access_log": False})
@serve.ingress()
class LettaHTTP:
    """One replica: a ``Client`` on the deployment actors and the FastAPI app over it."""

    async def __init__(self, settings: Settings, loopback: bool = True) -> None:
        if loopback:
            _keep_replica_grpc_on_loopback()
        if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1":
            _reuse_address_for_direct_ingress()
        deployment = await asyncio.to_thread(start_deployment, settings)
        self.client = Client(deployment)  # never closed here: closing would stop the shared actors

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.client)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _keep_replica_grpc_on_loopback() -> None:
    """Bind the replica's inter-deployment gRPC server to 127.0.0.1, not every interface.

    Ray Serve 2.60 replicas open it on ``[::]:0`` whatever the HTTP host; this API is one
    deployment, so nothing calls it, and an embedded server must not listen outside
    loopback. Called in the replica before Serve starts that server.
    """
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "loopback_only", False):
        return

    def loopback_only(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.removeprefix("[::]:")
        return bind(server, address)

    loopback_only.loopback_only = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = loopback_only


_direct_ingress_started: int | None = None  # the API's port, if the Serve this process started serves it itself


def direct_ingress_running() -> bool:
    """Whether Serve runs with the API on direct ingress, started by this process.

    Its controller hands every replica it starts the direct-ingress environment, so
    such a Serve can carry the API's one replica and no other HTTP application."""
    return _direct_ingress_started is not None and serve_running()


def serve_running() -> bool:
    """Whether Ray Serve runs in this Ray cluster already (its controller is up)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def _one_node() -> bool:
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


def free_port(preferred: int = 0, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens on it on ``host``, else a free port there."""
    for candidate in dict.fromkeys((preferred, 0)):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError(f"no free port on {host}")


def _reuse_address_for_direct_ingress() -> None:
    """Let the replica's HTTP socket bind while old connections to its port linger.

    Serve (2.60) binds it without SO_REUSEADDR. When a replica dies with clients
    connected, its port stays in TIME_WAIT for a minute; the replacement then fails to
    bind, and Serve blocks the port, which is the only one direct ingress may use here.
    Called in the replica before Serve starts that server.
    """
    from ray.serve._private import http_util

    if isinstance(http_util.socket, _ReuseAddressSockets):
        return
    http_util.socket = _ReuseAddressSockets()


class _ReuseAddressSockets:
    """The ``socket`` module, whose ``socket()`` sets SO_REUSEADDR."""

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    @staticmethod
    def socket(*args: Any, **kwargs: Any) -> socket.socket:
        sock = socket.socket(*args, **kwargs)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock


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


def start_http(settings: Settings, *, host: str | None = None, port: int | None = None,
               replicas: int = 1) -> str:
    """Start Serve (if needed) and the API on ``host:port``; Ray must be up. Returns the base URL.

    On an embedded Ray, one replica started along with Serve serves HTTP itself (direct
    ingress). Otherwise requests go through Serve's proxy: several replicas (it spreads
    requests over them), a Serve that runs already (started by someone else, or for the
    local model), or a cluster (the replica may land on any node; the proxy listens on
    the head)."""
    host = host or settings.http_host
    port = port if port is not None else settings.http_port
    running = serve_running()
    if running and _direct_ingress_started is not None:  # its controller gives every replica that environment
        if replicas != 1 or port != _direct_ingress_started:
            raise RuntimeError(f"Serve runs with the API on direct ingress on port {_direct_ingress_started}: "
                               "it can serve one replica on that port only; shut Serve down first")
        direct = True
    else:
        direct = settings.embedded and replicas == 1 and not running and _one_node()
    start_serve(host, port, direct_ingress=direct)
    env = REPLICA_ENV | (direct_ingress_env(port) if direct else {})
    app = LettaHTTP.options(num_replicas=replicas,
                            ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}}
                            ).bind(settings, _is_loopback(host))
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def stop_http() -> None:
    """Remove the API application (Serve itself keeps running)."""
    serve.delete(APP_NAME)


def _with_local_model(settings: Settings, *, host: str | None, port: int | None, on_ready: Any) -> Settings:
    """With no configured model or key, serve the bundled local model and make it the default."""
    resolution = settings.resolve_model()
    if resolution.source != "local":
        if resolution.source == "none":
            on_ready(f"No default model: {resolution.why}. Agents must name a model.")
        return settings
    from letta_ray.local_llm import LOCAL_CONTEXT_WINDOW, LOCAL_MODEL

    from .local_model import start_local_model

    log.warning("%s", resolution.why)
    on_ready(resolution.why)
    endpoint = start_local_model(settings, host=host, port=port)
    return settings.model_copy(update={
        "default_model": LOCAL_MODEL, "default_model_endpoint": endpoint,
        "default_context_window": min(settings.default_context_window, LOCAL_CONTEXT_WINDOW)})


def serve_forever(settings: Settings, *, host: str | None = None, port: int | None = None,
                  replicas: int = 1, on_ready: Any = print) -> None:
    """``letta-ray serve``: an embedded Ray (or ``settings.ray_address``), the API, until Ctrl-C."""
    client = connect(settings=settings)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        settings = _with_local_model(client.settings, host=host, port=port, on_ready=on_ready)
        url = start_http(settings, host=host, port=port, replicas=replicas)
        on_ready(f"letta_ray HTTP API on {url}/v1 (docs: {url}/docs, data: {client.settings.home}); "
                 "Ctrl-C stops it")
        if not _is_loopback(host or client.settings.http_host) and not client.settings.api_token:
            on_ready("Warning: listening beyond this machine with no token; set LETTA_RAY_API_TOKEN "
                     "so that clients must send it (Authorization: Bearer <token>)")
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            if client.settings.embedded:
                serve.shutdown()
            else:
                stop_http()
        finally:
            client.close()
