"""The agent step: one function that runs a turn of the MemGPT loop.

``step`` takes the agent's state, its in-context messages, what arrived, and the
dependencies; it compiles the context, calls the LLM, runs tools, chains steps while
the model asks to, and returns everything new. It holds no state and does no I/O of its
own: the caller (an actor, a test) keeps the state and persists what comes back.

Both of Letta's turn styles run here: ``memgpt_v2_agent`` (replies via send_message,
other tools continue only on request_heartbeat) and ``letta_v1_agent`` (plain text ends
the turn, any tool call continues).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic_core import from_json

from letta_ray.base_tools import TERMINAL_TOOLS
from letta_ray.context import (
    SUMMARY_TARGET,
    CompiledContext,
    MessageCache,
    choose_cut,
    compile_context,
    needs_summary,
    summarise,
)
from letta_ray.deps import LLMDelta, LLMResponse, StepDeps, delta_kwargs
from letta_ray.errors import ConflictError, InvalidInputError, LLMError
from letta_ray.memory import Memory, MemoryStats
from letta_ray.messages import (
    ApprovalDecision,
    AssistantMessage,
    LettaMessage,
    LettaResponse,
    Message,
    MessageCreate,
    ReasoningMessage,
    StepRecord,
    StopReason,
    StopReasonType,
    ToolCall,
    ToolCallEvent,
    ToolCallMessage,
    UsageStatistics,
    to_events,
)
from letta_ray.schemas import AgentState, Block, ClientTool, PendingToolCall, new_id, utcnow
from letta_ray.tool_rules import ToolRuleSolver
from letta_ray.tools import ToolContext, ToolFunction, ToolOutcome, Toolset, openai_schema, run_tool

EventSink = Callable[[LettaMessage], Awaitable[None]]

# Stop after this many consecutive calls to tools that don't exist or aren't allowed.
MAX_INVALID_TOOL_CALLS = 3


@dataclass
class StepResult:
    """Everything a turn produced. The caller persists ``new_messages`` and ``state``."""

    state: AgentState
    context: list[Message]
    new_messages: list[Message]
    events: list[LettaMessage]
    stop_reason: StopReason
    usage: UsageStatistics
    edited_blocks: list[Block] = field(default_factory=list)
    evicted_ids: list[str] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)

    def response(self) -> LettaResponse:
        return LettaResponse(messages=self.events, stop_reason=self.stop_reason, usage=self.usage)


def local_time_text(moment: datetime, timezone: str) -> str:
    """A time as the agent is shown it, in its own time zone."""
    return moment.astimezone(zoneinfo.ZoneInfo(timezone)).strftime("%Y-%m-%d %I:%M:%S %p %Z%z")


def tool_result_text(outcome: ToolOutcome, when: str) -> str:
    """The JSON a tool result carries back to the model, as Letta writes it."""
    return json.dumps(
        {"status": "OK" if outcome.ok else "Failed", "message": outcome.message, "time": when},
        ensure_ascii=False,
    )


class _Turn:
    """The mutable bookkeeping of one turn; ``step`` below is its only user."""

    def __init__(self, state: AgentState, context: list[Message], deps: StepDeps, toolset: Toolset,
                 stats: MemoryStats, run_id: str | None, on_event: EventSink | None,
                 cache: MessageCache | None = None, client_tools: list[ClientTool] | None = None) -> None:
        self.cache = cache or MessageCache()
        self.state = state
        self.context = list(context)
        self.deps = deps
        # Tools the caller runs, for this turn only; one of the agent's of the same name gives way.
        self.client = {t.name for t in client_tools or []}
        if client_tools:
            toolset = Toolset([*(toolset.get(n) for n in toolset.names() if n not in self.client),  # type: ignore[misc]
                               *(ToolFunction(tool=t.as_tool(), fn=None, takes_context=False)
                                 for t in client_tools)])
        self.toolset = toolset
        self.stats = stats
        self.run_id = run_id
        self.on_event = on_event
        self.memory = Memory(state.blocks)
        self.solver = ToolRuleSolver(list(state.tool_rules))
        self.usage = UsageStatistics(run_ids=[run_id] if run_id else None)
        self.new_messages: list[Message] = []
        self.events: list[LettaMessage] = []
        self.evicted_ids: list[str] = []
        self.tool_state: dict[str, object] = {}
        self.steps: list[StepRecord] = []
        self.stream_tokens = False

    async def add(self, message: Message, streamed: frozenset[str] = frozenset()) -> None:
        """Append a message to the turn; its events go to ``on_event`` except those of the
        kinds in ``streamed`` (already sent token by token, ``TokenStream``)."""
        self.context.append(message)
        self.new_messages.append(message)
        for event in to_events(message, uses_send_message=self.state.uses_send_message):
            self.events.append(event)
            if self.on_event is not None and event.message_type not in streamed:
                await self.on_event(event)

    def now_text(self) -> str:
        return local_time_text(self.deps.clock(), self.state.timezone)

    def callable(self) -> list[str]:
        """The names of the tools the model may call this turn: the agent's, then the caller's."""
        attached = [n for n in self.state.tools if n in self.toolset and n not in self.client]
        return attached + sorted(self.client)

    def tool_schemas(self) -> list[dict[str, object]]:
        schemas = []
        for name in self.solver.allowed(self.callable()):
            tf = self.toolset.get(name)
            assert tf is not None
            heartbeat = (
                self.state.uses_send_message
                and name not in TERMINAL_TOOLS
                and name not in self.client  # the caller's schema goes out as it was given
                and not self.solver.is_terminal(name)
            )
            schemas.append(openai_schema(tf.tool, with_heartbeat=heartbeat))
        return schemas

    def tool_choice(self, schemas: list[dict[str, object]]) -> str | dict[str, object] | None:
        """What the tool rules force on the next call: one tool, any tool, or nothing."""
        required = self.solver.required_tool()
        if required:
            return {"type": "function", "function": {"name": required}}
        if self.solver.constrained() and schemas:
            only = [sch["function"]["name"] for sch in schemas]  # type: ignore[index]
            return {"type": "function", "function": {"name": only[0]}} if len(only) == 1 else "required"
        return None

    def compile(self, schemas: list[dict[str, object]]) -> CompiledContext:
        stats = MemoryStats(
            recall_messages=self.stats.recall_messages,
            archival_passages=self.stats.archival_passages + int(self.tool_state.get("archival_inserted", 0)),
            last_modified=self.memory.last_modified(),
        )
        state = self.state
        if "open_files" in self.tool_state:  # files the turn opened or closed show from its next step
            state = state.model_copy(update={"open_files": self.tool_state["open_files"]})
        return compile_context(state, self.memory.blocks, self.context, stats, schemas, self.deps.llm,
                               self.cache)

    async def evict_and_summarise(self, compiled: CompiledContext) -> bool:
        """Summarise the oldest messages out of context; False when nothing can go."""
        config = self.state.llm_config
        counts = [self.cache.tokens(m, self.deps.llm, config) for m in self.context]
        budget = int(SUMMARY_TARGET * config.context_window) - compiled.system_tokens
        cut = choose_cut(self.context, counts, max(budget, 0))
        if cut == 0:
            return False
        evicted, self.context = self.context[:cut], self.context[cut:]
        summary, prompt, completion = await summarise(self.deps.llm, config, self.state.summary, evicted)
        self.usage.add(prompt, completion)
        evicted_total = int(self.state.metadata.get("evicted_messages", 0)) + len(evicted)
        self.state = self.state.model_copy(
            update={"summary": summary, "metadata": {**self.state.metadata, "evicted_messages": evicted_total}}
        )
        self.evicted_ids.extend(m.id for m in evicted)
        return True

    def stop(self, reason: StopReasonType, detail: str | None = None) -> StopReason:
        return StopReason(stop_reason=reason, detail=detail)

    def begin_step(self) -> StepRecord:
        config = self.state.llm_config
        record = StepRecord(id=new_id("step"), agent_id=self.state.id, run_id=self.run_id, model=config.model,
                            model_endpoint=config.model_endpoint, model_handle=config.handle or config.model,
                            provider_name=config.model.split("/", 1)[0] if "/" in config.model else None,
                            context_window_limit=config.context_window, tags=list(self.state.tags),
                            created_at=self.deps.clock(), step_start_ns=time.time_ns())
        self.steps.append(record)
        return record

    def end_step(self, record: StepRecord, response: LLMResponse | None, llm_ns: int | None,
                 tools_ns: int | None) -> None:
        if response is not None:
            record.model = response.model or record.model
            record.prompt_tokens = response.prompt_tokens
            record.completion_tokens = response.completion_tokens
            record.total_tokens = response.prompt_tokens + response.completion_tokens
        record.llm_request_start_ns = record.step_start_ns
        record.llm_request_ns = llm_ns
        record.tool_execution_ns = tools_ns
        record.step_ns = time.time_ns() - record.step_start_ns


async def step(
    state: AgentState,
    context: list[Message],
    inbound: list[MessageCreate | Message],
    deps: StepDeps,
    *,
    toolset: Toolset,
    stats: MemoryStats | None = None,
    max_steps: int | None = None,
    cancel: asyncio.Event | None = None,
    on_event: EventSink | None = None,
    run_id: str | None = None,
    cache: MessageCache | None = None,
    client_tools: list[ClientTool] | None = None,
    stream_tokens: bool = False,
) -> StepResult:
    """Run one turn: take ``inbound``, loop LLM calls and tools until the turn ends.

    With ``stream_tokens`` (and ``on_event``) the model's text, reasoning and tool-call
    arguments go to ``on_event`` piece by piece as the LLM streams them (Letta's token
    streaming: events of one message share its id; concatenate their text).

    ``cache`` (kept by the caller across turns) saves re-serialising and re-counting
    the messages already in context. ``client_tools`` are offered to the model for this
    turn; a call to one stops it with "requires_approval" until the caller sends back the
    result (an approval message with a ``type: "tool"`` answer).
    """
    approvals = [m for m in inbound if isinstance(m, MessageCreate) and m.type == "approval"]
    _check_approval_order(state, inbound, approvals)
    if stats is None:
        stats = await gather_stats(state, deps)
    turn = _Turn(state, context, deps, toolset, stats, run_id, on_event, cache, client_tools)
    turn.stream_tokens = stream_tokens and on_event is not None
    ended = None
    if approvals:
        ended = await _answer_approvals(turn, approvals)
    else:
        for item in inbound:
            await turn.add(_inbound_message(item, state.id, run_id))
    stop = turn.stop(ended) if ended else await _loop(turn, max_steps or state.max_steps, cancel)
    if turn.steps and turn.steps[-1].stop_reason is None:
        last = turn.steps[-1]
        last.stop_reason = stop.stop_reason
        if stop.stop_reason == "cancelled":
            last.status = "cancelled"
    edited = [b for b in turn.memory.blocks if b.label in turn.memory.edited]
    if state.message_buffer_autoclear and stop.stop_reason != "requires_approval":
        turn.context = []  # the turn's messages stay in recall; the next turn starts afresh
    final_state = turn.state.model_copy(
        update={"blocks": turn.memory.blocks, "message_ids": [m.id for m in turn.context],
                **({"open_files": turn.tool_state["open_files"]} if "open_files" in turn.tool_state else {})}
    )
    if edited:
        final_state.updated_at = max(b.updated_at for b in edited)
    if turn.evicted_ids:
        turn.cache.retain(turn.context)
    return StepResult(
        state=final_state,
        context=turn.context,
        new_messages=turn.new_messages,
        events=turn.events,
        stop_reason=stop,
        usage=turn.usage,
        edited_blocks=edited,
        evicted_ids=turn.evicted_ids,
        steps=turn.steps,
    )


def preview_request(state: AgentState, context: list[Message], inbound: list[MessageCreate | Message],
                    deps: StepDeps, *, toolset: Toolset, stats: MemoryStats,
                    client_tools: list[ClientTool] | None = None) -> dict[str, object]:
    """The request the turn's first LLM call would send for ``inbound``, without sending it
    or changing anything: model, messages, tools and tool choice (no credentials)."""
    turn = _Turn(state, context, deps, toolset, stats, None, None, None, client_tools)
    turn.context.extend(_inbound_message(m, state.id, None) for m in inbound
                        if not (isinstance(m, MessageCreate) and m.type == "approval"))
    schemas = turn.tool_schemas()
    compiled = turn.compile(schemas)
    config = state.llm_config
    payload: dict[str, object] = {"model": config.model, "messages": compiled.messages,
                                  "temperature": config.temperature}
    if schemas:
        payload["tools"] = schemas
        if (choice := turn.tool_choice(schemas)) is not None:
            payload["tool_choice"] = choice
    if config.max_tokens is not None:
        payload["max_tokens"] = config.max_tokens
    return payload


@dataclass
class Compaction:
    """What ``compact`` did: the agent's new state and context, and what went out of it."""

    state: AgentState
    context: list[Message]
    summary: str | None
    evicted_ids: list[str]
    usage: UsageStatistics


