"""AgentHost: an async actor hosting many agents, each a logical actor of its own.

Each hosted agent has its own mailbox (an asyncio lock, which is FIFO): its turns run
one after another, never interleaved and never lost, while different agents' turns
run concurrently (LLM calls are I/O). An agent's in-context memory lives only here; it
is loaded from the stores the first time the agent is touched on this host, and every
turn is persisted before its reply is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from letta_ray import _collector
from letta_ray.agent import EventSink, StepResult, compact, default_initial_messages, preview_request, step
from letta_ray.base_tools import BASE_TOOLS
from letta_ray.context import MessageCache, transcript
from letta_ray.deps import LLM, StepDeps
from letta_ray.errors import InvalidInputError, NotFoundError, StorageError, ToolDefinitionError
from letta_ray.mcp import MCPServer, server_of
from letta_ray.memory import Memory, MemoryStats, join_system_prompt, system_prompt_parts
from letta_ray.messages import (
    LettaResponse,
    Message,
    MessageCreate,
    StepRecord,
    StopReason,
    UsageStatistics,
    to_events,
)
from letta_ray.sandbox import SandboxError
from letta_ray.schemas import (
    AgentState,
    Block,
    ClientTool,
    Conversation,
    FileMetadata,
    LLMConfig,
    LLMLimit,
    Passage,
    Tool,
    new_id,
    utcnow,
)
from letta_ray.tools import ToolContext, ToolFunction, ToolOutcome, Toolset, clip, sandboxed_tool

from ._facade import ActorFacade, blocking_method, one_pickle, remote_method, streaming_method
from ._journal import Journal, JournalWriter, TurnRecord
from .archive import ArchiveHandle
from .journal_keeper import KeeperHandle, ShippedJournal
from .limits import LimitedLLM, LimitsView, LLMLimiterSource
from .local_model import LocalModelLLM
from .mcp_servers import MCPServers
from .messaging import AgentMessenger, Router
from .metadata_store import MetadataStoreHandle
from .metrics import TurnMetrics, host_gauges
from .store_shards import ShardedStore, journal_folder, shard_of
from .tool_sandboxes import ToolSandboxes

log = logging.getLogger(__name__)

# Keys in a main agent's metadata that drive its sleep-time agent.
SLEEPTIME_AGENT = "sleeptime_agent_id"
SLEEPTIME_FREQUENCY = "sleeptime_agent_frequency"
SLEEPTIME_TURNS = "sleeptime_turns"
SLEEPTIME_LAST_MESSAGE = "sleeptime_last_message_id"

# A run's status from its turn's stop reason (any other: "completed").
_REPLIES_KEPT = 64  # per agent
_RUN_STATUS = {"cancelled": "cancelled", "error": "failed", "llm_api_error": "failed"}

# A host starts a new journal file past this size (the store deletes applied ones).
JOURNAL_ROTATE_BYTES = 64 * 2**20

# Fields of an agent a caller may change after creation.
MODIFIABLE = frozenset({"name", "system", "tags", "description", "metadata", "llm_config", "embedding_config",
                        "tools", "tool_rules", "max_steps", "agent_type", "secrets", "archive_ids", "timezone",
                        "message_buffer_autoclear", "identity_ids", "folder_ids", "open_files", "max_files_open"})


def _on_node(node_id: str | None) -> bool:
    """Whether this process runs on the Ray node ``node_id`` (None: no node named, so yes)."""
    if node_id is None:
        return True
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_node_id() == node_id


def _warm_litellm() -> None:
    """Import litellm, then take what exists now out of the garbage collector's sight.

    litellm's import leaves ~450,000 objects (its model map, pydantic schemas) that live
    as long as the process. Each full collection walked them all (~100 ms, the hosts'
    p99 stalls); frozen, collections only walk what turns allocate."""
    from letta_ray.llm import LiteLLM

    LiteLLM()
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class TurnResult:
    """One turn of a batch (``AgentHost.send_many``): its response, or the error it raised."""

    agent_id: str
    response: LettaResponse | None
    error: str | None
    latency_s: float


@dataclass
class _Hosted:
    state: AgentState
    context: list[Message]
    stats: MemoryStats
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cache: MessageCache = field(default_factory=MessageCache)
    shared: set[str] | None = None  # ids of this agent's blocks attached to other agents too
    last_used: float = field(default_factory=time.monotonic)
    turns: int = 0
    run_id: str | None = None  # the turn running now, the event that cancels it, and its conversation
    cancel: asyncio.Event | None = None
    conversation_id: str | None = None
    # the latest replies by the otid of the message they answer: a retry is answered again, not run again
    replies: OrderedDict[str, LettaResponse] = field(default_factory=OrderedDict)


class AgentHost:
    """Hosts agents; ``store`` and ``archive`` are handles on the store actors (or local ones in tests)."""

    def __init__(self, host_id: str, store: MetadataStoreHandle, archive: ArchiveHandle | None,
                 llm: LLM | None = None, router: Router | None = None, agent_call_timeout_s: float = 120.0,
                 journal_dir: str | None = None, limiter: LLMLimiterSource | None = None,
                 tools: ToolSandboxes | None = None, mcp: MCPServers | None = None,
                 keeper: KeeperHandle | None = None, store_node: str | None = None) -> None:
        """With ``journal_dir`` (the store's ``host_journals`` folder) a turn is acknowledged
        once this host has fsync'ed it to its own journal file; the store applies it from
        there. Without, the turn is committed through the store actor before the reply.
        ``limiter`` (the directory's handle) caps LLM requests cluster-wide; ``tools`` are the
        tool sandboxes user tools run in (their workers: never this process); ``mcp`` reaches
        the MCP servers' actors, which MCP tools' calls go to. ``keeper`` is a journal keeper on
        the store's node (``store_node``): a host on another node ships its journal there
        (see ``journal_keeper``), since its own disk may go with its node."""
        _collector.tune()
        self.tools = tools
        self.mcp = mcp
        self.host_id = host_id
        shipped = keeper if keeper is not None and not _on_node(store_node) else None
        name = f"{host_id}-{uuid.uuid4().hex[:8]}"
        shards = len(store.shards) if isinstance(store, ShardedStore) else 1
        # a file per store shard: each shard applies the turns of its own agents
        self._journals = HostJournals(journal_dir, name, shipped, shards) if journal_dir is not None else None
        self._turns_running = 0
        self._turns_queued = 0  # turns waiting for their agent or running: the host's queue depth
        self._gauges = host_gauges(lambda: (self._turns_queued, len(self.agents)))
        self._directory_epoch: str | None = None  # the directory incarnation that last took this host over
        self.store = store
        self.archive = archive
        self._llm = llm
        self._limits = LimitsView(limiter) if limiter is not None else None
        self.messenger = AgentMessenger(router, agent_call_timeout_s) if router is not None else None
        self.agents: dict[str, _Hosted] = {}
        self._loading: dict[str, asyncio.Task[_Hosted]] = {}
        self._custom_tools: dict[str, ToolFunction | None] = {}
        self._mcp_servers: dict[str, MCPServer] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._files = _AgentFiles(store, archive)
        self._llm_http_handler = False
        if llm is None:  # import litellm (~4 s) now, off the event loop, not in the first turn
            from letta_ray.llm import use_litellm_http_handler

            self._llm_http_handler = use_litellm_http_handler()
            threading.Thread(target=_warm_litellm, name="litellm-import", daemon=True).start()

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            from letta_ray.llm import LiteLLM  # litellm is heavy: import on first use

            self._llm = LocalModelLLM(LiteLLM())
        if self._limits is not None and not isinstance(self._llm, LimitedLLM):
            self._llm = LimitedLLM(self._llm, self._limits)
        return self._llm

    # ---------------------------------------------------------------- lifecycle of agents

    @one_pickle
    async def create_agents(self, states: list[AgentState], initial: list[list[Message]] | None = None,
                            history: list[list[Message]] | None = None,
                            new_blocks_shared: list[str] | None = None, epoch: str | None = None) -> list[str]:
        """Persist new agents (with optional initial messages: their context window) and host
        them; ``history`` are older messages of theirs, stored but out of context.

        ``new_blocks_shared`` is given when none of the agents' blocks is stored yet: it lists
        those the new agents share among themselves. Such agents cannot clash with anything
        stored, so with journals they are journaled, as a turn is (one fsync, the store
        applies them behind, before any read), instead of waiting for a DuckDB transaction.

        ``epoch``: the agents were placed here by ``Directory.reserve`` of that directory
        incarnation. A later one that has since taken this host over does not know of the
        reservation (it might place the agents elsewhere too): StalePlacement, create nothing."""
        if epoch is not None:
            if self._directory_epoch not in (None, epoch):
                raise StalePlacement(f"{self.host_id} was taken over by a newer directory")
            self._directory_epoch = epoch
        initial = initial or [[] for _ in states]
        history = history or [[] for _ in states]
        pairs = list(zip(states, initial, history, strict=True))
        messages = [[*old, *first] for _, first, old in pairs]
        self._gauges.start()
        if new_blocks_shared is not None and self._journals is not None:
            await self._journals.write_created(states, messages)
        else:
            await self.store.create_agents(states, messages)
        if new_blocks_shared is not None:
            shared = set(new_blocks_shared)
        else:
            shared = set(await self.store.shared_blocks([b.id for s in states for b in s.blocks]))
        for state, messages, old in pairs:
            self.agents[state.id] = _Hosted(state, list(messages),
                                            MemoryStats(recall_messages=len(messages) + len(old)),
                                            shared={b.id for b in state.blocks} & shared)
        return [s.id for s in states]

    async def _load(self, agent_id: str) -> _Hosted:
        state: AgentState = await self.store.get_agent(agent_id)
        context: list[Message] = await self.store.get_messages(state.message_ids) if state.message_ids else []
        recall = await self.store.count_messages(agent_id)
        archival = await self.archive.count(state.archive_owners) if self.archive is not None else 0
        return _Hosted(state, context, MemoryStats(recall_messages=recall, archival_passages=archival))

    async def _get(self, agent_id: str) -> _Hosted:
        hosted = self.agents.get(agent_id)
        if hosted is not None:
            return hosted
        task = self._loading.get(agent_id)
        if task is None:  # one load per agent even when many calls arrive at once
            task = asyncio.ensure_future(self._load(agent_id))
            self._loading[agent_id] = task
        try:
            hosted = await task
        finally:
            self._loading.pop(agent_id, None)
        return self.agents.setdefault(agent_id, hosted)

    async def cancel(self, agent_id: str, run_ids: list[str] | None = None,
                     conversation_id: str | None = None) -> list[str]:
        """Stop the agent's running turn (if it is one of ``run_ids``, or in ``conversation_id``,
        when given): it ends with stop reason "cancelled" before its next LLM call, dropping a
        call under way; the steps it finished are kept. Returns the ids of the runs cancelled."""
        hosted = self.agents.get(agent_id)
        if hosted is None or hosted.cancel is None or hosted.run_id is None:
            return []
        if run_ids is not None and hosted.run_id not in run_ids:
            return []
        if conversation_id is not None and hosted.conversation_id != conversation_id:
            return []
        hosted.cancel.set()
        return [hosted.run_id]

    async def drop(self, agent_id: str) -> bool:
        """Stop hosting an agent (after a delete, or to move it); waits for its turn to end."""
        hosted = self.agents.get(agent_id)
        if hosted is None:
            return False
        async with hosted.lock:
            self.agents.pop(agent_id, None)
        return True

    # ---------------------------------------------------------------- turns

    async def send(self, agent_id: str, messages: list[MessageCreate | Message], *, max_steps: int | None = None,
                   run_id: str | None = None, client_tools: list[ClientTool] | None = None,
                   llm_config: LLMConfig | None = None, conversation_id: str | None = None) -> LettaResponse:
        """Run one turn of the agent on ``messages``; returns once it is persisted. ``llm_config``
        replaces the agent's model for this turn only (Letta's ``override_model``); with
        ``conversation_id`` the turn runs in that conversation's context window."""
        return await self._send(agent_id, messages, max_steps=max_steps, run_id=run_id, client_tools=client_tools,
                                llm_config=llm_config, conversation_id=conversation_id)

    @one_pickle
    async def send_many(self, turns: list[tuple[str, list[MessageCreate | Message], str | None]], *,
                        max_steps: int | None = None, concurrency: int = 256) -> list[TurnResult]:
        """One turn for each ``(agent_id, messages, run_id)``, run concurrently (at most
        ``concurrency`` at once; the same agent's turns still run in the order given).

        One call carries a whole batch, so a simulation round costs a Ray call per host
        rather than per agent. A turn that raises gives a result with its error; the
        others are unaffected.
        """
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(agent_id: str, messages: list[MessageCreate | Message], run_id: str | None) -> TurnResult:
            async with gate:
                started = time.perf_counter()
                try:
                    response = await self._send(agent_id, messages, max_steps=max_steps, run_id=run_id)
                except Exception as exc:
                    log.debug("turn of %s failed", agent_id, exc_info=True)
                    return TurnResult(agent_id, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
                return TurnResult(agent_id, response, None, time.perf_counter() - started)

        return list(await asyncio.gather(*(one(*turn) for turn in turns)))

    async def send_stream(self, agent_id: str, messages: list[MessageCreate | Message], *,
                          max_steps: int | None = None, run_id: str | None = None,
                          client_tools: list[ClientTool] | None = None,
                          llm_config: LLMConfig | None = None, conversation_id: str | None = None,
                          stream_tokens: bool = False) -> AsyncIterator[Any]:
        """Like ``send``, yielding each event as it happens, then the stop reason and usage;
        with ``stream_tokens`` the model's text and tool-call arguments piece by piece as the
        LLM streams them (see ``agent.TokenStream``).

        Call it as a Ray streaming generator (``.options(num_returns="streaming")``).
        The final stop reason is yielded only after the turn is persisted.
        """
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        async def run() -> LettaResponse:
            try:
                return await self._send(agent_id, messages, max_steps=max_steps, run_id=run_id, on_event=queue.put,
                                        client_tools=client_tools, llm_config=llm_config,
                                        conversation_id=conversation_id, stream_tokens=stream_tokens)
            finally:
                await queue.put(done)

        task = asyncio.ensure_future(run())
        while (item := await queue.get()) is not done:
            yield item
        response = await task  # raises the turn's error, if any, to the consumer
        yield response.stop_reason
        yield response.usage

    async def _send(self, agent_id: str, messages: list[MessageCreate | Message], *, max_steps: int | None,
                    run_id: str | None, on_event: EventSink | None = None,
                    client_tools: list[ClientTool] | None = None, llm_config: LLMConfig | None = None,
                    conversation_id: str | None = None, stream_tokens: bool = False) -> LettaResponse:
        if not messages:
            raise InvalidInputError("send needs at least one message")
        hosted = await self._get(agent_id)
        run_id = run_id or new_id("run")  # every turn is a run, as in Letta
        created_at, started = utcnow(), time.perf_counter_ns()
        self._gauges.start()
        async with self._queued(), hosted.lock, self._running_turn():
            if agent_id not in self.agents:  # deleted while we waited our turn
                raise NotFoundError("agent", agent_id)
            thread = await self._thread(hosted, conversation_id)
            otid = next((m.otid for m in messages if m.otid), None)
            if otid is not None and (answered := await self._answered(hosted, thread.context, otid)) is not None:
                if on_event is not None:
                    for event in answered.messages:
                        await on_event(event)
                return answered
            hosted.run_id, hosted.cancel, hosted.conversation_id = run_id, asyncio.Event(), conversation_id
            try:
                toolset = await self._toolset(hosted.state)
                if hosted.shared is None:
                    hosted.shared = await self._shared_blocks(hosted.state)
                state = thread.state
                if llm_config is not None:
                    state = state.model_copy(update={"llm_config": llm_config})
                result = await step(state, thread.context, messages, self._deps(hosted), toolset=toolset,
                                    stats=hosted.stats, max_steps=max_steps, run_id=run_id, on_event=on_event,
                                    cache=thread.cache, client_tools=client_tools, cancel=hosted.cancel,
                                    stream_tokens=stream_tokens)
                if llm_config is not None:  # the override was for this turn only
                    result.state = result.state.model_copy(update={"llm_config": hosted.state.llm_config})
            finally:
                hosted.run_id = hosted.cancel = hosted.conversation_id = None
            conversation = thread.end(result)
            sleeper = result.state.metadata.get(SLEEPTIME_AGENT)
            if sleeper:  # count main-agent turns in the persisted state, so a restart keeps the rhythm
                turns = int(result.state.metadata.get(SLEEPTIME_TURNS, 0)) + 1
                result.state.metadata = {**result.state.metadata, SLEEPTIME_TURNS: turns}
            reason = result.stop_reason.stop_reason
            result.usage.run_ids = [run_id]
            run = {"id": run_id, "agent_id": agent_id, "status": _RUN_STATUS.get(reason, "completed"),
                   "stop_reason": reason, "created_at": created_at.isoformat(), "completed_at": utcnow().isoformat(),
                   "total_duration_ns": time.perf_counter_ns() - started, "usage": result.usage.model_dump(),
                   "conversation_id": conversation_id}
            await self._persist_turn(result.state, result.new_messages, result.edited_blocks, result.steps, run,
                                     conversation)
            TurnMetrics.shared().record(state.llm_config.model, result)
            hosted.state = result.state
            if conversation is None:
                hosted.context = result.context
            hosted.stats.recall_messages += len(result.new_messages)
            hosted.stats.archival_passages += sum(
                1 for m in result.new_messages
                if m.role == "tool" and m.name == "archival_memory_insert" and m.tool_status == "success"
            )
            hosted.turns += 1
            hosted.last_used = time.monotonic()
            if sleeper and turns % int(result.state.metadata.get(SLEEPTIME_FREQUENCY, 5)) == 0:
                self._wake_sleeptime(result.state, sleeper, through=result.new_messages[-1])
            response = result.response()
            if otid is not None:
                hosted.replies[otid] = response
                while len(hosted.replies) > _REPLIES_KEPT:
                    hosted.replies.popitem(last=False)
            return response

    async def _answered(self, hosted: _Hosted, context: list[Message], otid: str) -> LettaResponse | None:
        """The reply to a message with this ``otid`` already sent and answered, if any.

        Clients retry a message whose reply they did not get (Letta's ``otid`` is the
        idempotency key). The reply is kept for the latest turns; after a restart of the
        host it is rebuilt from the turn's messages in the context window and its run."""
        if (reply := hosted.replies.get(otid)) is not None:
            return reply
        sent = next((m for m in reversed(context) if m.otid == otid and m.run_id), None)
        if sent is None:
            return None
        turn = [m for m in context if m.run_id == sent.run_id]
        try:
            run = await self.store.get_run(sent.run_id)
        except NotFoundError:
            run = {}
        events = [e for m in turn for e in to_events(m, uses_send_message=hosted.state.uses_send_message)]
        usage = UsageStatistics.model_validate(run.get("usage") or {"run_ids": [sent.run_id]})
        return LettaResponse(messages=events, stop_reason=StopReason(stop_reason=run.get("stop_reason", "end_turn")),
                             usage=usage)

    # ---------------------------------------------------------------- sleep-time agents

    def _wake_sleeptime(self, main: AgentState, sleeper_id: str, through: Message) -> None:
        """Run the sleep-time agent in the background on the transcript since its last run,
        up to and including ``through`` (turns that land while it works wait for the next run)."""
        if self.messenger is None:
            log.warning("agent %s has a sleep-time agent but this host cannot message agents", main.id)
            return
        task = asyncio.ensure_future(self._sleeptime_run(main, sleeper_id, through))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sleeptime_run(self, main: AgentState, sleeper_id: str, through: Message) -> None:
        run = {"id": new_id("run"), "agent_id": sleeper_id, "main_agent_id": main.id, "status": "running",
               "kind": "sleeptime", "created_at": utcnow().isoformat()}
        await self.store.upsert_run(run["id"], run)
        try:
            history: list[Message] = await self.store.list_messages(
                main.id, limit=None, after=main.metadata.get(SLEEPTIME_LAST_MESSAGE),
                end=through.created_at)
            text = transcript(history, char_budget=60_000)
            prompt = (f"[Transcript of agent {main.id} since your last run]\n{text}\n\n"
                      "Update the memory blocks you share with it: record what is new, merge duplicates, "
                      "drop what is stale. Call memory_finish_edits when done.")
            response = await self.messenger.router.deliver(
                sleeper_id, MessageCreate(content=prompt, sender_id=main.id), wait=True, run_id=run["id"])
            assert response is not None
            run.update(status="completed", stop_reason=response.stop_reason.stop_reason,
                       message_count=len(response.messages), usage=response.usage.model_dump())
            hosted = self.agents.get(main.id)
            if hosted is not None:  # remember where this run got to (persisted with the next turn)
                hosted.state.metadata = {**hosted.state.metadata, SLEEPTIME_LAST_MESSAGE: through.id}
        except Exception as exc:
            log.exception("sleep-time run of %s failed", sleeper_id)
            run.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        run["completed_at"] = utcnow().isoformat()
        await self.store.upsert_run(run["id"], run)

    async def _persist_turn(self, state: AgentState, messages: list[Message], edited: list[Block],
                            steps: list[StepRecord], run: dict[str, Any] | None,
                            conversation: Conversation | None = None) -> None:
        """Make a turn durable before its reply goes out."""
        if self._journals is None:
            await self.store.commit_step(state, messages, edited, steps, run, conversation)
            return
        await self._journals.write(state, messages, edited, steps, run, conversation,
                                   alone=self._turns_running <= 1)

    @contextlib.asynccontextmanager
    async def _queued(self) -> AsyncIterator[None]:
        self._turns_queued += 1
        try:
            yield
        finally:
            self._turns_queued -= 1

    @contextlib.asynccontextmanager
    async def _running_turn(self) -> AsyncIterator[None]:
        self._turns_running += 1
        try:
            yield
        finally:
            self._turns_running -= 1

    async def _shared_blocks(self, state: AgentState) -> set[str]:
        return set(await self.store.shared_blocks([b.id for b in state.blocks]))

    async def _toolset(self, state: AgentState) -> Toolset:
        tools: list[ToolFunction] = []
        for name in state.tools:
            if name in BASE_TOOLS:
                tools.append(BASE_TOOLS[name])
                continue
            if name not in self._custom_tools:  # cached until the directory says tools changed
                try:
                    tool = await self.store.get_tool_by_name(name)
                    run = self._run_on_mcp_server if server_of(tool) else self._run_in_sandbox
                    self._custom_tools[name] = sandboxed_tool(tool, functools.partial(run, tool))
                except NotFoundError:
                    self._custom_tools[name] = None  # detached or deleted: the model doesn't see it
            function = self._custom_tools[name]
            if function is not None:
                tools.append(function)
        return Toolset(tools)

    async def _run_in_sandbox(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        """A user tool's call, in the sandbox of its environment, with the agent's secrets."""
        if self.tools is None:
            return ToolOutcome(False, f"Error running {tool.name}: this host has no tool sandbox")
        try:
            sandbox = await self.tools.get(tool.pip_requirements)
            result = await sandbox.call(
                tool.source_code or "", tool.name, args, env=ctx.agent.secrets,
                agent_state=ctx.agent.model_dump(mode="json") if tool.takes_agent_state else None,
                return_char_limit=tool.return_char_limit)
        except (ToolDefinitionError, SandboxError) as exc:
            return ToolOutcome(False, f"Error running {tool.name}: {exc}")
        return ToolOutcome(result.ok, result.message)

    async def _run_on_mcp_server(self, tool: Tool, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        """An MCP tool's call, through its server's actor (the same one for every agent)."""
        server_id = server_of(tool)
        if self.mcp is None or server_id is None:
            return ToolOutcome(False, f"Error running {tool.name}: this host cannot reach MCP servers")
        server = self._mcp_servers.get(server_id)
        if server is None:
            try:
                server = self._mcp_servers[server_id] = await self.store.get_mcp_server(server_id)
            except NotFoundError:
                return ToolOutcome(False, f"Error running {tool.name}: its MCP server was deleted")
        ok, text = await self.mcp.call_tool(server, tool.name, args)
        return ToolOutcome(ok, clip(text, tool.return_char_limit))

    async def forget_shared(self, agent_ids: list[str]) -> None:
        """These agents' blocks may have become shared: re-check at their next turn."""
        for agent_id in agent_ids:
            hosted = self.agents.get(agent_id)
            if hosted is not None:
                hosted.shared = None

    async def forget_tools(self) -> None:
        """Drop the cached custom tools (the directory's call after any tool write)."""
        self._custom_tools.clear()
        self._mcp_servers.clear()

    # ---------------------------------------------------------------- state

    async def get_state(self, agent_id: str) -> AgentState:
        """The agent's state, with shared blocks as the store has them now."""
        hosted = await self._get(agent_id)
        if hosted.shared is None:
            hosted.shared = await self._shared_blocks(hosted.state)
        if hosted.shared:
            fresh = {b.id: b for b in await self.store.get_blocks(sorted(hosted.shared))}
            newer = [fresh[b.id] for b in hosted.state.blocks
                     if b.id in fresh and fresh[b.id].updated_at > b.updated_at]
            for block in newer:
                hosted.state = hosted.state.replace_block(block)
        return hosted.state

    async def context(self, agent_id: str) -> list[Message]:
        return list((await self._get(agent_id)).context)

    async def update_block(self, agent_id: str, label: str, *, value: str | None = None, limit: int | None = None,
                           description: str | None = None, read_only: bool | None = None) -> Block:
        """Edit a block through the API (not the model): typed errors, waits for the agent's turn."""
        hosted = await self._get(agent_id)
        async with hosted.lock:
            block = hosted.state.block(label)
            if block is None:
                raise NotFoundError("block", label)
            changes: dict[str, Any] = {k: v for k, v in (("value", value), ("limit", limit),
                                       ("description", description), ("read_only", read_only)) if v is not None}
            updated = block.updated(**changes)
            state = hosted.state.replace_block(updated)
            await self.store.upsert_agent(state)
            hosted.state = state
            return updated

    async def reload(self, agent_id: str) -> bool:
        """Re-read a hosted agent from the stores after its blocks changed elsewhere.

        For attach, detach or a shared-block edit made straight in the store: waits for
        the agent's turn so the change lands between turns. False if it is not hosted
        here (it will load the new state when next touched).
        """
        hosted = self.agents.get(agent_id)
        if hosted is None:
            return False
        async with hosted.lock:
            if self.agents.get(agent_id) is not hosted:
                return False
            state: AgentState = await self.store.get_agent(agent_id)
            if state.message_ids != [m.id for m in hosted.context]:
                hosted.context = await self.store.get_messages(state.message_ids) if state.message_ids else []
            hosted.state = state
            hosted.shared = None  # attachments may have changed: recompute at the next turn
        return True

    async def modify(self, agent_id: str, changes: dict[str, Any]) -> AgentState:
        unknown = sorted(set(changes) - MODIFIABLE)
        if unknown:
            raise InvalidInputError(f"cannot modify {unknown}; modifiable fields: {sorted(MODIFIABLE)}")
        hosted = await self._get(agent_id)
        async with hosted.lock:
            merged = {**hosted.state.model_dump(), **changes, "updated_at": utcnow()}
            try:
                state = AgentState.model_validate(merged)
            except ValueError as exc:
                raise InvalidInputError(f"invalid agent change: {exc}") from exc
            await self.store.upsert_agent(state)
            hosted.state = state
            return state

    async def reset_messages(self, agent_id: str, add_default_initial_messages: bool = False) -> AgentState:
        """Clear the in-context buffer (history stays in recall); optionally start it again
        with Letta's default first messages."""
        hosted = await self._get(agent_id)
        async with hosted.lock:
            fresh = default_initial_messages(hosted.state, utcnow()) if add_default_initial_messages else []
            state = hosted.state.model_copy(update={"message_ids": [m.id for m in fresh], "summary": None})
            if fresh:
                await self._persist_turn(state, fresh, [], [], None)
                hosted.stats.recall_messages += len(fresh)
            else:
                await self.store.upsert_agent(state)
            hosted.state, hosted.context = state, fresh
            return state

    async def compact(self, agent_id: str, conversation_id: str | None = None) -> dict[str, Any]:
        """Summarise the older part of the agent's (or a conversation's) context now (see
        ``letta_ray.agent.compact``); returns the summary and the number of in-context
        messages before and after."""
        hosted = await self._get(agent_id)
        async with hosted.lock:
            thread = await self._thread(hosted, conversation_id)
            before = len(thread.context)
            done = await compact(thread.state, thread.context, self._deps(hosted), stats=hosted.stats,
                                 cache=thread.cache)
            if done.evicted_ids and thread.conversation is not None:
                await self.store.upsert_conversation(thread.conversation.model_copy(update={
                    "message_ids": done.state.message_ids, "summary": done.summary, "updated_at": utcnow()}))
            elif done.evicted_ids:
                await self.store.upsert_agent(done.state)
                hosted.state, hosted.context = done.state, done.context
            return {"summary": done.summary, "num_messages_before": before, "num_messages_after": len(done.context)}

    async def _thread(self, hosted: _Hosted, conversation_id: str | None) -> _Thread:
        """The context a turn runs in: the agent's own, or a conversation's (its messages and
        summary in the agent's state, for the turn)."""
        if conversation_id is None:
            return _Thread(hosted.state, hosted.context, hosted.cache, None)
        conversation = await self.store.get_conversation(conversation_id)
        if conversation.agent_id != hosted.state.id:
            raise NotFoundError("conversation of this agent", conversation_id)
        context = await self.store.get_messages(conversation.message_ids) if conversation.message_ids else []
        state = hosted.state.model_copy(update={"message_ids": conversation.message_ids,
                                                "summary": conversation.summary})
        return _Thread(state, context, MessageCache(), conversation, hosted.state.message_ids, hosted.state.summary)

    async def system_prompt(self, agent_id: str) -> str:
        """The agent's system message as its next step will send it (memory rendered in)."""
        hosted = await self._get(agent_id)
        state = await self.get_state(agent_id)
        stats = dataclasses.replace(hosted.stats, last_modified=Memory(state.blocks).last_modified())
        return join_system_prompt(*system_prompt_parts(state.system, state.blocks, stats, files=state.open_files))

    async def preview(self, agent_id: str, messages: list[MessageCreate | Message],
                      client_tools: list[ClientTool] | None = None) -> dict[str, Any]:
        """The LLM request a turn on ``messages`` would start with; nothing runs or changes."""
        hosted = await self._get(agent_id)
        state = await self.get_state(agent_id)
        return preview_request(state, hosted.context, messages, self._deps(hosted),
                               toolset=await self._toolset(state), stats=hosted.stats, client_tools=client_tools)

    def _deps(self, hosted: _Hosted) -> StepDeps:
        return StepDeps(llm=self.llm, archive=self.archive, recall=self.store, messenger=self.messenger,
                        blocks=_SharedBlocks(self.store, hosted.shared or set()), files=self._files)

    # ---------------------------------------------------------------- introspection

    async def hosted(self, epoch: str | None = None) -> list[str]:
        """The agents hosted here; ``epoch``: the directory incarnation taking this host over."""
        if epoch is not None:
            self._directory_epoch = epoch
        return list(self.agents)

    async def info(self) -> dict[str, Any]:
        import os

        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return {"host_id": self.host_id, "pid": os.getpid(), "node_id": node, "agents": len(self.agents),
                "busy": sum(1 for h in self.agents.values() if h.lock.locked()),
                "llm_http_handler": "litellm" if self._llm_http_handler else "openai-sdk",
                "gc": _collector.stats()}

    async def set_llm_limits(self, version: int, limits: dict[str, LLMLimit]) -> None:
        """The directory's push of the cluster's new LLM limits."""
        if self._limits is not None:
            self._limits.update(version, limits)

    async def ping(self) -> str:
        return self.host_id


@dataclass
class _Thread:
    """Where a turn runs (see ``AgentHost._thread``): the state and context it sees, and for a
    conversation, the agent's own in-context ids and summary to give back after it."""

    state: AgentState
    context: list[Message]
    cache: MessageCache
    conversation: Conversation | None = None
    agent_message_ids: list[str] = field(default_factory=list)
    agent_summary: str | None = None

    def end(self, result: StepResult) -> Conversation | None:
        """After the turn: a conversation takes the new context and summary (its messages are
        marked as its own); the agent's state keeps its own. Returns the conversation, if any."""
        if self.conversation is None:
            return None
        for message in result.new_messages:
            message.conversation_id = self.conversation.id
        now = utcnow()
        conversation = self.conversation.model_copy(update={
            "message_ids": result.state.message_ids, "summary": result.state.summary, "updated_at": now,
            "last_message_at": now})
        result.state = result.state.model_copy(update={"message_ids": self.agent_message_ids,
                                                       "summary": self.agent_summary})
        return conversation


class _SharedBlocks:
    """The BlockStore of one agent's turn: its shared blocks live at the metadata store."""

    def __init__(self, store: MetadataStoreHandle, shared: set[str]) -> None:
        self.store = store
        self.shared = shared

    async def fresh(self, blocks: list[Block]) -> list[Block]:
        ids = [b.id for b in blocks if b.id in self.shared]
        return await self.store.get_blocks(ids) if ids else []

    async def apply(self, block: Block, op: str, args: dict[str, Any]) -> Block | None:
        if block.id not in self.shared:
            return None
        return await self.store.edit_block(block.id, op, args)


class _AgentFiles:
    """The file tools' ``Files``: files' text at the metadata store, their chunks in the archive."""

    def __init__(self, store: MetadataStoreHandle, archive: ArchiveHandle | None) -> None:
        self.store = store
        self.archive = archive

    async def list_files(self, folder_ids: list[str]) -> list[tuple[FileMetadata, str]]:
        found = []
        for folder_id in folder_ids:
            try:
                folder = await self.store.get_folder(folder_id)
            except NotFoundError:  # deleted since it was attached
                continue
            found += [(f, folder.name) for f in await self.store.list_files(folder_id, limit=None)]
        return found

    async def read(self, file_id: str) -> str:
        return await self.store.get_file_content(file_id)

    async def search(self, file_ids: list[str], query: str, limit: int) -> list[Passage]:
        if self.archive is None or not file_ids:
            return []
        return await self.archive.search(file_ids, query, top_k=limit)


class HostHandle(ActorFacade):
    """An agent host's methods, awaited (see ``AgentHost``)."""

    create_agents = remote_method(AgentHost.create_agents)
    create_agents_blocking = blocking_method(AgentHost.create_agents)  # Client.create_agent's fast path
    drop = remote_method(AgentHost.drop)
    cancel = remote_method(AgentHost.cancel)
    send = remote_method(AgentHost.send)
    send_many = remote_method(AgentHost.send_many)
    send_stream = streaming_method(AgentHost.send_stream)
    get_state = remote_method(AgentHost.get_state)
    context = remote_method(AgentHost.context)
    update_block = remote_method(AgentHost.update_block)
    reload = remote_method(AgentHost.reload)
    modify = remote_method(AgentHost.modify)
    reset_messages = remote_method(AgentHost.reset_messages)
    compact = remote_method(AgentHost.compact)
    system_prompt = remote_method(AgentHost.system_prompt)
    preview = remote_method(AgentHost.preview)
    forget_shared = remote_method(AgentHost.forget_shared)
    forget_tools = remote_method(AgentHost.forget_tools)
    set_llm_limits = remote_method(AgentHost.set_llm_limits)
    hosted = remote_method(AgentHost.hosted)
    info = remote_method(AgentHost.info)
    ping = remote_method(AgentHost.ping)


def pair_sleeptime(main: AgentState, sleeper: AgentState, frequency: int, description: str) -> dict[str, Any]:
    """Make ``sleeper`` the sleep-time agent of ``main`` (in both agents' metadata; the host
    wakes it every ``frequency`` turns of ``main``); returns the doc of their group, to store."""
    group_id = new_id("group")
    main.metadata = {**main.metadata, SLEEPTIME_AGENT: sleeper.id, SLEEPTIME_FREQUENCY: frequency,
                     "group_id": group_id}
    sleeper.metadata = {**sleeper.metadata, "main_agent_id": main.id}
    return {"id": group_id, "agent_ids": [sleeper.id], "description": description,
            "manager_config": {"manager_type": "sleeptime", "manager_agent_id": main.id,
                               "sleeptime_agent_frequency": frequency},
            "shared_block_ids": [b.id for b in main.blocks]}


class StalePlacement(RuntimeError):
    """Agents reserved on a host by a directory that has since been replaced (see
    ``AgentHost.create_agents``): place them again."""


class HostJournals:
    """A host's journals, one per store shard: files ``<name>-<part>.log`` in each shard's
    journal folder (shipped to a keeper on the store's node, as ``shard-K/<file>`` past shard
    0, if ``keeper`` is set); a file past JOURNAL_ROTATE_BYTES is followed by the next part
    (the store deletes applied parts). One writer for all: the turns that arrive while a
    write is under way share the next one, whichever shards they go to."""

    def __init__(self, root: str | Path, name: str, keeper: KeeperHandle | None, shards: int) -> None:
        self.root, self.name, self.keeper, self.shards = Path(root), name, keeper, shards
        self.parts = [0] * shards
        self.files = [self._open(k) for k in range(shards)]
        self.path = self.root  # for the writer's messages
        self.remote = keeper is not None
        self.seq = 0
        self.writer = JournalWriter(lambda: self, lambda _: self._rotate_if_full(), "host-journal")

    async def write(self, state: AgentState, messages: list[Message], edited: list[Block], steps: list[StepRecord],
                    run: dict[str, Any] | None, conversation: Conversation | None, *, alone: bool) -> None:
        """Make one turn durable; returns once it is. ``alone``: no other turn is in flight."""
        self.seq += 1
        record = TurnRecord(self.seq, state, messages, list(edited), steps, run, conversation)
        if alone and not self.writer.busy and not self.remote:
            # The only turn in flight: write it here (an fsync, ~0.2 ms) rather than pay a
            # thread hop and a loop round trip (~1 ms) for a batch of one.
            try:
                self.append([record])
            except OSError as exc:
                raise StorageError(f"cannot write the journal in {self.root}: {exc}") from exc
            self._rotate_if_full()
            return
        await self.writer.write(record)  # several turns in flight: they share fsyncs

    async def write_created(self, states: list[AgentState], messages: list[list[Message]]) -> None:
        """Make new agents durable (``TurnRecord.created``); returns once they are."""
        records = []
        for state, first in zip(states, messages, strict=True):
            self.seq += 1
            records.append(TurnRecord(self.seq, state, first, [], created=True))  # hosted once written
        if len(records) <= 8 and not self.writer.busy and not self.remote:
            try:  # as a turn alone in flight: here, not through the writer's thread
                self.append(records)
            except OSError as exc:
                raise StorageError(f"cannot write the journal in {self.root}: {exc}") from exc
            self._rotate_if_full()
            return
        await asyncio.gather(*(self.writer.write(record) for record in records))  # one batch

    def _by_shard(self, records: list[TurnRecord]) -> dict[int, list[TurnRecord]]:
        groups: dict[int, list[TurnRecord]] = {}
        for record in records:
            groups.setdefault(shard_of(record.state.id, self.shards), []).append(record)
        return groups

    def append(self, records: list[TurnRecord]) -> None:
        """Local files: each shard's records, fsync'ed (the writer's thread)."""
        for k, group in self._by_shard(records).items():
            self.files[k].append(group)  # type: ignore[union-attr]

    async def append_async(self, records: list[TurnRecord]) -> None:
        """Shipped files: each shard's records to the keeper, at once."""
        await asyncio.gather(*(self.files[k].append_async(group)  # type: ignore[union-attr]
                               for k, group in self._by_shard(records).items()))

    def _rotate_if_full(self) -> None:
        for k, journal in enumerate(self.files):
            if journal.size() > JOURNAL_ROTATE_BYTES:
                journal.close()
                self.parts[k] += 1
                self.files[k] = self._open(k)

    def _open(self, shard: int) -> Journal | ShippedJournal:
        file_name = f"{self.name}-{self.parts[shard]:06d}.log"
        if self.keeper is not None:
            return ShippedJournal(self.keeper, (f"shard-{shard}/" if shard else "") + file_name)
        return Journal(journal_folder(self.root, shard) / file_name)
