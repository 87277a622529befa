"""Handles on one agent: ``AgentHandle`` with its ``blocks`` and ``archival`` views.

A handle holds only ids and a ``Client``; every call goes through the client, which
finds the agent's host and retries once if that host died.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime
from queue import Queue
from typing import TYPE_CHECKING, Any

from letta_ray.base_tools import BASE_TOOLS
from letta_ray.deps import TagMatchMode
from letta_ray.errors import InvalidInputError
from letta_ray.messages import LettaResponse, Message, MessageCreate
from letta_ray.schemas import AgentState, Block, Passage

if TYPE_CHECKING:
    from .client import Client


class AgentHandle:
    """One agent, wherever it is hosted. Cheap to create; holds only the id."""

    def __init__(self, client: Client, agent_id: str, name: str) -> None:
        self.client = client
        self.id = agent_id
        self.name = name
        self.blocks = BlocksView(self)
        self.archival = ArchivalView(self)

    def __repr__(self) -> str:
        return f"AgentHandle(id={self.id!r}, name={self.name!r})"

    async def send_async(self, message: str | MessageCreate | list[MessageCreate | Message | dict[str, Any]], *,
                         max_steps: int | None = None, run_id: str | None = None) -> LettaResponse:
        return await self.client.call_agent(self.id, "send", _as_messages(message), max_steps=max_steps,
                                            run_id=run_id)

    def send(self, message: str | MessageCreate | list[Any], *, max_steps: int | None = None) -> LettaResponse:
        """Send a message and run the agent's turn: typed events, stop reason and usage."""
        return self.client._run(self.send_async(message, max_steps=max_steps))

    async def stream_async(self, message: str | MessageCreate | list[Any], *, max_steps: int | None = None
                           ) -> AsyncIterator[Any]:
        """Each event of the turn as it happens, then ``StopReason`` and ``UsageStatistics``."""
        async for item in self.client.stream_agent(self.id, _as_messages(message), max_steps=max_steps):
            yield item

    def stream(self, message: str | MessageCreate | list[Any], *, max_steps: int | None = None) -> Iterator[Any]:
        """Sync twin of ``stream_async``."""
        queue: Queue[Any] = Queue()
        end = object()

        async def pump() -> None:
            try:
                async for item in self.stream_async(message, max_steps=max_steps):
                    queue.put(item)
            except BaseException as exc:
                queue.put(exc)
            finally:
                queue.put(end)

        future = asyncio.run_coroutine_threadsafe(pump(), self.client._loop.loop)
        while (item := queue.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
        future.result()

    async def state_async(self) -> AgentState:
        return await self.client.call_agent(self.id, "get_state")

    def state(self) -> AgentState:
        return self.client._run(self.state_async())

    async def messages_async(self, *, limit: int = 50, before: str | None = None, after: str | None = None,
                             order: str = "asc") -> list[Message]:
        return await self.client._store("list_messages", self.id, limit=limit, before=before, after=after,
                                        order=order)

    def messages(self, *, limit: int = 50, before: str | None = None, after: str | None = None,
                 order: str = "asc") -> list[Message]:
        """The agent's stored history, paged by message id."""
        return self.client._run(self.messages_async(limit=limit, before=before, after=after, order=order))

    def context(self) -> list[Message]:
        """The messages currently in the agent's context window."""
        return self.client._run(self.client.call_agent(self.id, "context"))

    async def modify_async(self, **changes: Any) -> AgentState:
        return await self.client.call_agent(self.id, "modify", changes)

    def modify(self, **changes: Any) -> AgentState:
        return self.client._run(self.modify_async(**changes))

    def attach_tool(self, name: str) -> AgentState:
        async def attach() -> AgentState:
            if name not in BASE_TOOLS:
                await self.client._store("get_tool_by_name", name)
            state = await self.state_async()
            tools = state.tools if name in state.tools else [*state.tools, name]
            return await self.client.call_agent(self.id, "modify", {"tools": tools})
        return self.client._run(attach())


class BlocksView(Mapping[str, Block]):
    """``agent.blocks["human"].value`` reads the live block; ``update`` edits it."""

    def __init__(self, agent: AgentHandle) -> None:
        self._agent = agent

    def _blocks(self) -> list[Block]:
        return self._agent.state().blocks

    def __getitem__(self, label: str) -> Block:
        for block in self._blocks():
            if block.label == label:
                return block
        raise KeyError(label)

    def __iter__(self) -> Iterator[str]:
        return iter([b.label for b in self._blocks()])

    def __len__(self) -> int:
        return len(self._blocks())

    async def update_async(self, label: str, value: str | None = None, **changes: Any) -> Block:
        client = self._agent.client
        block: Block = await client.call_agent(self._agent.id, "update_block", label, value=value, **changes)
        others = [a for a in await client.agents_of_block_async(block.id) if a != self._agent.id]
        await client._reload(others)  # a shared block: the other agents see the edit too
        return block

    def update(self, label: str, value: str | None = None, **changes: Any) -> Block:
        """Set a block's value (or limit, description, read_only); BlockLimitError past its limit."""
        return self._agent.client._run(self.update_async(label, value, **changes))


class ArchivalView:
    """The agent's archival memory."""

    def __init__(self, agent: AgentHandle) -> None:
        self._agent = agent

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._agent.client._run(self._agent.client._archive(method, self._agent.id, *args, **kwargs))

    async def insert_async(self, text: str, tags: list[str] | None = None) -> Passage:
        if not text.strip():
            raise InvalidInputError("passage text is empty")
        return await self._agent.client._archive("insert", self._agent.id, text, tags)

    async def search_async(self, query: str | None, *, top_k: int = 5, tags: list[str] | None = None,
                           tag_match_mode: TagMatchMode = "any", start: datetime | None = None,
                           end: datetime | None = None) -> list[Passage]:
        return await self._agent.client._archive("search", self._agent.id, query, top_k=top_k, tags=tags,
                                                 tag_match_mode=tag_match_mode, start=start, end=end)

    async def list_async(self, *, limit: int = 100, after: str | None = None, ascending: bool = True
                         ) -> list[Passage]:
        return await self._agent.client._archive("list", self._agent.id, limit=limit, after=after,
                                                 ascending=ascending)

    async def delete_async(self, passage_id: str) -> None:
        await self._agent.client._archive("delete", passage_id, agent_id=self._agent.id)

    def insert(self, text: str, tags: list[str] | None = None) -> Passage:
        if not text.strip():
            raise InvalidInputError("passage text is empty")
        return self._call("insert", text, tags)

    def search(self, query: str | None, *, top_k: int = 5, tags: list[str] | None = None,
               tag_match_mode: TagMatchMode = "any", start: datetime | None = None,
               end: datetime | None = None) -> list[Passage]:
        return self._call("search", query, top_k=top_k, tags=tags, tag_match_mode=tag_match_mode,
                          start=start, end=end)

    def list(self, *, limit: int = 100, after: str | None = None) -> list[Passage]:
        return self._call("list", limit=limit, after=after)

    def count(self) -> int:
        return self._call("count")

    def delete(self, passage_id: str) -> None:
        self._agent.client._run(self._agent.client._archive("delete", passage_id, agent_id=self._agent.id))


def _as_messages(message: Any) -> list[MessageCreate | Message]:
    if isinstance(message, str):
        return [MessageCreate(content=message)]
    if isinstance(message, MessageCreate | Message):
        return [message]
    if isinstance(message, list):
        out: list[MessageCreate | Message] = []
        for item in message:
            if isinstance(item, MessageCreate | Message):
                out.append(item)
            elif isinstance(item, dict):
                try:
                    out.append(MessageCreate.model_validate(item))
                except ValueError as exc:
                    raise InvalidInputError(f"invalid message {item!r}: {exc}") from exc
            elif isinstance(item, str):
                out.append(MessageCreate(content=item))
            else:
                raise InvalidInputError(f"cannot send {type(item).__name__} as a message")
        if not out:
            raise InvalidInputError("no message to send")
        return out
    raise InvalidInputError(f"cannot send {type(message).__name__} as a message")