# ``compact`` keeps about this share of the in-context messages' tokens, the newest.
COMPACT_KEEP_SHARE = 0.25


async def compact(state: AgentState, context: list[Message], deps: StepDeps, *, stats: MemoryStats,
                  cache: MessageCache | None = None) -> Compaction:
    """Summarise the older part of the context now (Letta's "compact"): the summary takes
    their place, the newest ~quarter of the messages stay. Nothing goes if the context
    cannot be cut (one message, or a tool call with its return)."""
    turn = _Turn(state, context, deps, Toolset([]), stats, None, None, cache)
    counts = [turn.cache.tokens(m, deps.llm, state.llm_config) for m in turn.context]
    cut = choose_cut(turn.context, counts, int(COMPACT_KEEP_SHARE * sum(counts)))
    if cut:
        evicted, turn.context = turn.context[:cut], turn.context[cut:]
        summary, prompt, completion = await summarise(deps.llm, state.llm_config, state.summary, evicted)
        turn.usage.add(prompt, completion)
        total = int(state.metadata.get("evicted_messages", 0)) + len(evicted)
        turn.state = state.model_copy(update={"summary": summary, "metadata": {**state.metadata,
                                                                                "evicted_messages": total}})
        turn.evicted_ids = [m.id for m in evicted]
        turn.cache.retain(turn.context)
    final = turn.state.model_copy(update={"message_ids": [m.id for m in turn.context]})
    return Compaction(final, turn.context, final.summary, turn.evicted_ids, turn.usage)


