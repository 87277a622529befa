"""Routes of /v1/agents/{id}/messages (JSON, SSE, background runs), cancel, compact, recompile."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from letta_ray.actors.client import Client
from letta_ray.agent_file import litellm_model
from letta_ray.errors import InvalidInputError
from letta_ray.messages import LettaMessage, LettaResponse
from letta_ray.schemas import LLMConfig, Order, new_id, utcnow

from ._common import SSE, ClientDep, error_frame, json_response, page_limit
from ._run_streams import RunStream
from ._runs import event_page
from .schemas import RunView, SendMessageRequest

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- messages

messages = APIRouter(prefix="/v1/agents", tags=["messages"])


def _shown(response: LettaResponse, types: list[str] | None) -> LettaResponse:
    """Letta does not echo the input messages back, and can filter by message type."""
    kept = [m for m in response.messages
            if m.message_type != "user_message" and (types is None or m.message_type in types)]
    return response.model_copy(update={"messages": kept})


def shown(response: LettaResponse, types: list[str] | None) -> LettaResponse:
    return _shown(response, types)


@messages.post("/{agent_id}/messages", response_model=LettaResponse, responses=SSE,
               summary="Send messages and run a turn (SSE when streaming=true)",
               description="Concurrent sends to one agent wait their turn: an agent runs one turn at a time.")
async def send_message(agent_id: str, body: SendMessageRequest, client: ClientDep, request: Request) -> Response:
    if body.streaming:
        return await _stream(client, agent_id, body, request)
    response = await client.agent(agent_id).send_async(body.to_core(), max_steps=body.max_steps,
                                                      client_tools=body.core_client_tools(),
                                                      llm_config=await override_model(client, agent_id, body))
    return json_response(_shown(response, body.include_return_message_types))


@messages.post("/{agent_id}/messages/stream", responses=SSE,
               summary="Send messages; the turn's events as server-sent events")
async def send_message_stream(agent_id: str, body: SendMessageRequest, client: ClientDep,
                              request: Request) -> Response:
    return await _stream(client, agent_id, body, request)


async def override_model(client: Client, agent_id: str, body: SendMessageRequest) -> LLMConfig | None:
    """The model of this request only (``override_model``): the agent's config on another model."""
    if not body.override_model:
        return None
    config = (await client.get_agent_state_async(agent_id)).llm_config
    model = litellm_model(body.override_model)
    # A bare model name stays on the agent's endpoint; a handle with a provider goes to that provider.
    endpoint = client.settings.endpoint_for(model) or (config.model_endpoint if "/" not in model else None)
    return config.model_copy(update={"model": model, "handle": body.override_model, "model_endpoint": endpoint})


async def _stream(client: Client, agent_id: str, body: SendMessageRequest, request: Request) -> Response:
    if body.background:  # the turn runs on if the client goes away; it can re-attach by run id
        run = await _start_background_run(client, agent_id, body, request)
        stream = request.app.state.run_streams.get(run.id)
        return StreamingResponse(stream.follow(0), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    events = client.agent(agent_id).stream_async(body.to_core(), max_steps=body.max_steps,
                                                client_tools=body.core_client_tools(),
                                                llm_config=await override_model(client, agent_id, body),
                                                stream_tokens=body.stream_tokens)
    return await sse_of(events, body.include_return_message_types, pings_of(client, body))


def pings_of(client: Client, body: SendMessageRequest) -> float | None:
    """Seconds of silence after which a stream sends a ping (``include_pings``), or None."""
    return client.settings.stream_ping_interval_s if body.include_pings else None


def _ping() -> str:
    return f"data: {json.dumps({'message_type': 'ping', 'id': new_id('ping'), 'date': utcnow().isoformat()})}\n\n"


async def sse_of(events: AsyncIterator[Any], types: list[str] | None, ping_s: float | None = None) -> Response:
    """A turn's events as server-sent events (those of ``types`` only, when given); with
    ``ping_s``, a ``ping`` event after each ``ping_s`` seconds without one (Letta's
    keep-alive for proxies that cut off a quiet stream)."""
    # Errors before the turn starts (an unknown agent, say) are ordinary 4xx responses.
    first = await anext(events, None)

    def frame(item: Any) -> str | None:
        kind = getattr(item, "message_type", None)
        if kind == "user_message" or (types is not None and kind in _EVENT_KINDS and kind not in types):
            return None
        return f"data: {item.model_dump_json()}\n\n"

    async def sse() -> AsyncIterator[str]:
        item = first
        waiting: asyncio.Future[Any] | None = None
        try:
            while item is not None:
                if (text := frame(item)) is not None:
                    yield text
                waiting = asyncio.ensure_future(anext(events))
                # not wait_for: cancelling the anext on a timeout would end the turn's stream
                while ping_s is not None and not (await asyncio.wait({waiting}, timeout=ping_s))[0]:
                    yield _ping()
                item, waiting = await waiting, None
            yield "data: [DONE]\n\n"
        except StopAsyncIteration:
            yield "data: [DONE]\n\n"
        except Exception as exc:  # the turn failed after the stream began: say so in the stream
            yield error_frame(exc, "a streamed message")
        finally:
            if waiting is not None:  # the client left while the turn ran: its anext first
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
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
    limit: Annotated[int | None, page_limit()] = 100,
    order: Order = "desc",
    include_return_message_types: Annotated[list[str] | None, Query()] = None,
) -> Response:
    history = client.agent(agent_id)
    state = await client.get_agent_state_async(agent_id)
    return await event_page(lambda first, last: history.messages_async(limit=limit, after=first, before=last,
                                                                       order=order),
                            order, after, before, limit, include_return_message_types,
                            uses_send_message=state.uses_send_message)


