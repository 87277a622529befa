"""The FastAPI app: Letta's REST API under ``/v1``, each request a call into the runtime.

``create_app(client)`` wires the routes to a driver ``Client``: the same hosts and stores
a Python script connected to the same cluster uses, so agents made either way are seen
both ways. Handlers translate; the runtime decides. Errors map to statuses with a JSON
``detail``: unknown things 404, bad input 400 or 422, conflicts 409, the LLM failing 502.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray.exceptions import RayError
from starlette.exceptions import HTTPException as StarletteHTTPException

import letta_ray
from letta_ray.actors.client import Client
from letta_ray.errors import LettaRayError
from letta_ray.schemas import EmbeddingConfig, LLMConfig, Order, time_cursors
from letta_ray.settings import PROVIDER_KEYS

from ._agents import agents
from ._archives import agent_archives, archives, passages
from ._blocks import blocks
from ._common import ClientDep, error_body, page_limit
from ._conversations import conversations
from ._folders import agent_folders, folders
from ._groups import groups
from ._identities import agent_identities, identities
from ._mcp import mcp_servers
from ._messages import messages
from ._run_streams import RunStreams
from ._runs import history, runs, steps
from ._tools import tools
from ._ui import api as ui_api
from ._ui import page as ui_page
from .schemas import ERROR_RESPONSES, EmbeddingConfigView, EmbeddingModelView, HealthView, ModelView

log = logging.getLogger(__name__)


async def _require_token(request: Request) -> None:
    """With ``Settings.api_token`` set, every route but health needs it: as
    ``Authorization: Bearer <token>`` (the Letta SDK's ``api_key``), or as Letta's own
    password header for a secured server, ``X-BARE-PASSWORD: password <token>`` (what the
    ADE and Letta's clients send; the bare ``<token>`` is taken too).

    async although it never awaits: FastAPI runs a sync dependency in a worker thread."""
    token = request.app.state.client.settings.api_token
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _same(given.strip(), token):
        return
    password = request.headers.get("x-bare-password", "").strip()
    if password and _same(password.removeprefix("password ").strip(), token):
        return
    raise _Unauthorized()


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


class _Unauthorized(Exception):
    pass


# --------------------------------------------------------------------------- health and models

health = APIRouter(prefix="/v1/health", tags=["health"])
models = APIRouter(prefix="/v1/models", tags=["models"])
tags = APIRouter(prefix="/v1/tags", tags=["tags"])


@health.get("/", response_model=HealthView, summary="Liveness (needs no token)")
async def check_health() -> HealthView:
    return HealthView(version=letta_ray.__version__, status="ok")


@models.get("/", response_model=list[ModelView], summary="Models new agents can use by handle")
async def list_models(client: ClientDep) -> list[ModelView]:
    settings = client.settings
    default, _ = settings.resolve_default_model()
    handles = [default] if default else []
    handles += [model for env, model in PROVIDER_KEYS if os.environ.get(env) and model not in handles]
    return [ModelView.of(LLMConfig.from_handle(h, model_endpoint=settings.default_model_endpoint,
                                               context_window=settings.default_context_window)) for h in handles]


@tags.get("/", response_model=list[str], summary="The tags of all agents, alphabetical")
async def list_tags(client: ClientDep, name: str | None = None, query_text: str | None = None,
                    after: str | None = None, before: str | None = None,
                    limit: Annotated[int | None, page_limit()] = 50, order: Order = "asc",
                    order_by: Literal["name"] = "name") -> list[str]:
    after, before = time_cursors(order, after, before)
    return await client.runtime.store.list_tags(name=name or query_text, after=after, before=before, limit=limit,
                                                order=order)


@models.get("/embedding", response_model=list[EmbeddingModelView], summary="The deployment's embedder")
async def list_embedding_models(client: ClientDep) -> list[EmbeddingModelView]:
    s = client.settings
    view = EmbeddingConfigView.of(EmbeddingConfig(embedding_model=s.embedding_model, embedding_dim=s.embedding_dim))
    return [EmbeddingModelView(**view.model_dump())]


# --------------------------------------------------------------------------- errors and the app


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    status, body = error_body(exc, f"{request.method} {request.url.path}")
    return JSONResponse(body, status_code=status)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (404, 405, ...). A 405's ``Allow`` lists every method of the
    path: Starlette lists only those of the first route that matched it, and routers here
    declare a path's methods in several routes."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # the path's most specific templates: /v1/agents/count, not /v1/agents/{agent_id}
        matches = [(params, methods) for pattern, params, methods in _methods_by_path(request.app)
                   if pattern.fullmatch(request.url.path)]
        fewest = min((params for params, _ in matches), default=0)
        headers["Allow"] = ", ".join(sorted({m for params, methods in matches if params == fewest for m in methods}))
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def _methods_by_path(app: FastAPI) -> list[tuple[re.Pattern[str], int, list[str]]]:
    """Each path of the published schema as a pattern, its number of parameters and its
    methods (made once per app)."""
    if not hasattr(app.state, "methods_by_path"):
        app.state.methods_by_path = [
            (re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))), path.count("{"),
             [m.upper() for m in operations])
            for path, operations in app.openapi()["paths"].items()]
    return app.state.methods_by_path


async def _on_unauthorized(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "missing or wrong token (Authorization: Bearer <token>, or "
                                   "X-BARE-PASSWORD: password <token>)"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError | ValidationError) else []
    detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors] or str(exc)
    return JSONResponse({"detail": detail}, status_code=422)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit / 2**20:,.0f} MB (settings LETTA_RAY_MAX_BODY_MB "
                              "and, for uploads, LETTA_RAY_MAX_UPLOAD_MB)")


class BodyLimit:
    """ASGI middleware: a request body over its limit is a 413, refused on its declared
    ``Content-Length`` before it is read, or as soon as more arrives than the limit (a
    chunked body). Uploads (multipart) have their own, larger limit."""

    def __init__(self, app: Any, body_bytes: int, upload_bytes: int) -> None:
        self.app = app
        self.body_bytes = body_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        multipart = headers.get(b"content-type", b"").startswith(b"multipart/")
        limit = self.upload_bytes if multipart else self.body_bytes
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            error = BodyTooLarge(limit)
            response = JSONResponse({"detail": error.detail}, status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)  # raised where the route reads the body: a 413
            return message

        await self.app(scope, counted, send)


def create_app(client: Client) -> FastAPI:
    """The HTTP API over ``client``: Letta's routes under /v1, OpenAPI at /openapi.json, docs at /docs."""
    app = FastAPI(title="letta_ray", version=letta_ray.__version__,
                  description="Stateful agents with memory on Ray, behind Letta's REST API.")
    app.state.client = client
    app.state.background = set()
    app.state.run_streams = RunStreams()
    auth = [Depends(_require_token)]
    # Routes are matched in order, per request (by FastAPI, and again by Serve for its
    # metrics): the hot one, sending a message, goes first. No route of another router
    # matches a messages path, so the order changes nothing else.
    app.include_router(messages, dependencies=auth, responses=ERROR_RESPONSES)
    app.include_router(health)
    app.include_router(ui_page)  # the inspector's static files: no data, no token
    for router in (agents, agent_archives, agent_folders, agent_identities, blocks, tools, runs, steps, history,
                   archives, passages, folders, identities, conversations, models, tags, groups, mcp_servers,
                   ui_api):
        app.include_router(router, dependencies=auth, responses=ERROR_RESPONSES)
    app.add_exception_handler(_Unauthorized, _on_unauthorized)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(ValidationError, _on_validation)
    for kind in (LettaRayError, TimeoutError, RayError, Exception):
        app.add_exception_handler(kind, _on_error)
    settings = client.settings
    # an upload's own limit is checked as it is written; the body around it may be a little more
    app.add_middleware(BodyLimit, body_bytes=settings.max_body_mb * 2**20,
                       upload_bytes=(settings.max_upload_mb + 1) * 2**20)
    return app