def default_initial_messages(state: AgentState, now: datetime) -> list[Message]:
    """The messages a fresh context starts with when asked for (``reset(add_default_initial_messages)``),
    in the shape Letta uses: for send_message agents a first greeting through the tool and a
    login event; for the others just the login event."""
    when = local_time_text(now, state.timezone)
    login = Message(agent_id=state.id, role="user", created_at=now, content=json.dumps(
        {"type": "login", "last_login": "Never (first login)", "time": when}))
    if not state.uses_send_message or "send_message" not in state.tools:
        return [login]
    call = ToolCall(id=new_id("call"), name="send_message",
                    arguments=json.dumps({"message": "Hello! I'm ready when you are."}))
    greeting = Message(agent_id=state.id, role="assistant", created_at=now, tool_calls=[call],
                       content="Starting up: greet the user and wait for them.")
    result = Message(agent_id=state.id, role="tool", name="send_message", tool_call_id=call.id, created_at=now,
                     tool_status="success", content=tool_result_text(ToolOutcome(True, "None"), when))
    return [greeting, result, login]


async def gather_stats(state: AgentState, deps: StepDeps) -> MemoryStats:
    """Recall and archival counts for the memory metadata, from the stores if present."""
    recall = await deps.recall.count_messages(state.id) if deps.recall else 0
    archival = await deps.archive.count(state.archive_owners) if deps.archive else 0
    return MemoryStats(recall_messages=recall, archival_passages=archival)


