"""The Python driver API: ``letta_ray.connect()``, ``Client`` and ``AgentHandle``.

Every operation is written once, as a coroutine (``*_async``); the plain method runs
it on the client's event-loop thread, so the sync API works from scripts, notebooks and
threads alike. Callers hold handles and never see hosts: when a host dies under a
call, the directory re-places the agent and the call is made again.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import ray

from letta_ray.base_tools import BASE_TOOLS, DEFAULT_SYSTEM_PROMPTS, DEFAULT_TOOLS
from letta_ray.errors import InvalidInputError, NotFoundError
from letta_ray.mcp import server_of
from letta_ray.messages import Message, MessageCreate
from letta_ray.sandbox import SandboxResult
from letta_ray.schemas import (
    AgentState,
    AgentType,
    Block,
    CreateBlock,
    EmbeddingConfig,
    LLMConfig,
    LLMLimit,
    PipRequirement,
    Tool,
    ToolRule,
)
from letta_ray.settings import Settings
from letta_ray.tools import build_tool

from ._facade import ACTOR_GONE
from ._loop import EventLoopThread
from .archives_api import ArchivesAPI
from .conversations_api import ConversationsAPI
from .folders_api import FoldersAPI
from .groups_api import GroupsAPI
from .handles import AgentHandle, ArchivalView, BlocksView
from .host import HostHandle, StalePlacement, TurnResult, pair_sleeptime
from .hosts import Connection, Hosts
from .identities_api import IdentitiesAPI
from .limits import parse_limits
from .local_model import stored_endpoint
from .mcp_api import MCPServersAPI
from .runs_api import MessagesAPI, RunsAPI, StepsAPI
from .runtime import Runtime, init_ray, start_runtime, stop_runtime
from .scheduler import Schedule
from .tool_sandboxes import parse_requirements

__all__ = ["AgentHandle", "ArchivalView", "BlocksView", "Client", "connect"]

T = TypeVar("T")
log = logging.getLogger(__name__)


def connect(address: str | None = None, *, home: str | None = None, settings: Settings | None = None,
            llm: Any = None, **overrides: Any) -> Client:
    """Connect to letta_ray: an embedded local Ray by default, or ``address`` of a cluster.

    ``home`` is the data directory (default ``$LETTA_RAY_HOME`` or ``~/.letta_ray``).
    ``llm`` replaces the LLM of every agent host (for tests and simulations with a fake).
    """
    values = dict(overrides)
    if address is not None:
        values["ray_address"] = address
    if home is not None:
        values["home"] = home
    settings = settings.model_copy(update=values) if settings else Settings(**values)
    started = init_ray(settings)
    return Client(start_runtime(settings, llm=llm), owns_ray=started)


class Client:
    """A connection to one letta_ray runtime (one data directory).

    ``runtime`` holds the handles of its actors (the stores, the directory), ``hosts``
    where this process's agents run; ``groups`` is the groups API.
    """

    def __init__(self, runtime: Runtime, *, owns_ray: bool = False) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.hosts = Hosts(runtime.directory, runtime.store, self.settings.call_timeout_s)
        self.connection = Connection(runtime, self.hosts, EventLoopThread(), self.settings.input_limits())
        self.groups = GroupsAPI(self.connection)
        """Groups of agents: round robin, supervisor, dynamic (``client.groups.create_group(...)``)."""
        self.mcp_servers = MCPServersAPI(self.connection)
        """MCP servers and their tools (``client.mcp_servers.create("files", {...})``)."""
        self.folders = FoldersAPI(self.connection)
        """Folders of documents agents read (``client.folders.upload(folder.id, "report.pdf")``)."""
        self.conversations = ConversationsAPI(self.connection)
        """Threads with an agent, each its own context, all one memory (``client.conversations.create(id)``)."""
        self.identities = IdentitiesAPI(self.connection)
        """The users and organisations agents talk to (``client.identities.create("user-42", "Ada")``)."""
        self.archives = ArchivesAPI(self.connection)
        """Archives: archival memory several agents share (``client.archives.create("handbook")``)."""
        self.runs = RunsAPI(self.connection)
        """Runs: every turn is one (``client.runs.list(agent_id=...)``, ``.messages(run_id)``)."""
        self.steps = StepsAPI(self.connection)
        """Steps: every LLM call of a turn, with tokens and timings (``client.steps.list(run_id=...)``)."""
        self.messages = MessagesAPI(self.connection)
        """Every agent's history: list, retrieve, search (``client.messages.search("coffee")``)."""
        self._owns_ray = owns_ray
        self._closed = False
        atexit.register(self._atexit)

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the async API (``*_async``) from sync code, on the client's loop."""
        return self.connection.loop.run(coro)

    def agent(self, agent_id: str, name: str = "") -> AgentHandle:
        """A handle on the agent ``agent_id``, without looking it up (calls on it raise
        NotFoundError if there is no such agent)."""
        return AgentHandle(self.connection, agent_id, name)

    async def send_many_async(self, turns: list[tuple[str, list[MessageCreate | Message], str | None]], *,
                              max_steps: int | None = None, concurrency: int = 256, chunk: int = 250
                              ) -> AsyncIterator[list[TurnResult]]:
        """Run one turn for each ``(agent_id, messages, run_id)``; yields results in chunks as they finish.

        Turns go to the agents' hosts in batches of ``chunk`` (one Ray call each), at
        most ``concurrency`` turns in flight per host. A turn that failed, or whose
        host died, comes back as a ``TurnResult`` with ``error`` set.
        """
        if not turns:
            return
        agent_ids = [t[0] for t in turns]
        by_host = self.hosts.by_host(turns, agent_ids, await self.hosts.locate_many(agent_ids))
        # Each host's batches go one after another (the host's own gate sets the pace),
        # hosts in parallel: results stream back while the next batch runs.
        queue: asyncio.Queue[list[TurnResult] | None] = asyncio.Queue()

        async def feed(host: HostHandle, host_turns: list[Any]) -> None:
            pending = None
            for start in range(0, len(host_turns), chunk):
                batch = host_turns[start:start + chunk]
                # sent now, awaited after the previous batch's results are queued
                running = asyncio.ensure_future(host.send_many(batch, max_steps=max_steps, concurrency=concurrency))
                if pending is not None:
                    await queue.put(await self._batch_results(*pending))
                pending = (running, batch)
            if pending is not None:
                await queue.put(await self._batch_results(*pending))

        feeders = [asyncio.ensure_future(feed(host, host_turns)) for host, host_turns in by_host]
        done = asyncio.gather(*feeders)

        def finished(future: asyncio.Future[Any]) -> None:
            queue.put_nowait(None)
            if not future.cancelled():
                future.exception()  # seen here; re-raised to the consumer by ``await done``

        done.add_done_callback(finished)
        try:
            while (results := await queue.get()) is not None:
                yield results
            await done
        finally:
            for feeder in feeders:
                feeder.cancel()

    async def _batch_results(self, running: asyncio.Future[list[TurnResult]], batch: list[Any]
                             ) -> list[TurnResult]:
        try:
            return await running
        except ACTOR_GONE as exc:
            for agent_id, *_ in batch:
                self.hosts.forget(agent_id)
            return [TurnResult(agent_id, None, f"host died: {exc}", 0.0) for agent_id, *_ in batch]

    async def existing_agents_async(self, agent_ids: list[str]) -> list[str]:
        """Which of ``agent_ids`` exist."""
        return await self.runtime.store.existing_agents(agent_ids)

    async def messages_of_runs_async(self, run_id_prefix: str) -> dict[str, list[Message]]:
        """Stored messages of every run whose id starts with ``run_id_prefix``, by run id."""
        return await self.runtime.store.messages_of_runs(run_id_prefix)

    # ---------------------------------------------------------------- the cluster's LLM limits

    async def set_llm_limits_async(self, limits: dict[str, LLMLimit | dict[str, Any]]) -> dict[str, LLMLimit]:
        """Cap LLM requests cluster-wide, per model (``"*"``: every other model); returns the
        limits before. ``{}`` removes every limit."""
        parsed = parse_limits({m: v.model_dump() if isinstance(v, LLMLimit) else v for m, v in limits.items()})
        _, before = await self.runtime.directory.llm_limits()
        await self.runtime.directory.set_llm_limits(parsed)
        return before

    def set_llm_limits(self, limits: dict[str, LLMLimit | dict[str, Any]]) -> dict[str, LLMLimit]:
        return self.run_sync(self.set_llm_limits_async(limits))

    def llm_stats(self) -> dict[str, dict[str, int]]:
        """Per model: requests in flight, the most ever in flight, started, waiting."""
        return self.run_sync(self.runtime.directory.llm_stats())

    # ---------------------------------------------------------------- agents

    def build_agent_state(
        self,
        name: str,
        *,
        model: str | None = None,
        llm_config: LLMConfig | dict[str, Any] | None = None,
        model_endpoint: str | None = None,
        context_window: int | None = None,
        agent_type: AgentType = "memgpt_v2_agent",
        system: str | None = None,
        memory_blocks: list[CreateBlock | dict[str, Any] | Block] | None = None,
        tools: list[str] | None = None,
        include_base_tools: bool = True,
        tool_rules: list[ToolRule] | None = None,
        tags: list[str] | None = None,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        embedding_config: EmbeddingConfig | None = None,
        max_steps: int = 50,
        secrets: dict[str, str] | None = None,
        timezone: str = "UTC",
        message_buffer_autoclear: bool = False,
        identity_ids: list[str] | None = None,
    ) -> AgentState:
        """Validate a new agent's definition and resolve its model; raises InvalidInputError."""
        config = self._llm_config(model, llm_config, model_endpoint, context_window)
        blocks: list[Block] = []
        for spec in memory_blocks or []:
            if isinstance(spec, Block):
                blocks.append(spec)
                continue
            try:
                create = spec if isinstance(spec, CreateBlock) else CreateBlock.model_validate(spec)
                blocks.append(create.to_block())
            except ValueError as exc:
                raise InvalidInputError(f"invalid memory block {spec!r}: {exc}") from exc
        names = list(DEFAULT_TOOLS.get(agent_type, [])) if include_base_tools else []
        names += [t for t in tools or [] if t not in names]
        try:
            return AgentState(
                name=name, agent_type=agent_type, system=system or DEFAULT_SYSTEM_PROMPTS[agent_type],
                blocks=blocks, tools=names, tool_rules=tool_rules or [], llm_config=config,
                embedding_config=embedding_config or EmbeddingConfig(
                    embedding_model=self.settings.embedding_model, embedding_dim=self.settings.embedding_dim),
                tags=tags or [], description=description, metadata=metadata or {}, max_steps=max_steps,
                secrets=secrets or {}, timezone=timezone, message_buffer_autoclear=message_buffer_autoclear,
                identity_ids=identity_ids or [])
        except InvalidInputError:
            raise
        except ValueError as exc:
            raise InvalidInputError(f"invalid agent {name!r}: {exc}") from exc

    def _llm_config(self, model: str | None, llm_config: LLMConfig | dict[str, Any] | None,
                    model_endpoint: str | None, context_window: int | None) -> LLMConfig:
        if llm_config is not None:
            try:
                config = llm_config if isinstance(llm_config, LLMConfig) else LLMConfig.model_validate(llm_config)
            except ValueError as exc:
                raise InvalidInputError(f"invalid llm_config: {exc}") from exc
            return config
        if model is None:
            model, why = self.settings.resolve_default_model()
            if model is None:
                raise InvalidInputError(f"no model given and {why}")
        try:
            endpoint = stored_endpoint(model, model_endpoint or self.settings.endpoint_for(model))
            return LLMConfig(model=model, model_endpoint=endpoint,
                             context_window=context_window or self.settings.default_context_window)
        except ValueError as exc:
            raise InvalidInputError(f"invalid model settings: {exc}") from exc

    async def _check(self, states: list[AgentState]) -> None:
        """New agents' blocks within the limits and their tools known, or InvalidInputError / NotFoundError."""
        for state in states:
            self.connection.limits.check_blocks(state.blocks)
        await self._check_tools(states)

    async def _check_tools(self, states: list[AgentState]) -> None:
        wanted = {t for s in states for t in s.tools if t not in BASE_TOOLS}
        for name in wanted:
            await self.runtime.store.get_tool_by_name(name)  # NotFoundError names the missing tool

    async def create_agent_async(self, name: str, *, enable_sleeptime: bool = False,
                                 sleeptime_agent_frequency: int = 5,
                                 initial_messages: list[MessageCreate | dict[str, Any]] | None = None,
                                 new_blocks: bool | None = None, **kwargs: Any) -> AgentHandle:
        """``create_agent``; ``new_blocks``: no block of ``memory_blocks`` is stored yet (by
        default: true when none is a ``Block``, which may be a stored one)."""
        state, new_blocks = self._new_agent(name, new_blocks, kwargs)
        return await self._create_one(state, new_blocks, initial_messages, enable_sleeptime,
                                      sleeptime_agent_frequency)

    def _new_agent(self, name: str, new_blocks: bool | None, kwargs: dict[str, Any]) -> tuple[AgentState, bool]:
        """The state of an agent to create, and whether none of its blocks is stored yet."""
        state = self.build_agent_state(name, **kwargs)
        if new_blocks is None:
            new_blocks = not any(isinstance(b, Block) for b in kwargs.get("memory_blocks") or ())
        return state, new_blocks

    @staticmethod
    def _first_context(state: AgentState, initial_messages: list[MessageCreate | dict[str, Any]] | None
                       ) -> list[list[Message]] | None:
        """A new agent's initial messages as its context window (once its id is final)."""
        if not initial_messages:
            return None
        context = [[_initial_message(state, m) for m in initial_messages]]
        state.message_ids = [m.id for m in context[0]]
        return context

    @staticmethod
    def _checked_messages(initial_messages: list[MessageCreate | dict[str, Any]] | None
                          ) -> list[MessageCreate | dict[str, Any]] | None:
        """Initial messages validated before an id is taken (InvalidInputError)."""
        return [_message_create(m) for m in initial_messages] if initial_messages else None

    async def _create_one(self, state: AgentState, new_blocks: bool,
                          initial_messages: list[MessageCreate | dict[str, Any]] | None,
                          enable_sleeptime: bool, sleeptime_agent_frequency: int) -> AgentHandle:
        if not enable_sleeptime and self.settings.placement == "packed":
            await self._check([state])  # before an id is taken: a refused agent leaves none unused
            initial_messages = self._checked_messages(initial_messages)
            state.id, epoch, (host_id, host) = await self.hosts.reserved()  # placed ahead: no directory call now
            context = self._first_context(state, initial_messages)
            try:
                await self._create_placed([(host, [state])], [state], context, None, new_blocks, epoch, checked=True)
            except (StalePlacement, *ACTOR_GONE) as exc:
                return await self._reservation_failed(state, context, new_blocks, epoch, host_id, exc)
            return self.agent(state.id, state.name)
        context = self._first_context(state, initial_messages)
        if not enable_sleeptime:
            [handle] = await self.create_agents_async([state], context=context, new_blocks=new_blocks)
            return handle
        if context:
            raise InvalidInputError("initial messages are not supported with enable_sleeptime")
        return await self._create_with_sleeptime(state, sleeptime_agent_frequency, new_blocks)

    async def _reservation_failed(self, state: AgentState, context: list[list[Message]] | None, new_blocks: bool,
                                  epoch: str, host_id: str, exc: BaseException) -> AgentHandle:
        """Create the agent after its host refused (StalePlacement) or lost (ACTOR_GONE) its
        reserved placement; nothing of it was created there."""
        if isinstance(exc, StalePlacement):  # a restarted directory: it places the agent anew
            self.hosts.drop_reserved(epoch=epoch)
            self.hosts.forget(state.id)
            [handle] = await self.create_agents_async([state], context=context, new_blocks=new_blocks)
            return handle
        await self.hosts.release_reserved(host_id)
        _, host = await self.hosts.replace(state.id, host_id)  # the host died: placed elsewhere
        await self._create_placed([(host, [state])], [state], context, None, new_blocks, checked=True)
        return self.agent(state.id, state.name)

    def _create_here(self, state: AgentState, new_blocks: bool,
                     initial_messages: list[MessageCreate | dict[str, Any]] | None) -> AgentHandle | None:
        """``create_agent`` in the caller's thread with one blocking call to the host, when it
        needs no other call: packed placement, an id reserved ahead in stock, no stored block
        and only built-in tools (no lookup). A loop of creates then skips the two hops to the
        client's event loop per call (~15 % of a create). None: not taken, nothing done."""
        if (self.settings.placement != "packed" or not new_blocks or self.connection.loop.stopped
                or not all(t in BASE_TOOLS for t in state.tools)):
            return None
        self.connection.limits.check_blocks(state.blocks)
        initial_messages = self._checked_messages(initial_messages)  # before an id is taken
        reservation = self.hosts.reserved_now()
        if reservation is None:  # out of stock: the loop's path reserves more
            return None
        state.id, epoch, (host_id, host) = reservation
        context = self._first_context(state, initial_messages)
        try:
            host.create_agents_blocking([state], context, None, _shared_among([state]), epoch)
        except (StalePlacement, *ACTOR_GONE) as exc:
            return self.run_sync(self._reservation_failed(state, context, new_blocks, epoch, host_id, exc))
        return self.agent(state.id, state.name)

    async def _create_with_sleeptime(self, main: AgentState, frequency: int, new_blocks: bool) -> AgentHandle:
        """The main agent and its sleep-time agent, sharing the main agent's blocks."""

        if frequency < 1:
            raise InvalidInputError("sleeptime_agent_frequency must be at least 1")
        sleeper = AgentState(
            name=f"{main.name}-sleeptime", agent_type="sleeptime_agent",
            system=DEFAULT_SYSTEM_PROMPTS["sleeptime_agent"],
            blocks=main.blocks, tools=list(DEFAULT_TOOLS["sleeptime_agent"]), llm_config=main.llm_config,
            embedding_config=main.embedding_config, tags=main.tags)
        group = pair_sleeptime(main, sleeper, frequency, f"sleep-time agent of {main.name}")
        handle, _ = await self.create_agents_async([main, sleeper], new_blocks=new_blocks)
        await self.runtime.store.upsert_group(group["id"], group)
        return handle

    def create_agent(self, name: str, *, enable_sleeptime: bool = False, sleeptime_agent_frequency: int = 5,
                     initial_messages: list[MessageCreate | dict[str, Any]] | None = None,
                     **kwargs: Any) -> AgentHandle:
        """Create an agent; see ``build_agent_state`` for the arguments.

        With ``enable_sleeptime`` a sleep-time agent sharing its blocks is created too; it
        runs in the background every ``sleeptime_agent_frequency`` turns of this agent.
        ``initial_messages`` (``{"role": "user" | "assistant" | "system", "content": ...}``)
        start its context window (Letta's ``initial_message_sequence``).
        """
        state, new_blocks = self._new_agent(name, kwargs.pop("new_blocks", None), kwargs)
        if not enable_sleeptime and (handle := self._create_here(state, new_blocks, initial_messages)) is not None:
            return handle
        return self.run_sync(self._create_one(state, new_blocks, initial_messages, enable_sleeptime,
                                              sleeptime_agent_frequency))

    async def create_agents_async(self, states: list[AgentState], *, context: list[list[Message]] | None = None,
                                  history: list[list[Message]] | None = None,
                                  new_blocks: bool = False) -> list[AgentHandle]:
        """Create many agents at once: one placement call and one write per host. ``context``
        (per agent: the messages of its context window) and ``history`` (older ones) are
        stored with them (an agent file's messages).

        ``new_blocks``: the caller made every block of these agents (none is stored), so no
        older agent shares them; the hosts then journal the agents rather than wait for DuckDB."""
        if not states:
            return []
        await self._create_placed(None, states, context, history, new_blocks)
        return [self.agent(s.id, s.name) for s in states]

    async def _create_placed(self, by_host: list[tuple[HostHandle, list[AgentState]]] | None,
                             states: list[AgentState], context: list[list[Message]] | None,
                             history: list[list[Message]] | None, new_blocks: bool, epoch: str | None = None,
                             checked: bool = False) -> None:
        """Check (unless ``checked``), place (unless ``by_host`` says where) and create the
        agents on their hosts."""
        if not checked:
            await self._check(states)
        if by_host is None:
            ids = [s.id for s in states]
            by_host = self.hosts.by_host(states, ids, await self.hosts.place(ids))
        position = {s.id: i for i, s in enumerate(states)}
        shared = _shared_among(states) if new_blocks else None

        def of(group: list[AgentState], given: list[list[Message]] | None) -> list[list[Message]] | None:
            return None if given is None else [given[position[s.id]] for s in group]
        await asyncio.gather(*(host.create_agents(group, of(group, context), of(group, history), shared, epoch)
                               for host, group in by_host))
        if not new_blocks:
            await self.hosts.blocks_now_shared(list(dict.fromkeys(b.id for s in states for b in s.blocks)))

    def create_agents(self, states: list[AgentState]) -> list[AgentHandle]:
        return self.run_sync(self.create_agents_async(states))

    async def get_agent_async(self, id_or_name: str) -> AgentHandle:
        if id_or_name.startswith("agent-"):
            try:
                state = await self.runtime.store.get_agent(id_or_name)
                return self.agent(state.id, state.name)
            except NotFoundError:
                pass
        state = await self.runtime.store.get_agent_by_name(id_or_name)
        return self.agent(state.id, state.name)

    def get_agent(self, id_or_name: str) -> AgentHandle:
        """An agent by id or name; raises NotFoundError."""
        return self.run_sync(self.get_agent_async(id_or_name))

    async def list_agents_async(self, *, name: str | None = None, tags: list[str] | None = None,
                                match_all_tags: bool = False, limit: int | None = 50, after: str | None = None,
                                before: str | None = None, order: str = "asc") -> list[AgentState]:
        return await self.runtime.store.list_agents(name=name, tags=tags, match_all_tags=match_all_tags,
                                 limit=limit, after=after, before=before, order=order)

    def list_agents(self, **kwargs: Any) -> list[AgentState]:
        """Stored agents, oldest first, filtered by name or tags, paged by id."""
        return self.run_sync(self.list_agents_async(**kwargs))

    async def delete_agent_async(self, agent_id: str) -> None:
        await self.runtime.store.get_agent(agent_id)  # NotFoundError for an unknown id
        try:
            await self.hosts.call(agent_id, lambda host: host.drop(agent_id))
        except NotFoundError:
            pass
        await self.runtime.store.delete_agent(agent_id)
        await self.runtime.archive.delete_agent(agent_id)
        await self.runtime.directory.forget(agent_id)
        self.hosts.forget(agent_id)

    def delete_agent(self, agent_id: str) -> None:
        """Delete an agent with its messages and passages (shared blocks stay for the others)."""
        self.run_sync(self.delete_agent_async(agent_id))

    # ---------------------------------------------------------------- tools

    async def create_tool_async(self, source: Any, *, name: str | None = None, tags: list[str] | None = None,
                                description: str | None = None, json_schema: dict[str, Any] | None = None,
                                return_char_limit: int | None = None,
                                pip_requirements: list[PipRequirement | dict[str, Any] | str] | None = None,
                                default_requires_approval: bool | None = None) -> Tool:
        """Register a tool (replacing one of its name): a function of this script, or Python source.

        Source is read in the tool sandbox, never here; ``pip_requirements`` are installed
        into the tool's sandbox environment now, so one that cannot be installed fails here.
        """
        reqs = parse_requirements(pip_requirements)
        tool = await self._tool_from(source, name, reqs)
        return await self._store_tool(tool, tags=list(tags or tool.tags), description=description,
                                      json_schema=json_schema, return_char_limit=return_char_limit,
                                      pip_requirements=reqs, default_requires_approval=default_requires_approval)

    async def update_tool_async(self, tool_id: str, *, source_code: str | None = None, **changes: Any) -> Tool:
        """Change a stored tool (Letta's ``tools.update``): new source is read in the sandbox
        again; ``changes`` are ``create_tool_async``'s options (None leaves a field as it is)."""
        tool = await self.runtime.store.get_tool(tool_id)
        if server_of(tool) is not None and (source_code is not None or changes.get("pip_requirements")):
            raise InvalidInputError(f"{tool.name!r} is a tool of an MCP server: its server defines it "
                                    "(refresh the server to update it)")
        if "pip_requirements" in changes and changes["pip_requirements"] is not None:
            changes["pip_requirements"] = parse_requirements(changes["pip_requirements"])
        reqs = changes.get("pip_requirements") or tool.pip_requirements
        if source_code is not None or changes.get("pip_requirements") is not None:
            rebuilt = await self._tool_from(source_code or tool.source_code or "", None, reqs)
            tool = rebuilt.model_copy(update={"id": tool.id, "tags": tool.tags, "pip_requirements": reqs,
                                              "default_requires_approval": tool.default_requires_approval})
        return await self._store_tool(tool, **{k: v for k, v in changes.items() if v is not None})

    async def _tool_from(self, source: Any, name: str | None, reqs: list[PipRequirement]) -> Tool:
        if isinstance(source, str):  # before anything reads it
            self.connection.limits.check_tool_source(name or "?", source)
        sandbox = await self.runtime.tools.get(reqs)  # ToolDefinitionError if they cannot be installed
        if isinstance(source, str):
            described = await sandbox.describe(source, name)
            return Tool.model_validate({**described["tool"], "takes_agent_state": described["takes_agent_state"]})
        tf = build_tool(source, name=name)
        if tf.tool.source_code is None:
            raise InvalidInputError(f"cannot read the source of {tf.name}; pass its source code as a string")
        self.connection.limits.check_tool_source(tf.name, tf.tool.source_code)
        if tf.takes_context and tf.context_param != "agent_state":
            raise InvalidInputError(f"tool {tf.name!r} takes a ToolContext, which only built-in tools can")
        return tf.tool.model_copy(update={"takes_agent_state": tf.takes_context})

    async def _store_tool(self, tool: Tool, **changes: Any) -> Tool:
        if tool.name in BASE_TOOLS:
            raise InvalidInputError(f"{tool.name!r} is a built-in tool name; choose another")
        changes = {k: v for k, v in changes.items() if v is not None or k == "default_requires_approval"}
        try:
            tool = Tool.model_validate({**tool.model_dump(), **changes})
        except ValueError as exc:
            raise InvalidInputError(f"invalid tool {tool.name!r}: {exc}") from exc
        stored = await self.runtime.store.upsert_tool(tool)
        await self.runtime.directory.tools_changed()
        return stored

    def create_tool(self, source: Any, *, name: str | None = None, tags: list[str] | None = None,
                    **options: Any) -> Tool:
        """Register a tool from a function or from Python source (the docstring is its schema);
        see ``create_tool_async`` for the options."""
        return self.run_sync(self.create_tool_async(source, name=name, tags=tags, **options))

    async def run_tool_from_source_async(self, source: str, args: dict[str, Any], *, name: str | None = None,
                                         env: dict[str, str] | None = None,
                                         pip_requirements: list[PipRequirement | dict[str, Any] | str] | None = None
                                         ) -> SandboxResult:
        """Run a tool's source on ``args`` in the sandbox, with no agent (Letta's tools/run)."""
        sandbox = await self.runtime.tools.get(parse_requirements(pip_requirements))
        described = await sandbox.describe(source, name)
        return await sandbox.call(source, described["tool"]["name"], args, env=env)

    def run_tool_from_source(self, source: str, args: dict[str, Any], **options: Any) -> SandboxResult:
        return self.run_sync(self.run_tool_from_source_async(source, args, **options))

    def list_tools(self, limit: int | None = 50) -> list[Tool]:
        return self.run_sync(self.runtime.store.list_tools(limit=limit))

    async def list_tools_async(self, *, limit: int | None = 50, after: str | None = None) -> list[Tool]:
        return await self.runtime.store.list_tools(limit=limit, after=after)

    async def get_tool_async(self, tool_id: str) -> Tool:
        return await self.runtime.store.get_tool(tool_id)

    async def delete_tool_async(self, tool_id: str) -> None:
        await self.runtime.store.delete_tool(tool_id)
        await self.runtime.directory.tools_changed()

    # ---------------------------------------------------------------- agent files

    async def import_agent_file_async(self, source: str | bytes | dict[str, Any], **options: Any
                                      ) -> list[AgentHandle]:
        """Create the agents of a Letta agent file (a path, its bytes or its JSON), with their
        blocks, tools, messages and groups, all of them or none; ``options`` are those of
        ``ImportOptions`` (``name``, ``append_copy_suffix``, ``model``, ``strip_messages``,
        ``override_existing_tools``, ``secrets``). Raises AgentFileError (an InvalidInputError)
        naming the element that is wrong."""
        from letta_ray.agent_file import ImportOptions

        from .agent_files import import_agent_file

        raw = source
        if isinstance(source, str) and not source.lstrip().startswith(("{", '"')):
            try:
                raw = Path(source).expanduser().read_bytes()
            except OSError as exc:
                raise InvalidInputError(f"cannot read the agent file {source!r}: {exc.strerror}") from None
        try:
            parsed = ImportOptions(**options)
        except TypeError as exc:
            raise InvalidInputError(f"unknown import option: {exc}") from None
        agents, warnings = await import_agent_file(self, raw, parsed)
        for warning in warnings:
            log.warning("importing an agent file: %s", warning)
        return [self.agent(agent_id, name) for agent_id, name in agents]

    def import_agent_file(self, source: str | bytes | dict[str, Any], **options: Any) -> list[AgentHandle]:
        """Sync twin of ``import_agent_file_async``: the new agents, in the file's order."""
        return self.run_sync(self.import_agent_file_async(source, **options))

    async def export_agent_file_async(self, agent_id: str, *, scrub_messages: bool = False,
                                      max_messages: int | None = None) -> dict[str, Any]:
        from .agent_files import export_agent_file

        return await export_agent_file(self.connection, agent_id, scrub_messages=scrub_messages,
                                       max_messages=max_messages)

    def export_agent_file(self, agent_id: str, *, scrub_messages: bool = False,
                          max_messages: int | None = None) -> dict[str, Any]:
        """The agent as a Letta agent file (with its sleep-time agent and group, if any); secrets
        are written with empty values; ``max_messages`` keeps the newest ones."""
        return self.run_sync(self.export_agent_file_async(agent_id, scrub_messages=scrub_messages,
                                                          max_messages=max_messages))

    # ---------------------------------------------------------------- blocks and runs

    async def get_agent_state_async(self, agent_id: str) -> AgentState:
        """The stored state of an agent (without hosting it); NotFoundError if unknown."""
        return await self.runtime.store.get_agent(agent_id)

    async def create_block_async(self, block: Block) -> Block:
        """Store a block of its own, to attach to agents later (a shared block)."""
        self.connection.limits.check_blocks([block])
        await self.runtime.store.upsert_block(block)
        return block

    async def get_block_async(self, block_id: str) -> Block:
        return await self.runtime.store.get_block(block_id)

    async def list_blocks_async(self, *, label: str | None = None, limit: int | None = 50,
                                after: str | None = None) -> list[Block]:
        return await self.runtime.store.list_blocks(label=label, limit=limit, after=after)

    async def agents_of_block_async(self, block_id: str) -> list[str]:
        return await self.runtime.store.agents_of_block(block_id)

    async def update_block_async(self, block_id: str, **changes: Any) -> Block:
        """Edit a block by id; every agent it is attached to sees the edit before its next turn."""
        block = (await self.runtime.store.get_block(block_id)).updated(**changes)
        self.connection.limits.check_block(block.label, block.value, block.limit)
        await self.runtime.store.upsert_block(block)
        await self.hosts.reload(await self.runtime.store.agents_of_block(block_id))
        return block

    async def delete_block_async(self, block_id: str) -> None:
        """Delete a block, detaching it from every agent."""
        agents = await self.runtime.store.agents_of_block(block_id)
        await self.runtime.store.delete_block(block_id)
        await self.hosts.reload(agents)

    async def attach_block_async(self, agent_id: str, block_id: str) -> AgentState:
        """Attach a stored block to an agent (blocks attached to several agents are shared)."""
        state = await self.runtime.store.get_agent(agent_id)
        if block_id not in {b.id for b in state.blocks}:
            self.connection.limits.check_blocks([], already=len(state.blocks) + 1)
        await self.runtime.store.attach_block(agent_id, block_id)
        # every holder reloads: the block may have just become shared
        await self.hosts.reload(await self.runtime.store.agents_of_block(block_id))
        return await self.runtime.store.get_agent(agent_id)

    def attach_block(self, agent_id: str, block_id: str) -> AgentState:
        return self.run_sync(self.attach_block_async(agent_id, block_id))

    async def detach_block_async(self, agent_id: str, block_id: str) -> AgentState:
        await self.runtime.store.detach_block(agent_id, block_id)
        await self.hosts.reload([agent_id])
        return await self.runtime.store.get_agent(agent_id)

    def detach_block(self, agent_id: str, block_id: str) -> AgentState:
        return self.run_sync(self.detach_block_async(agent_id, block_id))

    # ---------------------------------------------------------------- timers

    async def schedule_async(self, agent_id: str, *, every_s: float | None = None, at: datetime | None = None,
                             message: str | None = None) -> Schedule:
        return await self.runtime.directory.schedule(agent_id, every_s=every_s, at=at, message=message)

    def schedule(self, agent_id: str, *, every_s: float | None = None, at: datetime | None = None,
                 message: str | None = None) -> Schedule:
        """Wake an agent every ``every_s`` seconds, or once ``at`` a time, with a system message."""
        return self.run_sync(self.schedule_async(agent_id, every_s=every_s, at=at, message=message))

    def list_schedules(self, agent_id: str | None = None) -> list[Any]:
        return self.run_sync(self.runtime.directory.schedules(agent_id))

    def cancel_schedule(self, schedule_id: str) -> None:
        self.run_sync(self.runtime.directory.cancel_schedule(schedule_id))

    # ---------------------------------------------------------------- lifecycle

    def export_parquet(self, out_dir: str | None = None) -> dict[str, Any]:
        """Snapshot the metadata tables to Parquet (default: ``<home>/export``)."""
        return self.run_sync(self.runtime.store.export_parquet(out_dir or str(self.settings.export_path)))

    def status(self) -> dict[str, Any]:
        """What an operator watches: the hosts and the nodes they run on (``placement``), the
        metadata store's apply lag and snapshots (``store``), what the journal keepers wrote
        for hosts on other nodes (``keepers``)."""
        async def gather() -> dict[str, Any]:
            placement, store, keepers = await asyncio.gather(
                self.runtime.directory.describe(), self.runtime.store.status(),
                asyncio.gather(*(k.stats() for k in self.runtime.keepers)))
            return {"placement": placement, "store": store, "keepers": list(keepers)}

        return self.run_sync(gather())

    def snapshot(self) -> dict[str, Any]:
        """Snapshot the metadata to the object store now (``LETTA_RAY_STORAGE``); its name,
        seconds and bytes. A StorageError without an object store or if it cannot be written."""
        return self.run_sync(self.runtime.store.snapshot())

    def close(self, *, shutdown: bool | None = None) -> None:
        """Disconnect. With an embedded Ray (or ``shutdown=True``) the actors stop too."""
        if self._closed:
            return
        stop = self.settings.embedded if shutdown is None else shutdown
        try:  # this process's tool workers
            self.run_sync(asyncio.wait_for(self.runtime.tools.close(), 30))
        except Exception:
            log.debug("tool sandboxes did not close cleanly", exc_info=True)
        if stop:
            stop_runtime(self.runtime)
        else:  # the runtime lives on: its directory stops counting our unused agent ids
            self._release_reserved(10)
        self._closed = True
        self.connection.loop.stop()
        if self._owns_ray and stop:
            ray.shutdown()

    def _atexit(self) -> None:
        if self._closed:
            return
        if not self._owns_ray:  # a driver of a cluster that exits without close(): its unused agent ids go back
            self._release_reserved(5)
            return
        try:
            self.close()
        except Exception:
            pass

    def _release_reserved(self, timeout_s: float) -> None:
        """Give the directory back the agent ids reserved and not used (best effort)."""
        try:
            self.run_sync(asyncio.wait_for(self.hosts.release_reserved(), timeout_s))
        except Exception:
            log.debug("reserved agent ids were not released", exc_info=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shared_among(states: list[AgentState]) -> list[str]:
    """The ids of the blocks that more than one of these new agents uses."""
    uses = Counter(b.id for s in states for b in s.blocks)
    return sorted(b for b, n in uses.items() if n > 1)


def _message_create(message: MessageCreate | dict[str, Any]) -> MessageCreate:
    try:
        return message if isinstance(message, MessageCreate) else MessageCreate.model_validate(message)
    except ValueError as exc:
        raise InvalidInputError(f"invalid initial message {message!r}: {exc}") from exc


def _initial_message(state: AgentState, message: MessageCreate | dict[str, Any]) -> Message:
    """One message of a new agent's starting context, as stored."""
    create = _message_create(message)
    return Message(agent_id=state.id, role=create.role, content=create.text(), name=create.name)
