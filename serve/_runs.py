"""Routes of /v1/runs, /v1/steps and /v1/messages: what every turn did, and every agent's history."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from letta_ray.actors.client import Client
from letta_ray.messages import LettaMessage, Message, StepRecord, StopReason, UsageStatistics, to_events
from letta_ray.schemas import Order, time_cursors

from ._common import SSE, ClientDep, page_limit
from ._run_streams import RunStreams
from .schemas import DateTime, RunView

runs = APIRouter(prefix="/v1/runs", tags=["runs"])
steps = APIRouter(prefix="/v1/steps", tags=["steps"])
history = APIRouter(prefix="/v1/messages", tags=["messages"])

Limit = Annotated[int | None, page_limit()]
OrderBy = Literal["created_at"]


def events_json(messages: list[Message], types: list[str] | None = None, *,
                uses_send_message: bool = True) -> Response:
    """Stored messages as Letta's message events, serialised once."""
    return _events_response(messages, types, uses_send_message)


def _events_of(messages: list[Message], types: list[str] | None, uses_send_message: bool) -> list[Any]:
    return [e for m in messages for e in to_events(m, uses_send_message=uses_send_message)
            if types is None or e.message_type in types]


def _events_response(messages: list[Message], types: list[str] | None, uses_send_message: bool) -> Response:
    events = _events_of(messages, types, uses_send_message)
    return Response(content=b"[" + b",".join(e.model_dump_json().encode() for e in events) + b"]",
                    media_type="application/json")


async def event_page(fetch: Callable[[str | None, str | None], Awaitable[list[Message]]], order: Order,
                     after: str | None, before: str | None, limit: int | None, types: list[str] | None, *,
                     uses_send_message: bool = True) -> Response:
    """A page of message events: ``fetch(later_than, earlier_than)`` reads ``limit`` stored
    messages; a page of them that shows no events (tool returns of send_message, say) would
    end a client's paging early, so it reads on past them."""
    first, last = time_cursors(order, after, before)
    stored = await fetch(first, last)
    while not _events_of(stored, types, uses_send_message) and stored and limit is not None and len(stored) >= limit:
        if order == "asc":
            first = stored[-1].id
        else:
            last = stored[-1].id
        stored = await fetch(first, last)
    return _events_response(stored, types, uses_send_message)


# --------------------------------------------------------------------------- runs


@runs.get("/", response_model=list[RunView], summary="List runs (every turn is one), newest first")
async def list_runs(
    client: ClientDep,
    agent_id: str | None = None,
    agent_ids: Annotated[list[str] | None, Query()] = None,
    statuses: Annotated[list[str] | None, Query()] = None,
    active: bool = False,
    background: bool | None = None,
    stop_reason: str | None = None,
    after: str | None = None,
    before: str | None = None,
    limit: Limit = 100,
    order: Order = "desc",
    order_by: OrderBy = "created_at",
    ascending: bool | None = Query(default=None, description="deprecated: use order"),
) -> list[RunView]:
    if ascending is not None:
        order = "asc" if ascending else "desc"
    after, before = time_cursors(order, after, before)
    docs = await client.runs.list_async(agent_id=agent_id, agent_ids=agent_ids, statuses=statuses, active=active,
                                        background=background, stop_reason=stop_reason, after=after, before=before,
                                        limit=limit, order=order)
    return [RunView.model_validate(d) for d in docs]


@runs.get("/{run_id}", response_model=RunView, summary="A run: status, stop reason, usage, timing")
async def retrieve_run(run_id: str, client: ClientDep) -> RunView:
    return RunView.model_validate(await client.runs.retrieve_async(run_id))


@runs.delete("/{run_id}", response_model=RunView, summary="Delete a run and its steps (its messages stay)")
async def delete_run(run_id: str, client: ClientDep) -> RunView:
    run = RunView.model_validate(await client.runs.retrieve_async(run_id))
    await client.runs.delete_async(run_id)
    return run


@runs.get("/{run_id}/usage", response_model=dict[str, Any], summary="A finished run's token usage")
async def retrieve_run_usage(run_id: str, client: ClientDep) -> dict[str, Any]:
    usage = RunView.model_validate(await client.runs.retrieve_async(run_id)).usage or {}
    return {k: usage.get(k) for k in ("completion_tokens", "prompt_tokens", "total_tokens")}