def _check_approval_order(state: AgentState, inbound: list[MessageCreate | Message],
                          approvals: list[MessageCreate]) -> None:
    """A turn that stopped for approval takes an approval next, and only then one."""
    if state.pending_approvals and not approvals:
        waiting = ", ".join(f"{p.name} ({p.tool_call_id})" for p in state.pending_approvals)
        raise ConflictError(f"agent {state.id} is waiting for approval of its tool call(s) {waiting}: answer with "
                            "a message of type 'approval' (approve, or deny with a reason) before sending another")
    if approvals and not state.pending_approvals:
        raise InvalidInputError(f"agent {state.id} has no tool call waiting for approval")
    if approvals and len(approvals) != len(inbound):
        raise InvalidInputError("an approval message is sent on its own, not with other messages")


async def _answer_approvals(turn: _Turn, approvals: list[MessageCreate]) -> StopReasonType | None:
    """Run the approved calls the last turn stopped for and refuse the denied ones; returns
    a stop reason if one of them ends the turn."""
    pending = list(turn.state.pending_approvals)
    ids = {p.tool_call_id for p in pending}
    decisions: dict[str, ApprovalDecision] = {}
    for message in approvals:
        for decision in message.approvals or []:
            decisions[decision.tool_call_id] = decision
        if message.approve is not None:  # Letta's older form: one answer for the request message's calls
            for p in pending:
                if message.approval_request_id in (None, p.message_id, p.tool_call_id):
                    decisions.setdefault(p.tool_call_id, ApprovalDecision(
                        tool_call_id=p.tool_call_id, approve=message.approve, reason=message.reason))
    unknown = sorted(set(decisions) - ids)
    if unknown:
        raise InvalidInputError(f"no tool call {unknown} waits for approval; waiting: {sorted(ids)}")
    missing = [p.tool_call_id for p in pending if p.tool_call_id not in decisions]
    if missing:
        raise InvalidInputError(f"answer every tool call that waits for approval; unanswered: {missing}")
    for p in pending:  # checked before any call runs
        if p.client_side and decisions[p.tool_call_id].type == "approval" and decisions[p.tool_call_id].approve:
            raise InvalidInputError(f"{p.name} ({p.tool_call_id}) is a client-side tool: answer with its result, "
                                    '{"type": "tool", "tool_call_id": ..., "tool_return": ..., "status": '
                                    '"success" or "error"}')
    ctx = ToolContext(agent=turn.state, memory=turn.memory, deps=turn.deps, state=turn.tool_state)
    ended: StopReasonType | None = None
    for p in pending:
        decision = decisions[p.tool_call_id]
        tf = turn.toolset.get(p.name) if p.name in turn.state.tools else None
        if decision.type == "tool":  # the caller ran it and says what came of it
            turn.solver.record(p.name)
            outcome = ToolOutcome(decision.status == "success", decision.return_text(), request_heartbeat=True)
            turn.solver.record_output(outcome.message)
        elif not decision.approve:
            outcome = ToolOutcome(False, f"The user denied this call to {p.name}"
                                         + (f": {decision.reason}" if decision.reason else ".")
                                         + " Do not call it again unless the user agrees.")
        elif tf is None:
            outcome = ToolOutcome(False, f"{p.name} was approved but is no longer one of your tools.")
        else:
            turn.solver.record(p.name)
            outcome = await run_tool(tf, p.arguments, ctx)
            turn.solver.record_output(outcome.message)
        verdict = await _record_result(turn, p.tool_call_id, p.name, outcome, p.step_id)
        if verdict in ("end_turn", "tool_rule"):
            ended = ended or verdict
    turn.state = turn.state.model_copy(update={"pending_approvals": []})
    return ended


