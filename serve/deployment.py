"""The HTTP API as a Ray Serve deployment, and starting it on Serve.

Each replica holds a driver ``Client`` attached to the runtime actors of the same
data directory, so HTTP requests reach the very hosts and stores Python drivers use.
Every listener is on 127.0.0.1 unless a host is given.
"""

from __future__ import annotations

import asyncio
import logging
import os

# Ray reads this once, when it is imported (not at ray.init): set it before the first
# `import ray`, or an embedded Ray listens on every interface instead of 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from fastapi import FastAPI
from ray import serve

from letta_ray import _collector
from letta_ray.actors.client import Client
from letta_ray.actors.runtime import start_runtime
from letta_ray.settings import Settings

from .app import create_app
from .startup import (
    REPLICA_ENV,
    direct_ingress_env,
    direct_ingress_port,
    is_loopback,
    keep_replica_grpc_on_loopback,
    one_node,
    reuse_address_for_direct_ingress,
    serve_running,
    start_serve,
)

log = logging.getLogger(__name__)

APP_NAME = "letta_ray"
# Sends wait on LLM calls, not CPU: one replica carries many at once. A send to a busy
# agent waits its turn inside the runtime, so requests queue there, not in Serve.
MAX_ONGOING_REQUESTS = 1_000


@serve.deployment(name="letta_ray_http", max_ongoing_requests=MAX_ONGOING_REQUESTS,
                  ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": REPLICA_ENV}},
                  logging_config={"enable_access_log": False})
@serve.ingress()
class LettaHTTP:
    """One replica: a ``Client`` on the deployment actors and the FastAPI app over it."""

    async def __init__(self, settings: Settings, loopback: bool = True) -> None:
        _collector.tune()
        if loopback:
            keep_replica_grpc_on_loopback()
        if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1":
            reuse_address_for_direct_ingress()
        runtime = await asyncio.to_thread(start_runtime, settings)
        self.client = Client(runtime)  # never closed here: closing would stop the shared actors

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.client)


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
    started = direct_ingress_port()
    if running and started is not None:  # its controller gives every replica that environment
        if replicas != 1 or port != started:
            raise RuntimeError(f"Serve runs with the API on direct ingress on port {started}: "
                               "it can serve one replica on that port only; shut Serve down first")
        direct = True
    else:
        direct = settings.embedded and replicas == 1 and not running and one_node()
    start_serve(host, port, direct_ingress=direct)
    env = REPLICA_ENV | (direct_ingress_env(port) if direct else {})
    app = LettaHTTP.options(num_replicas=replicas,
                            ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}}
                            ).bind(settings, is_loopback(host))
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def stop_http() -> None:
    """Remove the API application (Serve itself keeps running)."""
    serve.delete(APP_NAME)
