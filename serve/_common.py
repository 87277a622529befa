"""What the route modules share: the client dependency, cursors, views, error statuses."""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from letta_ray.actors.client import Client
from letta_ray.errors import (
    AgentBusyTimeout,
    ConflictError,
    InputTooLargeError,
    InvalidInputError,
    LLMError,
    NotFoundError,
    StorageError,
)
from letta_ray.mcp import MCPServerUnavailableError
from letta_ray.sandbox import SandboxError
from letta_ray.schemas import AgentState, Order, Tool

from .schemas import BASE_TOOL_IDS, BASE_TOOL_VIEWS, AgentStateView

log = logging.getLogger(__name__)


async def _client_of(request: Request) -> Client:
    # async: FastAPI runs a sync dependency in a worker thread, a hop per request
    return request.app.state.client


ClientDep = Annotated[Client, Depends(_client_of)]

# The largest page a list route returns (its ``limit``), in the published schema too: a
# bigger one is a 422 before it reaches storage. ``LETTA_RAY_MAX_PAGE_SIZE`` changes it
# (read when the API starts).
MAX_PAGE_SIZE = int(os.environ.get("LETTA_RAY_MAX_PAGE_SIZE", "10000"))


def page_limit(minimum: int = 0) -> Any:
    """The ``Query`` of a list route's ``limit``: from ``minimum`` to ``MAX_PAGE_SIZE``."""
    return Query(ge=minimum, le=MAX_PAGE_SIZE, description=f"at most this many items (up to {MAX_PAGE_SIZE:,})")


SSE = {200: {"content": {"text/event-stream": {"schema": {
    "type": "string", "description": "server-sent events: each `data:` line one Letta message (a "
    "`message_type` of the LettaMessage union, `stop_reason`, `usage_statistics` or `ping`), then "
    "`data: [DONE]`"}}}}}
"""``responses=`` of a route that answers with server-sent events (always, or when asked)."""


def json_response(model: Any) -> Response:
    """A pydantic model as JSON, serialised once by pydantic (the fast path)."""
    return Response(content=model.model_dump_json(), media_type="application/json")


def message_response(text: str) -> JSONResponse:
    return JSONResponse({"message": text})


def page(items: list[Any], after: str | None, before: str | None, limit: int | None,
         order: Order = "asc") -> list[Any]:
    """Cursor paging over a list held in full (in its "asc" order; reversed for "desc"):
    items strictly between ``after`` and ``before`` (ids, positions in that order), the
    first ``limit`` of them. An unknown cursor gives an empty page, which ends a client's
    paging instead of restarting it."""
    if order == "desc":
        items = items[::-1]
    ids = [item.id for item in items]
    start, stop = 0, len(items)
    if after is not None:
        if after not in ids:
            return []
        start = ids.index(after) + 1
    if before is not None:
        if before not in ids:
            return []
        stop = ids.index(before)
    chosen = items[start:stop]
    return chosen if limit is None else chosen[:limit]


async def custom_tools(client: Client, states: list[AgentState]) -> dict[str, Tool]:
    if all(name in BASE_TOOL_VIEWS for s in states for name in s.tools):
        return {}
    return {t.name: t for t in await client.list_tools_async(limit=None)}


async def agent_view(client: Client, state: AgentState) -> AgentStateView:
    return AgentStateView.of(state, await custom_tools(client, [state]))


async def tool_name(client: Client, tool_id: str) -> str:
    if tool_id in BASE_TOOL_IDS:
        return BASE_TOOL_IDS[tool_id]
    return (await client.get_tool_async(tool_id)).name


def status_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and message for an exception from the runtime."""
    if isinstance(exc, NotFoundError):
        return 404, str(exc)
    if isinstance(exc, ConflictError):
        return 409, str(exc)
    if isinstance(exc, InputTooLargeError):
        return 413, str(exc)
    if isinstance(exc, InvalidInputError):  # BlockLimitError, ToolDefinitionError, ...
        return 400, str(exc)
    if isinstance(exc, ValidationError):
        return 422, str(exc)
    if isinstance(exc, LLMError):
        return 502, f"LLM provider error: {exc}"
    if isinstance(exc, AgentBusyTimeout | TimeoutError):
        return 504, f"timed out: {exc}" if str(exc) else "timed out waiting for the agent"
    if isinstance(exc, MCPServerUnavailableError):
        return 503, str(exc)
    if isinstance(exc, SandboxError):
        return 503, f"the tool sandbox is unavailable on this server: {exc}"
    if isinstance(exc, ActorDiedError | ActorUnavailableError | RayActorError):
        return 503, "the agent's host is unavailable; retry"
    if isinstance(exc, StorageError):  # its text names files, URIs, perhaps SQL: for the log only
        return 503, "storage is unavailable"
    return 500, "internal error"


def error_body(exc: BaseException, where: str) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of an error for a client. A 5xx says only what kind of
    failure it was and an error id; its detail (which may hold paths, SQL, internals) goes
    to the log under that id."""
    status, detail = status_of(exc)
    if status < 500:
        return status, {"detail": detail}
    error_id = uuid.uuid4().hex[:16]
    log.error("%s failed (error id %s)", where, error_id, exc_info=exc)
    return status, {"detail": f"{detail} (error id {error_id}; the server's log has the detail)",
                    "error_id": error_id}


def error_frame(exc: BaseException, where: str) -> str:
    """An SSE ``error`` event for a stream that failed after it began (``error_body``'s body)."""
    status, body = error_body(exc, where)
    return f"event: error\ndata: {json.dumps({'error': body['detail'], **body, 'status': status})}\n\n"