async def _record_result(turn: _Turn, call_id: str, name: str, outcome: ToolOutcome,
                         step_id: str | None) -> str:
    """Add a tool call's result to the turn; say what it means for the turn: "end_turn",
    "tool_rule" (a terminal tool), "continue", or "rest" (it did not ask to go on)."""
    state = turn.state
    await turn.add(Message(agent_id=state.id, role="tool", content=tool_result_text(outcome, turn.now_text()),
                           tool_call_id=call_id, name=name, tool_status="success" if outcome.ok else "error",
                           step_id=step_id, run_id=turn.run_id))
    if not outcome.ok:
        return "continue"  # let the model see its mistake and fix it
    if name in TERMINAL_TOOLS and state.uses_send_message:
        return "end_turn"
    if turn.solver.is_terminal(name):
        return "tool_rule"
    if turn.solver.forces_continue(name) or not state.uses_send_message:
        return "continue"
    return "continue" if outcome.request_heartbeat else "rest"


def _inbound_message(item: MessageCreate | Message, agent_id: str, run_id: str | None) -> Message:
    if isinstance(item, Message):
        return item.model_copy(update={"agent_id": agent_id, "run_id": item.run_id or run_id})
    return Message(agent_id=agent_id, role=item.role, content=item.text(), name=item.name,
                   sender_id=item.sender_id, otid=item.otid, run_id=run_id)


