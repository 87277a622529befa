"""``letta-ray serve``: Ray, the bundled local LLM when there is no provider key, the HTTP API."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ray import serve

from letta_ray.actors.client import connect
from letta_ray.serve.deployment import start_http, stop_http
from letta_ray.serve.startup import is_loopback
from letta_ray.settings import LOCAL_LLM_CONTEXT_WINDOW, LOCAL_LLM_MODEL, Settings

if TYPE_CHECKING:
    from .logfile import LogFile

log = logging.getLogger(__name__)


def _with_local_llm(settings: Settings, *, host: str | None, port: int | None,
                    on_ready: Callable[[str], object]) -> Settings:
    """With no configured model or key, serve the bundled local model and make it the default."""
    resolution = settings.resolve_model()
    if resolution.source != "local":
        if resolution.source == "none":
            on_ready(f"No default model: {resolution.why}. Agents must name a model.")
        return settings
    log.warning("%s", resolution.why)
    on_ready(resolution.why)
    from letta_ray.local_llm.app import start_local_llm  # needs llama.cpp: only when it is used

    start_local_llm(settings, host=host, port=port)  # agents look its address up when they use it
    return settings.model_copy(update={
        "default_model": LOCAL_LLM_MODEL, "default_model_endpoint": None,
        "default_context_window": min(settings.default_context_window, LOCAL_LLM_CONTEXT_WINDOW)})


def serve_forever(settings: Settings, *, host: str | None = None, port: int | None = None,
                  replicas: int = 1, on_ready: Callable[[str], object] = print, logs: LogFile | None = None) -> None:
    """``letta-ray serve``: an embedded Ray (or ``settings.ray_address``), the API, until Ctrl-C.

    With ``logs``, Ray's and Serve's logs are in that file, and the banner says so."""
    client = connect(settings=settings)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        settings = _with_local_llm(client.settings, host=host, port=port, on_ready=on_ready)
        url = start_http(settings, host=host, port=port, replicas=replicas)
        on_ready(f"letta_ray HTTP API on {url}/v1 (docs: {url}/docs, data: {client.settings.home}); "
                 "Ctrl-C stops it")
        if logs is not None:
            on_ready(f"logs: {logs.banner(client.settings)}")
        if not is_loopback(host or client.settings.http_host) and not client.settings.api_token:
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