@messages.post("/{agent_id}/messages/async", response_model=RunView,
               summary="Run a turn in the background; poll GET /v1/runs/{run_id} or re-attach to its stream")
async def send_message_async(agent_id: str, body: SendMessageRequest, request: Request,
                             client: ClientDep) -> RunView:
    return await _start_background_run(client, agent_id, body, request)


async def _start_background_run(client: Client, agent_id: str, body: SendMessageRequest, request: Request) -> RunView:
    await client.get_agent_state_async(agent_id)  # 404 now, not in the background
    run = RunView(agent_id=agent_id, created_at=utcnow(), background=True,
                  request_config={"include_return_message_types": body.include_return_message_types})
    await client.runs.upsert_async(run.id, run.model_dump(mode="json"))
    stream = request.app.state.run_streams.open(run.id)
    task = asyncio.create_task(_run_turn(client, run, body, stream))
    background: set[asyncio.Task[None]] = request.app.state.background
    background.add(task)
    task.add_done_callback(background.discard)
    return run


async def _run_turn(client: Client, run: RunView, body: SendMessageRequest, stream: RunStream) -> None:
    """A background turn: its events into ``stream``; its end in the run's doc (the host
    stores the turn's own run doc with it; a turn that raised is recorded here)."""
    types = body.include_return_message_types
    started = time.perf_counter_ns()
    try:
        await client.runs.upsert_async(run.id, {**run.model_dump(mode="json"), "status": "running"})
        override = await override_model(client, run.agent_id, body)
        async for item in client.agent(run.agent_id).stream_async(
                body.to_core(), max_steps=body.max_steps, run_id=run.id, client_tools=body.core_client_tools(),
                llm_config=override, stream_tokens=body.stream_tokens):
            kind = getattr(item, "message_type", None)
            if kind != "user_message" and (types is None or kind not in _EVENT_KINDS or kind in types):
                stream.add(item)
    except Exception as exc:
        log.warning("run %s failed: %s", run.id, exc)
        stream.fail(exc)
        failed = run.model_copy(update={"status": "failed", "stop_reason": "error", "error": str(exc),
                                        "completed_at": utcnow(),
                                        "total_duration_ns": time.perf_counter_ns() - started})
        try:
            await client.runs.upsert_async(run.id, failed.model_dump(mode="json"))
        except Exception:
            log.exception("could not record the end of run %s", run.id)
    finally:
        stream.close()


class CancelRequest(BaseModel):
    run_ids: list[str] | None = None


@messages.post("/{agent_id}/messages/cancel", response_model=dict[str, str],
               summary="Cancel the agent's running turn (or those of run_ids): stop reason 'cancelled'")
async def cancel_message(agent_id: str, client: ClientDep,
                         body: Annotated[CancelRequest | None, Body()] = None) -> dict[str, str]:
    await client.get_agent_state_async(agent_id)
    wanted = body.run_ids if body else None
    cancelled = await client.agent(agent_id).cancel_async(wanted)
    if wanted is None and not cancelled:
        raise InvalidInputError(f"agent {agent_id} has no running turn to cancel")
    return {run_id: "cancelled" if run_id in cancelled else "failed" for run_id in (wanted or cancelled)}


class CompactionRequest(BaseModel):
    compaction_settings: dict[str, Any] | None = None


class CompactionView(BaseModel):
    summary: str | None
    num_messages_before: int
    num_messages_after: int


@messages.post("/{agent_id}/summarize", response_model=CompactionView,
               summary="Compact the context now: the older messages become the summary")
async def summarize_messages(agent_id: str, client: ClientDep,
                             body: Annotated[CompactionRequest | None, Body()] = None) -> CompactionView:
    return CompactionView.model_validate(await client.agent(agent_id).compact_async())


@messages.post("/{agent_id}/recompile", response_model=str,
               summary="The system prompt the next step sends, memory rendered in")
async def recompile_agent(agent_id: str, client: ClientDep, update_timestamp: bool = False,
                          dry_run: bool = False) -> str:
    # Compiled afresh at every step here: nothing is stored, so dry_run changes nothing.
    return await client.agent(agent_id).system_prompt_async()


@messages.post("/{agent_id}/messages/preview-raw-payload", response_model=dict[str, Any],
               summary="The LLM request a send would start with, without sending it")
async def preview_model_request(agent_id: str, body: SendMessageRequest, client: ClientDep) -> dict[str, Any]:
    return await client.agent(agent_id).preview_async(body.to_core(), client_tools=body.core_client_tools())