async def _loop(turn: _Turn, max_steps: int, cancel: asyncio.Event | None) -> StopReason:
    config = turn.state.llm_config
    steps = 0
    invalid_streak = 0
    retried_overflow = False
    while True:
        if cancel is not None and cancel.is_set():
            return turn.stop("cancelled")
        if steps >= max_steps:
            return turn.stop("max_steps", f"the turn reached its limit of {max_steps} steps")
        if turn.deps.blocks is not None:  # see edits other agents made to shared blocks
            turn.memory.refresh(await turn.deps.blocks.fresh(turn.memory.blocks))
        schemas = turn.tool_schemas()
        compiled = turn.compile(schemas)
        if compiled.system_tokens > config.context_window:
            return turn.stop(
                "context_window_overflow",
                f"the system prompt and memory blocks alone take {compiled.system_tokens} tokens, "
                f"more than the context window of {config.context_window}",
            )
        if needs_summary(compiled, config):
            try:
                await turn.evict_and_summarise(compiled)
            except LLMError as exc:
                return turn.stop("llm_api_error", f"summarising the context failed: {exc}")
            compiled = turn.compile(schemas)
            if compiled.tokens > config.context_window:
                return turn.stop(
                    "context_window_overflow",
                    f"the context takes {compiled.tokens} tokens after summarising, more than the "
                    f"context window of {config.context_window}",
                )
        tool_choice = turn.tool_choice(schemas)
        steps += 1
        record = turn.begin_step()
        started = time.perf_counter_ns()
        tokens = TokenStream(turn, record.id) if turn.stream_tokens else None
        try:
            response = await _unless_cancelled(
                turn.deps.llm.complete(compiled.messages, schemas, config, tool_choice=tool_choice,
                                       **delta_kwargs(tokens)), cancel)
        except _Cancelled:
            turn.end_step(record, None, time.perf_counter_ns() - started, None)
            record.status, record.stop_reason = "cancelled", "cancelled"
            return turn.stop("cancelled", "the turn was cancelled while the model was answering")
        except LLMError as exc:
            turn.end_step(record, None, time.perf_counter_ns() - started, None)
            record.status, record.stop_reason = "failed", "llm_api_error"
            record.error_type, record.error_data = type(exc).__name__, {"message": str(exc)}
            if getattr(exc, "context_window_exceeded", False) and not retried_overflow:
                # The provider counts differently from us: summarise harder and try again.
                retried_overflow = True
                steps -= 1
                if await turn.evict_and_summarise(compiled):
                    continue
            return turn.stop("llm_api_error", str(exc))
        llm_ns = time.perf_counter_ns() - started
        turn.usage.add(response.prompt_tokens, response.completion_tokens)
        turn.usage.step_count += 1
        outcome = await _handle_response(turn, response, record.id, tokens)
        turn.end_step(record, response, llm_ns, time.perf_counter_ns() - started - llm_ns)
        if outcome == "invalid":
            invalid_streak += 1
            if invalid_streak >= MAX_INVALID_TOOL_CALLS:
                return turn.stop("invalid_tool_call", "the model kept calling tools that do not exist")
            continue
        invalid_streak = 0
        if outcome == "continue":
            continue
        missing = turn.solver.missing_before_exit()
        if missing and steps < max_steps:
            await turn.add(Message(agent_id=turn.state.id, role="user", run_id=turn.run_id, content=(
                f"[system] Before ending your turn you must call: {', '.join(missing)}.")))
            continue
        return turn.stop(outcome)


