"""Conversations in the driver API: ``client.conversations`` (the shape of Letta's).

A conversation is one more thread with an agent: its own context window (in-context
messages and summary) over the agent's one memory, so what the agent learns in one thread
(its blocks, its archival memory) it knows in every other. Turns of one agent still run
one at a time, whichever conversation they belong to. A conversation's turns are stored
with it (its messages carry its id). Each method has an ``*_async`` twin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from letta_ray.errors import InvalidInputError
from letta_ray.messages import LettaResponse, Message, MessageCreate, as_messages
from letta_ray.schemas import ClientTool, Conversation, LLMConfig, Order, changed

from .handles import _client_tools
from .hosts import Connection


class ConversationsAPI:
    """``client.conversations``: threads with an agent that share its memory."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.store = connection.runtime.store

    def _run(self, coro: Any) -> Any:
        return self.connection.loop.run(coro)

    async def create_async(self, agent_id: str, *, summary: str | None = None,
                           description: str | None = None) -> Conversation:
        await self.store.get_agent(agent_id)  # NotFoundError for an unknown agent
        return await self.store.upsert_conversation(Conversation(agent_id=agent_id, summary=summary,
                                                                 description=description))

    def create(self, agent_id: str, **fields: Any) -> Conversation:
        """A new, empty thread with the agent (``summary``, ``description``)."""
        return self._run(self.create_async(agent_id, **fields))

    async def list_async(self, *, agent_id: str | None = None, archived: bool | None = None, after: str | None = None,
                         before: str | None = None, limit: int | None = 50, order: Order = "desc"
                         ) -> list[Conversation]:
        return await self.store.list_conversations(agent_id=agent_id, archived=archived, after=after, before=before,
                                                   limit=limit, order=order)

    def list(self, **filters: Any) -> list[Conversation]:
        return self._run(self.list_async(**filters))

    async def retrieve_async(self, conversation_id: str) -> Conversation:
        return await self.store.get_conversation(conversation_id)

    def retrieve(self, conversation_id: str) -> Conversation:
        return self._run(self.retrieve_async(conversation_id))

    async def update_async(self, conversation_id: str, **changes: Any) -> Conversation:
        allowed = {"summary", "description", "archived"}
        if unknown := sorted(set(changes) - allowed):
            raise InvalidInputError(f"cannot change {unknown} of a conversation; one of {sorted(allowed)}")
        conversation = await self.store.get_conversation(conversation_id)
        return await self.store.upsert_conversation(changed(conversation, changes))

    def update(self, conversation_id: str, **changes: Any) -> Conversation:
        return self._run(self.update_async(conversation_id, **changes))

    async def delete_async(self, conversation_id: str) -> None:
        await self.store.delete_conversation(conversation_id)

    def delete(self, conversation_id: str) -> None:
        """Delete a conversation (its messages stay in the agent's history)."""
        self._run(self.delete_async(conversation_id))

    async def fork_async(self, conversation_id: str) -> Conversation:
        source = await self.store.get_conversation(conversation_id)
        return await self.store.upsert_conversation(Conversation(
            agent_id=source.agent_id, summary=source.summary, description=source.description,
            message_ids=list(source.message_ids)))

    def fork(self, conversation_id: str) -> Conversation:
        """A new conversation that starts where this one is (same context, then apart)."""
        return self._run(self.fork_async(conversation_id))

    async def send_async(self, conversation_id: str, message: str | MessageCreate | list[Any], *,
                         max_steps: int | None = None, run_id: str | None = None,
                         client_tools: list[ClientTool | dict[str, Any]] | None = None,
                         llm_config: LLMConfig | None = None) -> LettaResponse:
        conversation = await self.store.get_conversation(conversation_id)
        messages = as_messages(message, limits=self.connection.limits)
        offered = _client_tools(client_tools)
        return await self.connection.hosts.call(
            conversation.agent_id, lambda host: host.send(conversation.agent_id, messages, max_steps=max_steps,
                                                          run_id=run_id, client_tools=offered, llm_config=llm_config,
                                                          conversation_id=conversation.id))

    def send(self, conversation_id: str, message: str | MessageCreate | list[Any], **options: Any) -> LettaResponse:
        """A turn of the agent in this conversation: its context, the agent's memory."""
        return self._run(self.send_async(conversation_id, message, **options))

    async def stream_async(self, conversation_id: str, message: str | MessageCreate | list[Any], *,
                           max_steps: int | None = None, run_id: str | None = None,
                           client_tools: list[ClientTool | dict[str, Any]] | None = None,
                           llm_config: LLMConfig | None = None, stream_tokens: bool = False) -> AsyncIterator[Any]:
        """A turn in the conversation, streamed (see ``AgentHandle.stream_async``)."""
        conversation = await self.store.get_conversation(conversation_id)
        messages = as_messages(message, limits=self.connection.limits)
        offered = _client_tools(client_tools)
        async for item in self.connection.hosts.stream(
                conversation.agent_id, lambda host: host.send_stream(
                    conversation.agent_id, messages, max_steps=max_steps, run_id=run_id, client_tools=offered,
                    llm_config=llm_config, conversation_id=conversation.id, stream_tokens=stream_tokens)):
            yield item

    async def messages_async(self, conversation_id: str, *, after: str | None = None, before: str | None = None,
                             limit: int | None = 100, order: Order = "asc") -> list[Message]:
        conversation = await self.store.get_conversation(conversation_id)
        return await self.store.list_messages(conversation.agent_id, conversation_id=conversation.id, limit=limit,
                                              after=after, before=before, order=order)

    def messages(self, conversation_id: str, **paging: Any) -> list[Message]:
        """The conversation's messages (``after``/``before`` message ids, in time)."""
        return self._run(self.messages_async(conversation_id, **paging))

    async def cancel_async(self, conversation_id: str) -> list[str]:
        conversation = await self.store.get_conversation(conversation_id)
        return await self.connection.hosts.call(
            conversation.agent_id, lambda host: host.cancel(conversation.agent_id, None, conversation.id))

    def cancel(self, conversation_id: str) -> list[str]:
        """Stop this conversation's running turn; the ids of the runs cancelled."""
        return self._run(self.cancel_async(conversation_id))

    async def compact_async(self, conversation_id: str) -> dict[str, Any]:
        conversation = await self.store.get_conversation(conversation_id)
        return await self.connection.hosts.call(
            conversation.agent_id, lambda host: host.compact(conversation.agent_id, conversation.id))

    def compact(self, conversation_id: str) -> dict[str, Any]:
        """Summarise the older part of this conversation's context now."""
        return self._run(self.compact_async(conversation_id))