@runs.get("/{run_id}/messages", response_model=list[LettaMessage], summary="The messages of a run's turn")
async def list_run_messages(run_id: str, client: ClientDep, after: str | None = None, before: str | None = None,
                            limit: Limit = 100, order: Order = "asc", order_by: OrderBy = "created_at") -> Response:
    after, before = time_cursors(order, after, before)
    return events_json(await client.runs.messages_async(run_id, after=after, before=before, limit=limit, order=order))


@runs.get("/{run_id}/steps", response_model=list[StepRecord], summary="The LLM calls of a run's turn")
async def list_run_steps(run_id: str, client: ClientDep, after: str | None = None, before: str | None = None,
                         limit: Limit = 100, order: Order = "asc", order_by: OrderBy = "created_at"
                         ) -> list[StepRecord]:
    after, before = time_cursors(order, after, before)
    return await client.runs.steps_async(run_id, after=after, before=before, limit=limit, order=order)


@runs.get("/{run_id}/trace", response_model=list[dict[str, Any]],
          summary="A run's timeline: one span per LLM call, with its timings in nanoseconds")
async def retrieve_run_trace(run_id: str, client: ClientDep) -> list[dict[str, Any]]:
    return [{"name": "step", "step_id": s.id, "model": s.model, "status": s.status, "start_ns": s.step_start_ns,
             "duration_ns": s.step_ns, "llm_request_ns": s.llm_request_ns, "tool_execution_ns": s.tool_execution_ns}
            for s in await client.runs.steps_async(run_id, limit=None)]


class RunStreamRequest(BaseModel):
    starting_after: int = Field(default=0, description="the seq_id after which to resume")
    include_pings: bool | None = None
    poll_interval: float | None = Field(default=None, gt=0, le=10)
    batch_size: int | None = None


@runs.post("/{run_id}/stream", responses=SSE,
           summary="Re-attach to a run: its events from a seq_id on, live while it runs")
