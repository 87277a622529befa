"""Handles on one agent: ``AgentHandle`` with its ``blocks`` and ``archival`` views.

A handle holds only ids and the driver's ``Connection``; every call goes to the agent's
host through ``Hosts``, which finds it and retries if that host died.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime
from typing import Any

from letta_ray.base_tools import BASE_TOOLS
from letta_ray.deps import TagMatchMode
from letta_ray.errors import InvalidInputError, NotFoundError
from letta_ray.mcp import server_of
from letta_ray.messages import LettaResponse, Message, MessageCreate, as_messages
from letta_ray.sandbox import SandboxResult
from letta_ray.schemas import AgentState, Block, ClientTool, LLMConfig, Order, Passage, RequiresApprovalToolRule
from letta_ray.tools import clip

from .archive import ArchiveHandle
from .hosts import Connection


class AgentHandle:
    """One agent, wherever it is hosted. Cheap to create; holds only the id."""

    def __init__(self, connection: Connection, agent_id: str, name: str) -> None:
        self.connection = connection
        self.id = agent_id
        self.name = name
        self.blocks = BlocksView(self)
        self.archival = ArchivalView(self)

    def __repr__(self) -> str:
        return f"AgentHandle(id={self.id!r}, name={self.name!r})"

    def _sync(self, coro: Any) -> Any:
        return self.connection.loop.run(coro)

    async def send_async(self, message: str | MessageCreate | list[MessageCreate | Message | dict[str, Any]], *,
                         max_steps: int | None = None, run_id: str | None = None,
                         client_tools: list[ClientTool | dict[str, Any]] | None = None,
                         llm_config: LLMConfig | None = None) -> LettaResponse:
        messages = as_messages(message, limits=self.connection.limits)
        offered = _client_tools(client_tools)
        return await self.connection.hosts.call(
            self.id, lambda host: host.send(self.id, messages, max_steps=max_steps, run_id=run_id,
                                            client_tools=offered, llm_config=llm_config))

    def send(self, message: str | MessageCreate | list[Any], *, max_steps: int | None = None,
             client_tools: list[ClientTool | dict[str, Any]] | None = None,
             llm_config: LLMConfig | None = None) -> LettaResponse:
        """Send a message and run the agent's turn: typed events, stop reason and usage.

        ``client_tools`` are tools this caller runs: when the model calls one, the turn stops
        (``requires_approval``) and the caller sends the result back with
        ``send(MessageCreate(type="approval", approvals=[{"type": "tool", ...}]))``. ``llm_config``
        replaces the agent's model for this turn only."""
        return self._sync(self.send_async(message, max_steps=max_steps, client_tools=client_tools,
                                          llm_config=llm_config))

    async def stream_async(self, message: str | MessageCreate | list[Any], *, max_steps: int | None = None,
                           client_tools: list[ClientTool | dict[str, Any]] | None = None,
                           run_id: str | None = None, llm_config: LLMConfig | None = None,
                           stream_tokens: bool = False) -> AsyncIterator[Any]:
        """Each event of the turn as it happens, then ``StopReason`` and ``UsageStatistics``.

        With ``stream_tokens`` the model's text, reasoning and tool-call arguments arrive
        piece by piece as the LLM generates them: several events of one kind with the same
        id, whose text concatenated is the whole (as Letta streams tokens)."""
        messages = as_messages(message, limits=self.connection.limits)
        offered = _client_tools(client_tools)
        async for item in self.connection.hosts.stream(
                self.id, lambda host: host.send_stream(self.id, messages, max_steps=max_steps, run_id=run_id,
                                                       client_tools=offered, llm_config=llm_config,
                                                       stream_tokens=stream_tokens)):
            yield item

    def stream(self, message: str | MessageCreate | list[Any], *, max_steps: int | None = None,
               client_tools: list[ClientTool | dict[str, Any]] | None = None,
               stream_tokens: bool = False) -> Iterator[Any]:
        """Sync twin of ``stream_async``."""
        return self.connection.loop.iterate(self.stream_async(message, max_steps=max_steps,
                                                              client_tools=client_tools, stream_tokens=stream_tokens))

    async def state_async(self) -> AgentState:
        return await self.connection.hosts.call(self.id, lambda host: host.get_state(self.id))

    def state(self) -> AgentState:
        return self._sync(self.state_async())

    async def messages_async(self, *, limit: int | None = 50, before: str | None = None, after: str | None = None,
                             order: Order = "asc") -> list[Message]:
        return await self.connection.runtime.store.list_messages(self.id, limit=limit, before=before, after=after,
                                                                 order=order)

    def messages(self, *, limit: int | None = 50, before: str | None = None, after: str | None = None,
                 order: Order = "asc") -> list[Message]:
        """The agent's stored history, paged by message id."""
        return self._sync(self.messages_async(limit=limit, before=before, after=after, order=order))

    async def context_async(self) -> list[Message]:
        return await self.connection.hosts.call(self.id, lambda host: host.context(self.id))

    def context(self) -> list[Message]:
        """The messages currently in the agent's context window."""
        return self._sync(self.context_async())

    async def modify_async(self, **changes: Any) -> AgentState:
        return await self.connection.hosts.call(self.id, lambda host: host.modify(self.id, changes))

    def modify(self, **changes: Any) -> AgentState:
        return self._sync(self.modify_async(**changes))

    async def reset_messages_async(self, *, add_default_initial_messages: bool = False) -> AgentState:
        """Clear the in-context buffer (the history stays in recall)."""
        return await self.connection.hosts.call(
            self.id, lambda host: host.reset_messages(self.id, add_default_initial_messages))

    def reset_messages(self, *, add_default_initial_messages: bool = False) -> AgentState:
        """Clear the in-context buffer (the history stays in recall); with
        ``add_default_initial_messages`` start it again with Letta's default first messages."""
        return self._sync(self.reset_messages_async(add_default_initial_messages=add_default_initial_messages))

    async def set_membership_async(self, field: str, item: str, present: bool) -> list[str]:
        """Put ``item`` in (or take it out of) one of the agent's id lists (``archive_ids``,
        ``identity_ids``, ...), changing the agent only if needed; returns the list."""
        ids: list[str] = getattr(await self.state_async(), field)
        if (item in ids) != present:
            wanted = [*ids, item] if present else [i for i in ids if i != item]
            ids = getattr(await self.modify_async(**{field: wanted}), field)
        return ids

    async def cancel_async(self, run_ids: list[str] | None = None) -> list[str]:
        return await self.connection.hosts.call(self.id, lambda host: host.cancel(self.id, run_ids))

    def cancel(self, run_ids: list[str] | None = None) -> list[str]:
        """Stop the agent's running turn (only if it is one of ``run_ids``, when given). It ends
        with stop reason "cancelled" before its next LLM call (a call under way is dropped);
        the steps it finished are kept. Returns the ids of the runs cancelled."""
        return self._sync(self.cancel_async(run_ids))

    async def compact_async(self) -> dict[str, Any]:
        return await self.connection.hosts.call(self.id, lambda host: host.compact(self.id))

    def compact(self) -> dict[str, Any]:
        """Summarise the older part of the context now: ``{"summary", "num_messages_before",
        "num_messages_after"}``."""
        return self._sync(self.compact_async())

    async def system_prompt_async(self) -> str:
        return await self.connection.hosts.call(self.id, lambda host: host.system_prompt(self.id))

    def system_prompt(self) -> str:
        """The system message the agent's next step sends, with its memory rendered in."""
        return self._sync(self.system_prompt_async())

    async def preview_async(self, message: str | MessageCreate | list[Any], *,
                            client_tools: list[ClientTool | dict[str, Any]] | None = None) -> dict[str, Any]:
        messages = as_messages(message, limits=self.connection.limits)
        offered = _client_tools(client_tools)
        return await self.connection.hosts.call(self.id, lambda host: host.preview(self.id, messages, offered))

    def preview(self, message: str | MessageCreate | list[Any], *,
                client_tools: list[ClientTool | dict[str, Any]] | None = None) -> dict[str, Any]:
        """The LLM request a turn on ``message`` would start with (model, messages, tools);
        nothing is sent and nothing changes."""
        return self._sync(self.preview_async(message, client_tools=client_tools))

    async def attach_tool_async(self, name: str) -> AgentState:
        if name not in BASE_TOOLS:
            await self.connection.runtime.store.get_tool_by_name(name)  # NotFoundError names it
        state = await self.state_async()
        tools = state.tools if name in state.tools else [*state.tools, name]
        return await self.modify_async(tools=tools)

    def attach_tool(self, name: str) -> AgentState:
        return self._sync(self.attach_tool_async(name))

    async def set_approval_async(self, tool_name: str, requires_approval: bool) -> AgentState:
        """Make the agent's calls to ``tool_name`` wait for a person's approval, or not
        (a ``requires_approval`` tool rule)."""
        state = await self.state_async()
        if tool_name not in state.tools:
            raise NotFoundError("tool attached to this agent", tool_name)
        rules = [r for r in state.tool_rules if not (r.type == "requires_approval" and r.tool_name == tool_name)]
        if requires_approval:
            rules.append(RequiresApprovalToolRule(tool_name=tool_name))
        return await self.modify_async(tool_rules=[r.model_dump() for r in rules])

    def set_approval(self, tool_name: str, requires_approval: bool) -> AgentState:
        return self._sync(self.set_approval_async(tool_name, requires_approval))

    def export(self, *, scrub_messages: bool = False, max_messages: int | None = None) -> dict[str, Any]:
        """This agent as a Letta agent file (see ``Client.export_agent_file``)."""
        from .agent_files import export_agent_file

        return self._sync(export_agent_file(self.connection, self.id, scrub_messages=scrub_messages,
                                            max_messages=max_messages))

    async def run_tool_async(self, name: str, args: dict[str, Any] | None = None) -> SandboxResult:
        """Run one of the agent's own tools on ``args`` in the sandbox, with the agent's secrets,
        outside any turn (Letta's ``agents.tools.run``)."""
        state = await self.state_async()
        if name in BASE_TOOLS:
            raise InvalidInputError(f"{name!r} is a built-in tool: it runs inside the agent's turns only")
        if name not in state.tools:
            raise NotFoundError("tool attached to this agent", name)
        runtime = self.connection.runtime
        tool = await runtime.store.get_tool_by_name(name)
        if (server_id := server_of(tool)) is not None:  # an MCP server's tool: its server runs it
            ok, text = await runtime.mcp.call_tool(await runtime.store.get_mcp_server(server_id), tool.name,
                                                   dict(args or {}))
            return SandboxResult(ok=ok, message=clip(text, tool.return_char_limit))
        sandbox = await runtime.tools.get(tool.pip_requirements)
        return await sandbox.call(tool.source_code or "", tool.name, dict(args or {}), env=state.secrets,
                                   agent_state=state.model_dump(mode="json") if tool.takes_agent_state else None,
                                   return_char_limit=tool.return_char_limit)

    def run_tool(self, name: str, args: dict[str, Any] | None = None) -> SandboxResult:
        return self._sync(self.run_tool_async(name, args))


