"""Routes of /v1/conversations: threads with an agent, each its own context, all one memory."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from letta_ray.actors.client import Client
from letta_ray.errors import InvalidInputError, NotFoundError
from letta_ray.schemas import Conversation, Order, time_cursors

from ._common import SSE, ClientDep, json_response, message_response, page_limit
from ._messages import CompactionView, override_model, pings_of, shown, sse_of
from ._run_streams import RunStreams
from ._runs import RunStreamRequest, event_page, replay
from .schemas import SendMessageRequest

conversations = APIRouter(prefix="/v1/conversations", tags=["conversations"])


class ConversationView(BaseModel):
    id: str
    agent_id: str
    summary: str | None = None
    description: str | None = None
    in_context_message_ids: list[str] = Field(default_factory=list)
    archived: bool = False
    created_at: datetime
    updated_at: datetime | None = None
    last_message_at: datetime | None = None

    @classmethod
    def of(cls, conversation: Conversation) -> ConversationView:
        return cls(**conversation.model_dump(exclude={"message_ids"}),
                   in_context_message_ids=conversation.message_ids)


class CreateConversationRequest(BaseModel):
    agent_id: str | None = Field(default=None, description="or the agent_id query parameter, as the SDK sends it")
    summary: str | None = None
    description: str | None = None
    hidden: bool | None = None
    model: str | None = Field(default=None, description="accepted: the agent's model answers")
    context_window_limit: int | None = None


class ModifyConversationRequest(BaseModel):
    summary: str | None = None
    description: str | None = None
    archived: bool | None = None


class ConversationMessageRequest(SendMessageRequest):
    streaming: bool = True  # Letta streams conversation turns unless told not to
    agent_id: str | None = None


async def _conversation_of(client: Client, conversation_id: str, agent_id: str | None) -> Conversation:
    """The conversation named in the path; Letta's ``default`` (with an agent id) or an agent's
    id is the agent's own thread, which has no conversation record."""
    if conversation_id == "default" or conversation_id.startswith("agent-"):
        raise InvalidInputError("the agent's default conversation is reached through /v1/agents/{agent_id}/messages"
                                "; create a conversation (POST /v1/conversations/) for a thread of its own")
    return await client.conversations.retrieve_async(conversation_id)


@conversations.post("/", response_model=ConversationView, summary="Start a conversation with an agent")
async def create_conversation(client: ClientDep, agent_id: str | None = None,
                              body: Annotated[CreateConversationRequest | None, Body()] = None) -> ConversationView:
    body = body or CreateConversationRequest()
    owner = agent_id or body.agent_id
    if owner is None:
        raise InvalidInputError("agent_id is required: the agent this conversation is with")
    made = await client.conversations.create_async(owner, summary=body.summary, description=body.description)
    return ConversationView.of(made)


@conversations.get("/", response_model=list[ConversationView], summary="An agent's conversations, newest first")
async def list_conversations(client: ClientDep, agent_id: str | None = None, archived: bool | None = None,
                             after: str | None = None, before: str | None = None,
                             limit: Annotated[int | None, page_limit()] = 50, order: Order = "desc",
                             order_by: Literal["created_at"] = "created_at") -> list[ConversationView]:
    after, before = time_cursors(order, after, before)
    found = await client.conversations.list_async(agent_id=agent_id, archived=archived, after=after, before=before,
                                                  limit=limit, order=order)
    return [ConversationView.of(c) for c in found]


@conversations.get("/{conversation_id}", response_model=ConversationView, summary="Retrieve a conversation")
async def retrieve_conversation(conversation_id: str, client: ClientDep) -> ConversationView:
    return ConversationView.of(await _conversation_of(client, conversation_id, None))


@conversations.patch("/{conversation_id}", response_model=ConversationView, summary="Modify a conversation")
async def modify_conversation(conversation_id: str, body: ModifyConversationRequest,
                              client: ClientDep) -> ConversationView:
    changes = body.model_dump(exclude_unset=True)
    return ConversationView.of(await client.conversations.update_async(conversation_id, **changes))


@conversations.delete("/{conversation_id}", summary="Delete a conversation (its messages stay in the history)")
async def delete_conversation(conversation_id: str, client: ClientDep) -> Any:
    await client.conversations.delete_async(conversation_id)
    return message_response(f"Conversation id={conversation_id} successfully deleted")


