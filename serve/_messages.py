"""Routes of /v1/agents/{id}/messages (JSON, SSE, background runs) and /v1/runs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from letta_ray.actors.client import Client
from letta_ray.messages import LettaMessage, LettaResponse, to_events
from letta_ray.schemas import utcnow

from ._common import ClientDep, Order, json_response, page, status_of, store_cursors
from .schemas import RunView, SendMessageRequest

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- messages

messages = APIRouter(prefix="/v1/agents", tags=["messages"])


def _shown(response: LettaResponse, types: list[str] | None) -> LettaResponse:
    """Letta does not echo the input messages back, and can filter by message type."""
    kept = [m for m in response.messages
            if m.message_type != "user_message" and (types is None or m.message_type in types)]
    return response.model_copy(update={"messages": kept})


@messages.post("/{agent_id}/messages", response_model=LettaResponse,
               summary="Send messages and run a turn (SSE when streaming=true)",
               description="Concurrent sends to one agent wait their turn: an agent runs one turn at a time.")
async def send_message(agent_id: str, body: SendMessageRequest, client: ClientDep) -> Response:
    if body.streaming:
        return await _stream(client, agent_id, body)
    response = await client.agent(agent_id).send_async(body.to_core(), max_steps=body.max_steps,
                                                      client_tools=body.core_client_tools())
    return json_response(_shown(response, body.include_return_message_types))


@messages.post("/{agent_id}/messages/stream", summary="Send messages; the turn's events as server-sent events")
async def send_message_stream(agent_id: str, body: SendMessageRequest, client: ClientDep) -> Response:
    return await _stream(client, agent_id, body)


async def _stream(client: Client, agent_id: str, body: SendMessageRequest) -> Response:
    types = body.include_return_message_types
    events = client.agent(agent_id).stream_async(body.to_core(), max_steps=body.max_steps,
                                                client_tools=body.core_client_tools())
    # Errors before the turn starts (an unknown agent, say) are ordinary 4xx responses.
    first = await anext(events, None)

    def frame(item: Any) -> str | None:
        kind = getattr(item, "message_type", None)
        if kind == "user_message" or (types is not None and kind in _EVENT_KINDS and kind not in types):
            return None
        return f"data: {item.model_dump_json()}\n\n"

    async def sse() -> AsyncIterator[str]:
        item = first
        try:
            while item is not None:
                if (text := frame(item)) is not None:
                    yield text
                item = await anext(events)
            yield "data: [DONE]\n\n"
        except StopAsyncIteration:
            yield "data: [DONE]\n\n"
        except Exception as exc:  # the turn failed after the stream began: say so in the stream
            status, detail = status_of(exc)
            yield f"event: error\ndata: {json.dumps({'error': detail, 'detail': detail, 'status': status})}\n\n"
        finally:
            await events.aclose()

    return StreamingResponse(sse(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


_EVENT_KINDS = frozenset({"system_message", "user_message", "reasoning_message", "tool_call_message",
                          "approval_request_message",
                          "tool_return_message", "assistant_message"})


@messages.get("/{agent_id}/messages", response_model=list[LettaMessage],
              summary="An agent's history as Letta messages, paged by message id")
async def list_messages(
    agent_id: str,
    client: ClientDep,
    before: str | None = None,
    after: str | None = None,
    limit: Annotated[int | None, Query(ge=0)] = 100,
    order: Order = "desc",
    include_return_message_types: Annotated[list[str] | None, Query()] = None,
) -> Response:
    first, last = store_cursors(order, after, before)
    history = client.agent(agent_id)
    state, stored = await asyncio.gather(client.get_agent_state_async(agent_id),
                                         history.messages_async(limit=limit, after=first, before=last, order=order))
    types = include_return_message_types
    while True:
        events = [e for m in stored for e in to_events(m, uses_send_message=state.uses_send_message)
                  if types is None or e.message_type in types]
        if events or not stored or limit is None or len(stored) < limit:
            break
        # A page of messages that show no events (tool returns of send_message, say)
        # would end a client's paging early: read on past them.
        if order == "asc":
            first = stored[-1].id
        else:
            last = stored[-1].id
        stored = await history.messages_async(limit=limit, after=first, before=last, order=order)
    body = b"[" + b",".join(e.model_dump_json().encode() for e in events) + b"]"
    return Response(content=body, media_type="application/json")


@messages.post("/{agent_id}/messages/async", response_model=RunView,
               summary="Run a turn in the background; poll GET /v1/runs/{run_id}")
async def send_message_async(agent_id: str, body: SendMessageRequest, request: Request,
                             client: ClientDep) -> RunView:
    await client.get_agent_state_async(agent_id)
    run = RunView(agent_id=agent_id, created_at=utcnow(),
                  request_config={"include_return_message_types": body.include_return_message_types})
    await client.upsert_run_async(run.id, run.model_dump(mode="json"))
    task = asyncio.create_task(_run_turn(client, run, body))
    background: set[asyncio.Task[None]] = request.app.state.background
    background.add(task)
    task.add_done_callback(background.discard)
    return run


async def _run_turn(client: Client, run: RunView, body: SendMessageRequest) -> None:
    started = time.perf_counter_ns()
    try:
        run = run.model_copy(update={"status": "running"})
        await client.upsert_run_async(run.id, run.model_dump(mode="json"))
        response: LettaResponse = await client.agent(run.agent_id).send_async(
            body.to_core(), max_steps=body.max_steps, run_id=run.id, client_tools=body.core_client_tools())
        run = run.model_copy(update={"status": "completed", "stop_reason": response.stop_reason.stop_reason,
                                     "usage": response.usage.model_dump()})
    except Exception as exc:
        log.warning("run %s failed: %s", run.id, exc)
        run = run.model_copy(update={"status": "failed", "stop_reason": "error", "error": str(exc)})
    run = run.model_copy(update={"completed_at": utcnow(), "total_duration_ns": time.perf_counter_ns() - started})
    try:
        await client.upsert_run_async(run.id, run.model_dump(mode="json"))
    except Exception:
        log.exception("could not record the end of run %s", run.id)


# --------------------------------------------------------------------------- runs

runs = APIRouter(prefix="/v1/runs", tags=["runs"])


@runs.get("/", response_model=list[RunView], summary="List runs, newest first")
async def list_runs(client: ClientDep, agent_id: str | None = None,
                    statuses: Annotated[list[str] | None, Query()] = None, after: str | None = None,
                    before: str | None = None, limit: Annotated[int | None, Query(ge=0)] = 50) -> list[RunView]:
    status = statuses[0] if statuses and len(statuses) == 1 else None
    docs = await client.list_runs_async(agent_id=agent_id, status=status, limit=None)
    found = [RunView.model_validate(d) for d in docs if not statuses or d.get("status") in statuses]
    return page(found, after, before, limit)


@runs.get("/{run_id}", response_model=RunView, summary="A run's status")
async def retrieve_run(run_id: str, client: ClientDep) -> RunView:
    return RunView.model_validate(await client.get_run_async(run_id))


@runs.get("/{run_id}/usage", response_model=dict[str, Any], summary="A finished run's token usage")
async def retrieve_run_usage(run_id: str, client: ClientDep) -> dict[str, Any]:
    usage = RunView.model_validate(await client.get_run_async(run_id)).usage or {}
    return {k: usage.get(k) for k in ("completion_tokens", "prompt_tokens", "total_tokens")}