def _client_tools(tools: list[ClientTool | dict[str, Any]] | None) -> list[ClientTool] | None:
    if not tools:
        return None
    try:
        return [t if isinstance(t, ClientTool) else ClientTool.model_validate(t) for t in tools]
    except ValueError as exc:
        raise InvalidInputError(f"invalid client tool: {exc}") from None


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
        agent_id, connection = self._agent.id, self._agent.connection
        connection.limits.check_block(label, value, changes.get("limit"))
        block: Block = await connection.hosts.call(
            agent_id, lambda host: host.update_block(agent_id, label, value=value, **changes))
        others = [a for a in await connection.runtime.store.agents_of_block(block.id) if a != agent_id]
        await connection.hosts.reload(others)  # a shared block: the other agents see the edit too
        return block

    def update(self, label: str, value: str | None = None, **changes: Any) -> Block:
        """Set a block's value (or limit, description, read_only); BlockLimitError past its limit."""
        return self._agent._sync(self.update_async(label, value, **changes))


class ArchivalView:
    """The agent's archival memory."""

    def __init__(self, agent: AgentHandle) -> None:
        self._agent = agent

    @property
    def _archive(self) -> ArchiveHandle:
        return self._agent.connection.runtime.archive

    async def insert_async(self, text: str, tags: list[str] | None = None) -> Passage:
        if not text.strip():
            raise InvalidInputError("passage text is empty")
        return await self._archive.insert(self._agent.id, text, tags)

    async def search_async(self, query: str | None, *, top_k: int = 5, tags: list[str] | None = None,
                           tag_match_mode: TagMatchMode = "any", start: datetime | None = None,
                           end: datetime | None = None) -> list[Passage]:
        """The agent's own passages and those of the archives attached to it, as its tool searches."""
        owners = (await self._agent.connection.runtime.store.get_agent(self._agent.id)).archive_owners
        return await self._archive.search(owners, query, top_k=top_k, tags=tags,
                                          tag_match_mode=tag_match_mode, start=start, end=end)

    async def list_async(self, *, limit: int = 100, after: str | None = None, ascending: bool = True
                         ) -> list[Passage]:
        return await self._archive.list(self._agent.id, limit=limit, after=after, ascending=ascending)

    async def count_async(self) -> int:
        return await self._archive.count(self._agent.id)

    async def delete_async(self, passage_id: str) -> None:
        await self._archive.delete(passage_id, agent_id=self._agent.id)

    def insert(self, text: str, tags: list[str] | None = None) -> Passage:
        return self._agent._sync(self.insert_async(text, tags))

    def search(self, query: str | None, *, top_k: int = 5, tags: list[str] | None = None,
               tag_match_mode: TagMatchMode = "any", start: datetime | None = None,
               end: datetime | None = None) -> list[Passage]:
        return self._agent._sync(self.search_async(query, top_k=top_k, tags=tags, tag_match_mode=tag_match_mode,
                                                   start=start, end=end))

    def list(self, *, limit: int = 100, after: str | None = None) -> list[Passage]:
        return self._agent._sync(self.list_async(limit=limit, after=after))

    def count(self) -> int:
        return self._agent._sync(self.count_async())

    def delete(self, passage_id: str) -> None:
        self._agent._sync(self.delete_async(passage_id))