@dataclass
class _StreamedCall:
    """A tool call as its pieces arrive."""

    id: str | None = None
    name: str | None = None
    arguments: str = ""
    sent: int = 0  # how much of ``arguments`` went out as tool-call pieces
    said: str = ""  # of a send_message call: how much of its message went out as the reply


class TokenStream:
    """One LLM call's streamed pieces as Letta's events (to the turn's ``on_event``), all with
    the id of the assistant message the call becomes.

    Text goes out as reasoning in an agent that replies through send_message (its text is
    its thinking) and as the reply otherwise; a send_message call's ``message`` argument as
    the reply, read out of its JSON as that arrives; any other call as tool-call pieces
    (the name and id on each, the arguments' next piece). The kinds sent this way are not
    sent again whole when the message is complete (``streamed``)."""

    def __init__(self, turn: _Turn, step_id: str) -> None:
        self.turn = turn
        self.message_id = new_id("message")
        self.created_at = utcnow()
        self.step_id = step_id
        self._kinds: set[str] = set()
        self._calls: dict[int, _StreamedCall] = {}

    @property
    def streamed(self) -> frozenset[str]:
        return frozenset(self._kinds)

    async def _emit(self, event: LettaMessage) -> None:
        self._kinds.add(event.message_type)
        assert self.turn.on_event is not None
        await self.turn.on_event(event)

    async def __call__(self, delta: LLMDelta) -> None:
        common: dict[str, Any] = {"id": self.message_id, "date": self.created_at, "step_id": self.step_id,
                                  "run_id": self.turn.run_id}
        replies_by_tool = self.turn.state.uses_send_message
        if delta.reasoning:
            await self._emit(ReasoningMessage(reasoning=delta.reasoning, source="reasoner_model", **common))
        if delta.content:
            await self._emit(ReasoningMessage(reasoning=delta.content, **common) if replies_by_tool
                             else AssistantMessage(content=delta.content, **common))
        if delta.tool_index is None:
            return
        call = self._calls.setdefault(delta.tool_index, _StreamedCall())
        call.id = call.id or delta.tool_call_id
        call.name = call.name or delta.tool_name
        call.arguments += delta.arguments
        if call.name is None:  # nothing to show until the name is known
            return
        if replies_by_tool and call.name == "send_message":
            text = _partial_message(call.arguments)
            if len(text) > len(call.said) and text.startswith(call.said):
                piece, call.said = text[len(call.said):], text
                await self._emit(AssistantMessage(content=piece, **common))
            return
        piece = call.arguments[call.sent:]
        if piece or (call.sent == 0 and delta.tool_name):
            call.sent = len(call.arguments)
            event = ToolCallEvent(name=call.name, arguments=piece, tool_call_id=call.id or "")
            await self._emit(ToolCallMessage(tool_call=event, tool_calls=[event], **common))


