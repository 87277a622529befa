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
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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
from letta_ray.deps import LLMResponse, StepDeps
from letta_ray.errors import ConflictError, InvalidInputError, LLMError
from letta_ray.memory import Memory, MemoryStats
from letta_ray.messages import (
    ApprovalDecision,
    LettaMessage,
    LettaResponse,
    Message,
    MessageCreate,
    StopReason,
    StopReasonType,
    UsageStatistics,
    to_events,
)
from letta_ray.schemas import AgentState, Block, ClientTool, PendingToolCall, new_id
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

    def response(self) -> LettaResponse:
        return LettaResponse(messages=self.events, stop_reason=self.stop_reason, usage=self.usage)


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

    async def add(self, message: Message) -> None:
        self.context.append(message)
        self.new_messages.append(message)
        for event in to_events(message, uses_send_message=self.state.uses_send_message):
            self.events.append(event)
            if self.on_event is not None:
                await self.on_event(event)

    def now_text(self) -> str:
        return self.deps.clock().strftime("%Y-%m-%d %I:%M:%S %p %Z%z")

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

    def compile(self, schemas: list[dict[str, object]]) -> CompiledContext:
        stats = MemoryStats(
            recall_messages=self.stats.recall_messages,
            archival_passages=self.stats.archival_passages + int(self.tool_state.get("archival_inserted", 0)),
            last_modified=self.memory.last_modified(),
        )
        return compile_context(self.state, self.memory.blocks, self.context, stats, schemas, self.deps.llm,
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
) -> StepResult:
    """Run one turn: take ``inbound``, loop LLM calls and tools until the turn ends.

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
    ended = None
    if approvals:
        ended = await _answer_approvals(turn, approvals)
    else:
        for item in inbound:
            await turn.add(_inbound_message(item, state.id, run_id))
    stop = turn.stop(ended) if ended else await _loop(turn, max_steps or state.max_steps, cancel)
    edited = [b for b in turn.memory.blocks if b.label in turn.memory.edited]
    final_state = turn.state.model_copy(
        update={"blocks": turn.memory.blocks, "message_ids": [m.id for m in turn.context]}
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
    )


async def gather_stats(state: AgentState, deps: StepDeps) -> MemoryStats:
    """Recall and archival counts for the memory metadata, from the stores if present."""
    recall = await deps.recall.count_messages(state.id) if deps.recall else 0
    archival = await deps.archive.count(state.id) if deps.archive else 0
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
        required = turn.solver.required_tool()
        tool_choice: str | dict[str, object] | None = None
        if required:
            tool_choice = {"type": "function", "function": {"name": required}}
        elif turn.solver.constrained() and schemas:
            only = [sch["function"]["name"] for sch in schemas]  # type: ignore[index]
            tool_choice = {"type": "function", "function": {"name": only[0]}} if len(only) == 1 else "required"
        steps += 1
        try:
            response = await turn.deps.llm.complete(compiled.messages, schemas, config, tool_choice=tool_choice)
        except LLMError as exc:
            if getattr(exc, "context_window_exceeded", False) and not retried_overflow:
                # The provider counts differently from us: summarise harder and try again.
                retried_overflow = True
                steps -= 1
                if await turn.evict_and_summarise(compiled):
                    continue
            return turn.stop("llm_api_error", str(exc))
        turn.usage.add(response.prompt_tokens, response.completion_tokens)
        turn.usage.step_count += 1
        outcome = await _handle_response(turn, response)
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


async def _handle_response(turn: _Turn, response: LLMResponse) -> str:
    """Record the assistant turn and run its tools; say how the loop goes on.

    Returns "continue", "invalid" (only unusable calls), or a stop reason; a call that needs
    approval is not run: the turn stops with "requires_approval" once the others ran.
    """
    state = turn.state
    step_id = new_id("step")
    callable_now = turn.callable()
    allowed = set(turn.solver.allowed(callable_now))
    tools = {call.id: turn.toolset.get(call.name) if call.name in callable_now else None
             for call in response.tool_calls}
    waiting = [call for call in response.tool_calls if call.name in allowed and (tf := tools[call.id]) is not None
               and (call.name in turn.client or turn.solver.requires_approval(call.name)
                    or bool(tf.tool.default_requires_approval))]
    message = Message(agent_id=state.id, role="assistant", content=response.content, reasoning=response.reasoning,
                      tool_calls=response.tool_calls, step_id=step_id, run_id=turn.run_id,
                      approval_required=[call.id for call in waiting])
    await turn.add(message)
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
