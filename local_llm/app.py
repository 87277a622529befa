"""The bundled local model as a Ray Serve application beside the API.

One replica loads SmolLM2-135M once (``letta_ray.local_llm.LocalModel``) and answers an
OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models`` under
``/local-llm``, on the same Serve instance (and port) as the HTTP API. Agents reach it
through litellm like any OpenAI-compatible provider, at a loopback URL.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before the first `import ray`

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from letta_ray.actors.local_model import publish_local_model
from letta_ray.serve.startup import direct_ingress_running, is_loopback, keep_replica_grpc_on_loopback, start_serve
from letta_ray.settings import LOCAL_LLM_NAME, Settings

from .model import LocalModel

log = logging.getLogger(__name__)

APP_NAME = "letta_ray_local_llm"
ROUTE_PREFIX = "/local-llm"
# llama.cpp runs one request at a time; the rest wait in the replica, not in Serve.
MAX_ONGOING_REQUESTS = 256


@serve.deployment(name="letta_ray_local_llm", max_ongoing_requests=MAX_ONGOING_REQUESTS,
                  ray_actor_options={"num_cpus": 0}, logging_config={"enable_access_log": False})
@serve.ingress()
class LocalModelServer:
    """One replica: the model, loaded once, behind an OpenAI-compatible FastAPI app."""

    async def __init__(self, loopback: bool = True, n_threads: int | None = None, api_token: str | None = None
                       ) -> None:
        if loopback:
            keep_replica_grpc_on_loopback()
        self.api_token = api_token
        self.model = await asyncio.to_thread(LocalModel, n_threads=n_threads)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.model, api_token=self.api_token)


def create_app(model: LocalModel, *, api_token: str | None = None) -> FastAPI:
    """The OpenAI-compatible routes over ``model`` (usable without Serve, e.g. in tests).

    With ``api_token`` (the API's token, when it listens beyond loopback), a caller from
    another machine must send ``Authorization: Bearer <token>``; the agents' own calls
    come from this machine's loopback and need none.
    """
    app = FastAPI(title="letta_ray local model", description="SmolLM2-135M, OpenAI-compatible")
    lock = asyncio.Lock()  # one generation at a time, in arrival order; the event loop stays free

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Response:
        peer = request.client.host if request.client else ""
        if api_token and not is_loopback(peer):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_token.encode()):
                return _error(401, "the local model needs Authorization: Bearer <token> from other machines")
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model.card()]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "the body must be a JSON object with a list of messages")
        name = str(body.get("model") or LOCAL_LLM_NAME).removeprefix("openai/").removeprefix("local/")
        if name != LOCAL_LLM_NAME:
            return _error(404, f"model {body.get('model')!r} is not served here; this server has "
                               f"{LOCAL_LLM_NAME!r}", code="model_not_found")
        try:
            async with lock:
                response = await asyncio.to_thread(model.chat, body)
        except ValueError as exc:
            return _error(400, str(exc))
        if body.get("stream"):
            return StreamingResponse(_as_stream(response), media_type="text/event-stream")
        return JSONResponse(response)

    return app


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def _as_stream(response: dict[str, Any]) -> Iterator[str]:
    """A finished response as OpenAI's server-sent chunks (one delta, then the usage)."""
    choice = response["choices"][0]
    delta = dict(choice["message"])
    if delta.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta["tool_calls"])]
    head = {k: response[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    yield f"data: {json.dumps(head | {'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
    tail = {"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}],
            "usage": response["usage"]}
    yield f"data: {json.dumps(head | tail)}\n\n"
    yield "data: [DONE]\n\n"


def loopback_url(host: str, port: int) -> str:
    """Where this machine reaches the local model on a Serve listening on ``host:port``."""
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    reach = "127.0.0.1" if wildcard or is_loopback(host) else host
    return f"http://{reach}:{port}{ROUTE_PREFIX}/v1"


def start_local_llm(settings: Settings, *, host: str | None = None, port: int | None = None) -> str:
    """Start Serve (if needed) and the local model app on ``host:port``; Ray must be up.

    Returns the model's OpenAI base URL (``http://127.0.0.1:<port>/local-llm/v1``). Start
    it before (or with the same host and port as) the API: a running Serve keeps its own.
    """
    host = host or settings.http_host
    port = port if port is not None else settings.http_port
    if direct_ingress_running():
        raise RuntimeError("the API runs on Serve's direct ingress, which serves no other application: "
                           "start the local model before the API (as `letta-ray serve` does)")
    start_serve(host, port)
    app = LocalModelServer.bind(is_loopback(host), None, settings.api_token)
    serve.run(app, name=APP_NAME, route_prefix=ROUTE_PREFIX, blocking=False)
    url = loopback_url(host, port)
    publish_local_model(url)
    return url


def stop_local_llm() -> None:
    publish_local_model(None)
    serve.delete(APP_NAME)