async def stream_run(run_id: str, request: Request, client: ClientDep,
                     body: Annotated[RunStreamRequest | None, Body()] = None) -> Response:
    body = body or RunStreamRequest()
    await client.runs.retrieve_async(run_id)  # 404 for an unknown run
    streams: RunStreams = request.app.state.run_streams
    live = streams.get(run_id)
    frames = live.follow(body.starting_after) if live is not None else replay(client, run_id, body)
    return StreamingResponse(frames, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# A run of another replica (or from before a restart) is followed through the store, for at most this long.
REPLAY_WAIT_S = 600.0


async def replay(client: Client, run_id: str, body: RunStreamRequest) -> AsyncIterator[str]:
    """A run this replica holds no stream of: wait for it to end, then its stored events."""
    deadline = time.monotonic() + REPLAY_WAIT_S
    run = await client.runs.retrieve_async(run_id)
    while run.get("status") in ("created", "running") and time.monotonic() < deadline:
        await asyncio.sleep(body.poll_interval or 0.25)
        run = await client.runs.retrieve_async(run_id)
    items: list[Any] = [e for m in await client.runs.messages_async(run_id, limit=None) for e in to_events(m)
                        if e.message_type != "user_message"]
    if run.get("stop_reason"):
        items.append(StopReason(stop_reason=run["stop_reason"]))
    if run.get("usage"):
        items.append(UsageStatistics.model_validate(run["usage"]))
    for seq, item in enumerate(items, start=1):
        if seq > body.starting_after:
            yield f"data: {item.model_copy(update={'seq_id': seq}).model_dump_json()}\n\n" \
                if hasattr(item, "seq_id") else f"data: {item.model_dump_json()}\n\n"
    yield "data: [DONE]\n\n"


# --------------------------------------------------------------------------- steps


@steps.get("/", response_model=list[StepRecord], summary="List steps (LLM calls), newest first")
async def list_steps(
    client: ClientDep,
    agent_id: str | None = None,
    run_id: str | None = None,
    model: str | None = None,
    start_date: DateTime | None = None,
    end_date: DateTime | None = None,
    feedback: Literal["positive", "negative"] | None = None,
    has_feedback: bool | None = None,
    tags: Annotated[list[str] | None, Query()] = None,
    after: str | None = None,
    before: str | None = None,
    limit: Limit = 50,
    order: Order = "desc",
    order_by: OrderBy = "created_at",
) -> list[StepRecord]:
    after, before = time_cursors(order, after, before)
    return await client.steps.list_async(agent_id=agent_id, run_id=run_id, model=model, start=start_date,
                                         end=end_date, feedback=feedback, has_feedback=has_feedback, tags=tags,
                                         after=after, before=before, limit=limit, order=order)


@steps.get("/{step_id}", response_model=StepRecord, summary="A step: model, tokens, stop reason, timings")
async def retrieve_step(step_id: str, client: ClientDep) -> StepRecord:
    return await client.steps.retrieve_async(step_id)


@steps.get("/{step_id}/messages", response_model=list[LettaMessage], summary="The messages of one LLM call")
async def list_step_messages(step_id: str, client: ClientDep, after: str | None = None, before: str | None = None,
                             limit: Limit = 100, order: Order = "asc", order_by: OrderBy = "created_at") -> Response:
    after, before = time_cursors(order, after, before)
    return events_json(await client.steps.messages_async(step_id, after=after, before=before, limit=limit,
                                                         order=order))


class StepMetricsView(BaseModel):
    id: str
    agent_id: str | None = None
    run_id: str | None = None
    step_start_ns: int | None = None
    llm_request_start_ns: int | None = None
    llm_request_ns: int | None = None
    tool_execution_ns: int | None = None
    step_ns: int | None = None


@steps.get("/{step_id}/metrics", response_model=StepMetricsView, summary="A step's timings, in nanoseconds")
async def retrieve_step_metrics(step_id: str, client: ClientDep) -> StepMetricsView:
    return StepMetricsView.model_validate((await client.steps.retrieve_async(step_id)).model_dump())


@steps.get("/{step_id}/trace", response_model=dict[str, Any] | None,
           summary="The provider request of a step: not recorded here (null), as in Letta without tracing")
async def retrieve_step_trace(step_id: str, client: ClientDep) -> None:
    await client.steps.retrieve_async(step_id)  # 404 for an unknown step
    return None


class StepFeedbackRequest(BaseModel):
    feedback: Literal["positive", "negative"] | None = None
    tags: list[str] | None = None


@steps.patch("/{step_id}/feedback", response_model=StepRecord, summary="Rate a step")
async def step_feedback(step_id: str, body: StepFeedbackRequest, client: ClientDep) -> StepRecord:
    return await client.steps.feedback_async(step_id, body.feedback, body.tags)


# --------------------------------------------------------------------------- messages of every agent


@history.get("/", response_model=list[LettaMessage], summary="Messages of every agent, newest first")
async def list_all_messages(client: ClientDep, agent_id: str | None = None, after: str | None = None,
                            before: str | None = None, limit: Limit = 100, order: Order = "desc",
                            include_return_message_types: Annotated[list[str] | None, Query()] = None) -> Response:
    return await event_page(lambda first, last: client.messages.list_async(
        agent_id=agent_id, limit=limit, order=order, after=first, before=last),
        order, after, before, limit, include_return_message_types)


@history.get("/{message_id}", response_model=list[LettaMessage],
             summary="A stored message, as the message events it shows as")
async def retrieve_message(message_id: str, client: ClientDep) -> Response:
    return events_json([await client.messages.retrieve_async(message_id)])


class MessageSearchRequest(BaseModel):
    query: str = Field(min_length=1)
    agent_id: str | None = None
    conversation_id: str | None = None
    search_mode: Literal["vector", "fts", "hybrid"] = "hybrid"
    start_date: DateTime | None = None
    end_date: DateTime | None = None
    limit: int = Field(default=50, ge=1, le=1000)


_SEARCHED = ("system_message", "user_message", "reasoning_message", "assistant_message")


@history.post("/search", response_model=list[dict[str, Any]],
              summary="Search every agent's history (full text, best first)")
async def search_messages(body: MessageSearchRequest, client: ClientDep) -> list[dict[str, Any]]:
    found = await client.messages.search_async(body.query, agent_id=body.agent_id, start=body.start_date,
                                               end=body.end_date, limit=body.limit)
    results = []
    for message in found:
        for event in to_events(message):
            if event.message_type in _SEARCHED:
                doc = event.model_dump(mode="json")
                results.append({**doc, "message_id": message.id, "agent_id": message.agent_id,
                                "created_at": doc["date"]})
    return results