def _partial_message(arguments: str) -> str:
    """The ``message`` argument of a send_message call whose JSON is still arriving ("" until it starts)."""
    try:
        parsed = from_json(arguments, allow_partial="trailing-strings")
    except ValueError:
        return ""
    value = parsed.get("message") if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else ""


class _Cancelled(Exception):
    """The turn's cancel event fired while it waited for the model."""


async def _unless_cancelled(call: Awaitable[LLMResponse], cancel: asyncio.Event | None) -> LLMResponse:
    """The model's answer, or _Cancelled as soon as ``cancel`` is set (the call is dropped:
    nothing of the step it belonged to has been recorded yet)."""
    if cancel is None:
        return await call
    answer = asyncio.ensure_future(call)
    stopped = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait((answer, stopped), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        answer.cancel()
        raise
    finally:
        stopped.cancel()
    if answer.done():
        return answer.result()
    answer.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await answer
    raise _Cancelled


async def _handle_response(turn: _Turn, response: LLMResponse, step_id: str, tokens: TokenStream | None = None) -> str:
    """Record the assistant turn (with the id its streamed pieces had, if ``tokens``) and run
    its tools; say how the loop goes on.

    Returns "continue", "invalid" (only unusable calls), or a stop reason; a call that needs
    approval is not run: the turn stops with "requires_approval" once the others ran.
    """
    state = turn.state
    callable_now = turn.callable()
    allowed = set(turn.solver.allowed(callable_now))
    tools = {call.id: turn.toolset.get(call.name) if call.name in callable_now else None
             for call in response.tool_calls}
    waiting = [call for call in response.tool_calls if call.name in allowed and (tf := tools[call.id]) is not None
               and (call.name in turn.client or turn.solver.requires_approval(call.name)
                    or bool(tf.tool.default_requires_approval))]
    streamed = {"id": tokens.message_id, "created_at": tokens.created_at} if tokens is not None else {}
    message = Message(agent_id=state.id, role="assistant", content=response.content, reasoning=response.reasoning,
                      tool_calls=response.tool_calls, step_id=step_id, run_id=turn.run_id,
                      approval_required=[call.id for call in waiting], **streamed)
    await turn.add(message, tokens.streamed if tokens is not None else frozenset())
    if not response.tool_calls:
        return "no_tool_call" if state.uses_send_message else "end_turn"
    ctx = ToolContext(agent=state, memory=turn.memory, deps=turn.deps, state=turn.tool_state)
    keep_going = False
    ended: str | None = None
    valid_calls = 0
    for call in response.tool_calls:
        tf = tools[call.id]
        if call in waiting:
            valid_calls += 1
            continue
        if tf is None:
            known = ", ".join(sorted(allowed)) or "none"
            outcome = ToolOutcome(False, f"There is no tool named {call.name!r}. Tools you can call: {known}.")
        elif call.name not in allowed:
            outcome = ToolOutcome(False, f"{call.name} cannot be called now because of the tool rules; "
                                         f"you may call: {', '.join(sorted(allowed)) or 'none'}.")
        else:
            valid_calls += 1
            turn.solver.record(call.name)
            outcome = await run_tool(tf, call.arguments, ctx)
            turn.solver.record_output(outcome.message)
        verdict = await _record_result(turn, call.id, call.name, outcome, step_id)
        if verdict in ("end_turn", "tool_rule"):
            ended = ended or verdict
        elif verdict == "continue":
            keep_going = True
    if waiting:
        turn.state = turn.state.model_copy(update={"pending_approvals": [
            PendingToolCall(tool_call_id=c.id, name=c.name, arguments=c.arguments, message_id=message.id,
                            step_id=step_id, client_side=c.name in turn.client) for c in waiting]})
        return "requires_approval"
    if ended:
        return ended
    if valid_calls == 0:
        return "invalid"
    return "continue" if keep_going else "end_turn"