@conversations.post("/{conversation_id}/fork", response_model=ConversationView,
                    summary="A new conversation starting where this one is")
async def fork_conversation(conversation_id: str, client: ClientDep) -> ConversationView:
    return ConversationView.of(await client.conversations.fork_async(conversation_id))


@conversations.post("/{conversation_id}/messages", responses=SSE, summary="Send messages in a conversation (SSE unless "
                    "streaming=false)")
async def send_conversation_message(conversation_id: str, body: ConversationMessageRequest,
                                    client: ClientDep) -> Response:
    conversation = await _conversation_of(client, conversation_id, body.agent_id)
    if body.background:
        raise InvalidInputError("background runs of conversations are not supported; stream or wait for the turn")
    llm_config = await override_model(client, conversation.agent_id, body)
    if body.streaming:
        events = client.conversations.stream_async(conversation.id, body.to_core(), max_steps=body.max_steps,
                                                   client_tools=body.core_client_tools(), llm_config=llm_config,
                                                   stream_tokens=body.stream_tokens)
        return await sse_of(events, body.include_return_message_types, pings_of(client, body))
    response = await client.conversations.send_async(conversation.id, body.to_core(), max_steps=body.max_steps,
                                                     client_tools=body.core_client_tools(), llm_config=llm_config)
    return json_response(shown(response, body.include_return_message_types))


@conversations.get("/{conversation_id}/messages", summary="A conversation's messages, as Letta messages")
async def list_conversation_messages(conversation_id: str, client: ClientDep, after: str | None = None,
                                     before: str | None = None, limit: Annotated[int | None, page_limit()] = 100,
                                     order: Order = "asc",
                                     include_return_message_types: Annotated[list[str] | None, Query()] = None,
                                     ) -> Response:
    conversation = await _conversation_of(client, conversation_id, None)
    return await event_page(lambda first, last: client.conversations.messages_async(
        conversation.id, after=first, before=last, limit=limit, order=order),
        order, after, before, limit, include_return_message_types)


@conversations.post("/{conversation_id}/stream", responses=SSE, summary="Re-attach to the conversation's latest run")
async def stream_conversation(conversation_id: str, request: Request, client: ClientDep,
                              body: Annotated[RunStreamRequest | None, Body()] = None) -> Response:
    conversation = await _conversation_of(client, conversation_id, None)
    runs = await client.runs.list_async(agent_id=conversation.agent_id, conversation_id=conversation.id, limit=1)
    if not runs:
        raise NotFoundError("run of this conversation", conversation.id)
    body = body or RunStreamRequest()
    streams: RunStreams = request.app.state.run_streams
    live = streams.get(runs[0]["id"])
    frames = live.follow(body.starting_after) if live is not None else replay(client, runs[0]["id"], body)
    return StreamingResponse(frames, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@conversations.post("/{conversation_id}/cancel", response_model=dict[str, str],
                    summary="Cancel the conversation's running turn")
async def cancel_conversation(conversation_id: str, client: ClientDep) -> dict[str, str]:
    await _conversation_of(client, conversation_id, None)
    cancelled = await client.conversations.cancel_async(conversation_id)
    if not cancelled:
        raise InvalidInputError(f"conversation {conversation_id} has no running turn to cancel")
    return dict.fromkeys(cancelled, "cancelled")


@conversations.post("/{conversation_id}/compact", response_model=CompactionView,
                    summary="Compact the conversation's context now")
async def compact_conversation(conversation_id: str, client: ClientDep,
                               body: Annotated[dict[str, Any] | None, Body()] = None) -> CompactionView:
    await _conversation_of(client, conversation_id, None)
    return CompactionView.model_validate(await client.conversations.compact_async(conversation_id))


@conversations.post("/{conversation_id}/recompile", response_model=str,
                    summary="The system prompt the conversation's next step sends")
async def recompile_conversation(conversation_id: str, client: ClientDep, dry_run: bool = False) -> str:
    conversation = await _conversation_of(client, conversation_id, None)
    return await client.agent(conversation.agent_id).system_prompt_async()
