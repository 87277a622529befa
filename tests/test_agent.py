"""The agent step loop, with scripted LLMs and no Ray."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from letta_ray.agent import StepResult, compact, default_initial_messages, preview_request, step
from letta_ray.base_tools import DEFAULT_SYSTEM_PROMPTS, DEFAULT_TOOLS, base_toolset
from letta_ray.deps import LLMResponse, StepDeps
from letta_ray.errors import LLMError
from letta_ray.memory import MemoryStats
from letta_ray.messages import (
    AssistantMessage,
    Message,
    MessageCreate,
    ReasoningMessage,
    ToolCallMessage,
    ToolReturnMessage,
    UserMessage,
)
from letta_ray.schemas import (
    AgentState,
    Block,
    ChildToolRule,
    InitToolRule,
    LLMConfig,
    TerminalToolRule,
)
from letta_ray.testing import FunctionLLM, ScriptedLLM, reply, send_message, tool_call
from letta_ray.tools import build_tool


def make_agent(agent_type: str = "memgpt_v2_agent", *, window: int = 32_000, **kw: Any) -> AgentState:
    blocks = kw.pop("blocks", None) or [
        Block(label="human", value="Name: Ada", limit=200, description="What I know about the user"),
        Block(label="persona", value="I am Sam.", limit=200),
    ]
    tools = kw.pop("tools", None) or [*DEFAULT_TOOLS[agent_type], "core_memory_append", "core_memory_replace",
                                     "memory_rethink"]
    return AgentState(
        name="sam",
        agent_type=agent_type,
        system=DEFAULT_SYSTEM_PROMPTS[agent_type],
        blocks=blocks,
        tools=tools,
        llm_config=LLMConfig(model="openai/fake", context_window=window),
        **kw,
    )


async def run(agent: AgentState, llm: Any, text: str = "hi", context: list[Message] | None = None,
              **kw: Any) -> StepResult:
    toolset = kw.pop("toolset", None) or base_toolset()
    return await step(agent, context or [], [MessageCreate(content=text)], StepDeps(llm=llm),
                      toolset=toolset, **kw)


def tool_returns(result: StepResult) -> list[dict[str, Any]]:
    return [json.loads(m.content or "{}") for m in result.new_messages if m.role == "tool"]


async def test_agent_appends_to_human_block_and_replies() -> None:
    llm = ScriptedLLM([
        tool_call("core_memory_append", label="human", content="Lives in Lisbon", request_heartbeat=True),
        send_message("Lisbon is lovely!"),
    ])
    result = await run(make_agent(), llm, "hi, I moved to Lisbon")

    assert result.stop_reason.stop_reason == "end_turn"
    assert result.state.block("human").value == "Name: Ada\nLives in Lisbon"
    assert [b.label for b in result.edited_blocks] == ["human"]
    kinds = [type(e) for e in result.events]
    assert kinds == [UserMessage, ToolCallMessage, ToolReturnMessage, AssistantMessage]
    assert result.events[-1].content == "Lisbon is lovely!"
    # The second LLM call saw the edited block in its system prompt.
    second_system = llm.history[1].messages[0]["content"]
    assert "Lives in Lisbon" in second_system
    assert "chars_current=25" in second_system and "chars_limit=200" in second_system
    # in-context ids follow the new messages; usage summed over both calls
    assert result.state.message_ids == [m.id for m in result.context]
    assert result.usage.step_count == 2
    assert result.usage.total_tokens == sum(c.response.prompt_tokens + c.response.completion_tokens
                                            for c in llm.history)


async def test_heartbeat_chains_three_tool_calls() -> None:
    llm = ScriptedLLM([
        tool_call("memory_insert", label="human", new_str="a", request_heartbeat=True),
        tool_call("memory_insert", label="human", new_str="b", request_heartbeat=True),
        tool_call("memory_insert", label="human", new_str="c", request_heartbeat=True),
        send_message("done"),
    ])
    result = await run(make_agent(), llm)
    assert result.stop_reason.stop_reason == "end_turn"
    assert result.state.block("human").value == "Name: Ada\na\nb\nc"
    assert llm.calls == 4
    assert all(r["status"] == "OK" for r in tool_returns(result))


async def test_tool_without_heartbeat_ends_the_turn() -> None:
    llm = ScriptedLLM([tool_call("memory_insert", label="human", new_str="x", request_heartbeat=False)])
    result = await run(make_agent(), llm)
    assert result.stop_reason.stop_reason == "end_turn"
    assert llm.calls == 1


async def test_heartbeat_param_offered_on_every_tool_but_send_message() -> None:
    llm = ScriptedLLM([send_message("ok")])
    await run(make_agent(), llm)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in llm.history[0].tools}
    assert "request_heartbeat" not in schemas["send_message"]["properties"]
    assert "request_heartbeat" in schemas["memory_replace"]["required"]
    # docstrings became descriptions the model reads
    assert "exactly once" in schemas["memory_replace"]["properties"]["old_str"]["description"]


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (tool_call("teleport", where="moon"), "no tool named 'teleport'"),
        (tool_call("memory_replace", label="human", old_str="Zed", new_str="Bo", request_heartbeat=True),
         "does not appear verbatim"),
        (tool_call("core_memory_append", label="human", content="x" * 500, request_heartbeat=True),
         "over its limit of 200"),
        (tool_call("memory_rethink", label="persona_ro", new_memory="hacked", request_heartbeat=True),
         "read-only"),
        (tool_call("memory_insert", label="nope", new_str="x", request_heartbeat=True), "no memory block labelled"),
        (tool_call("memory_insert", label="human", request_heartbeat=True), "missing required arguments"),
    ],
)
async def test_model_errors_come_back_as_failed_tool_results(call: Any, expected: str) -> None:
    agent = make_agent(blocks=[Block(label="human", value="Name: Ada", limit=200),
                               Block(label="persona_ro", value="fixed", read_only=True)])
    llm = ScriptedLLM([call, send_message("sorry")])
    result = await run(agent, llm)

    failed = tool_returns(result)[0]
    assert failed["status"] == "Failed"
    assert expected in failed["message"]
    # the loop went on: the model saw the failure and replied
    assert result.stop_reason.stop_reason == "end_turn"
    assert expected in json.dumps(llm.history[1].messages[-1])
    assert result.state.block("human").value == "Name: Ada"
    assert result.state.block("persona_ro").value == "fixed"


async def test_malformed_json_arguments_fail_back_to_the_model() -> None:
    from letta_ray.messages import ToolCall

    llm = ScriptedLLM([LLMResponse(tool_calls=[ToolCall(name="memory_insert", arguments='{"label": "hu')]),
                       send_message("retrying")])
    result = await run(make_agent(), llm)
    failed = tool_returns(result)[0]
    assert failed["status"] == "Failed" and "not valid JSON" in failed["message"]
    assert result.stop_reason.stop_reason == "end_turn"


async def test_a_tool_raising_is_reported_to_the_model() -> None:
    def divide(a: int, b: int) -> float:
        """Divide two numbers.

        Args:
            a: numerator
            b: denominator
        """
        return a / b

    toolset = base_toolset()
    toolset.add(build_tool(divide))
    agent = make_agent(tools=["send_message", "divide"])
    llm = ScriptedLLM([tool_call("divide", a=1, b=0, request_heartbeat=True), send_message("oops")])
    result = await run(agent, llm, toolset=toolset)
    failed = tool_returns(result)[0]
    assert failed["status"] == "Failed" and "ZeroDivisionError" in failed["message"]
    assert result.stop_reason.stop_reason == "end_turn"


async def test_max_steps_stops_an_endless_heartbeat() -> None:
    llm = FunctionLLM(lambda messages, info: tool_call("memory_insert", label="human", new_str="again",
                                                       request_heartbeat=True))
    result = await run(make_agent(blocks=[Block(label="human", value="", limit=10_000)]), llm, max_steps=4)
    assert result.stop_reason.stop_reason == "max_steps"
    assert llm.calls == 4


async def test_repeated_unknown_tools_stop_with_invalid_tool_call() -> None:
    llm = FunctionLLM(lambda messages, info: tool_call("nonexistent"))
    result = await run(make_agent(), llm)
    assert result.stop_reason.stop_reason == "invalid_tool_call"
    assert llm.calls == 3


async def test_no_tool_call_in_a_send_message_agent() -> None:
    result = await run(make_agent(), ScriptedLLM([reply("plain words")]))
    assert result.stop_reason.stop_reason == "no_tool_call"
    assert [e.content for e in result.events if isinstance(e, AssistantMessage)] == ["plain words"]


async def test_letta_v1_plain_text_ends_turn_and_tools_continue() -> None:
    llm = ScriptedLLM([
        reply("let me note that", tool_calls=[tool_call("memory_insert", label="human", new_str="tea")]),
        reply("Noted: you like tea."),
    ])
    agent = make_agent("letta_v1_agent")
    result = await run(agent, llm, "I like tea")
    assert result.stop_reason.stop_reason == "end_turn"
    assert "send_message" not in {t["function"]["name"] for t in llm.history[0].tools}
    assert "request_heartbeat" not in json.dumps(llm.history[0].tools)
    kinds = [type(e) for e in result.events]
    assert kinds == [UserMessage, ReasoningMessage, ToolCallMessage, ToolReturnMessage, AssistantMessage]
    assert result.response().assistant_text() == "Noted: you like tea."
    assert result.state.block("human").value.endswith("tea")


async def test_llm_error_stops_with_llm_api_error_and_keeps_the_inbound_message() -> None:
    def boom(messages: Any, info: Any) -> Any:
        raise LLMError("provider said 503", status_code=503, retryable=True)

    result = await run(make_agent(), FunctionLLM(boom), "are you there?")
    assert result.stop_reason.stop_reason == "llm_api_error"
    assert "503" in (result.stop_reason.detail or "")
    assert [m.content for m in result.new_messages] == ["are you there?"]


async def test_cancel_before_the_first_step() -> None:
    cancel = asyncio.Event()
    cancel.set()
    llm = ScriptedLLM([send_message("never")])
    result = await run(make_agent(), llm, cancel=cancel)
    assert result.stop_reason.stop_reason == "cancelled"
    assert llm.calls == 0


async def test_events_are_streamed_as_they_happen() -> None:
    seen: list[str] = []

    async def sink(event: Any) -> None:
        seen.append(event.message_type)

    llm = ScriptedLLM([tool_call("memory_insert", label="human", new_str="x", request_heartbeat=True),
                       send_message("ok")])
    result = await run(make_agent(), llm, on_event=sink)
    assert seen == [e.message_type for e in result.events]
    assert seen[-1] == "assistant_message"


async def test_stream_tokens_sends_text_and_arguments_in_pieces_under_the_message_id() -> None:
    seen: list[Any] = []

    async def sink(event: Any) -> None:
        seen.append(event)

    text = "Hello there, Ada! How are you today?"
    insert = tool_call("memory_insert", label="human", new_str="likes tea", request_heartbeat=True)
    llm = ScriptedLLM([insert, send_message(text)])
    result = await run(make_agent(), llm, on_event=sink, stream_tokens=True)

    assert result.stop_reason.stop_reason == "end_turn"
    calls = [e for e in seen if e.message_type == "tool_call_message"]
    replies = [e for e in seen if e.message_type == "assistant_message"]
    assert len(calls) > 1 and len(replies) > 1  # pieces, not one whole event each
    # a tool call's pieces: its name and id on each, its arguments concatenated, once
    assert {(e.tool_call.name, e.tool_call.tool_call_id) for e in calls} == {("memory_insert", insert.id)}
    assert "".join(e.tool_call.arguments for e in calls) == insert.arguments
    # send_message's message argument is the reply, read out of the streaming JSON
    assert "".join(e.content for e in replies) == text
    # the pieces of one message carry the id of the message it became
    by_call = {m.tool_calls[0].name: m for m in result.new_messages if m.role == "assistant"}
    assert {e.id for e in calls} == {by_call["memory_insert"].id}
    assert {e.id for e in replies} == {by_call["send_message"].id}
    # what was not streamed came whole, once; the turn's own events are whole
    assert [e.message_type for e in seen if e.message_type not in ("tool_call_message", "assistant_message")] == [
        "user_message", "tool_return_message"]
    assert [e.content for e in result.events if isinstance(e, AssistantMessage)] == [text]


async def test_stream_tokens_of_a_letta_v1_agent_stream_its_reasoning_and_reply() -> None:
    seen: list[Any] = []

    async def sink(event: Any) -> None:
        seen.append(event)

    llm = ScriptedLLM([reply("Noted: you like green tea.", reasoning="the user states a preference")])
    result = await run(make_agent("letta_v1_agent"), llm, "I like green tea", on_event=sink, stream_tokens=True)

    thoughts = [e for e in seen if e.message_type == "reasoning_message"]
    replies = [e for e in seen if e.message_type == "assistant_message"]
    assert len(thoughts) > 1 and len(replies) > 1
    assert "".join(e.reasoning for e in thoughts) == "the user states a preference"
    assert "".join(e.content for e in replies) == "Noted: you like green tea."
    assert seen.index(thoughts[-1]) < seen.index(replies[0])
    assert result.response().assistant_text() == "Noted: you like green tea."
    # without stream_tokens the same turn sends each message whole
    whole: list[Any] = []

    async def whole_sink(event: Any) -> None:
        whole.append(event)

    await run(make_agent("letta_v1_agent"), ScriptedLLM([reply("Noted.", reasoning="ok")]), on_event=whole_sink)
    assert [e.message_type for e in whole] == ["user_message", "reasoning_message", "assistant_message"]


def test_partial_send_message_arguments_are_read_as_they_arrive() -> None:
    from letta_ray.agent import _partial_message

    assert _partial_message("") == ""
    assert _partial_message('{"mess') == ""
    assert _partial_message('{"message": "Hel') == "Hel"
    assert _partial_message('{"message": "a \\"quoted\\" wo') == 'a "quoted" wo'
    assert _partial_message('{"message": "done"}') == "done"
    assert _partial_message('{"message": 3}') == ""


async def test_tool_rules_init_child_and_terminal() -> None:
    def lookup(topic: str) -> str:
        """Look a topic up.

        Args:
            topic: what to look up
        """
        return f"{topic}: 42"

    toolset = base_toolset()
    toolset.add(build_tool(lookup))
    agent = make_agent(
        tools=["send_message", "lookup", "memory_insert"],
        tool_rules=[InitToolRule(tool_name="lookup"),
                    ChildToolRule(tool_name="lookup", children=["memory_insert"]),
                    TerminalToolRule(tool_name="memory_insert")],
    )
    llm = ScriptedLLM([
        tool_call("lookup", topic="life", request_heartbeat=True),
        tool_call("send_message", message="too early"),  # not allowed after lookup
        tool_call("memory_insert", label="human", new_str="42"),
    ])
    result = await run(agent, llm, toolset=toolset)
    first = llm.history[0]
    assert first.tool_choice == {"type": "function", "function": {"name": "lookup"}}
    assert [t["function"]["name"] for t in first.tools] == ["lookup"]
    assert [t["function"]["name"] for t in llm.history[1].tools] == ["memory_insert"]
    assert tool_returns(result)[1]["status"] == "Failed"
    assert result.stop_reason.stop_reason == "tool_rule"
    assert result.state.block("human").value.endswith("42")


async def test_summarisation_keeps_a_long_conversation_going() -> None:
    """Push ~3x a small window through one agent: it summarises and never overflows."""
    window = 3_000
    agent = make_agent(window=window, blocks=[Block(label="human", value="Name: Ada", limit=200)],
                       tools=["send_message", "memory_insert"])

    def fn(messages: list[dict[str, Any]], info: Any) -> Any:
        if not info.tools:  # the summariser call has no tools
            return f"summary #{info.index}: Ada talked about topics up to now."
        return send_message("noted " + "y" * 150)

    llm = FunctionLLM(fn)
    context: list[Message] = []
    sent_tokens = 0
    summaries = 0
    for i in range(40):
        text = f"message {i}: " + "x" * 900
        result = await run(agent, llm, text, context=context)
        assert result.stop_reason.stop_reason == "end_turn", result.stop_reason
        sent_tokens += llm.count_tokens([{"role": "user", "content": text}], agent.llm_config)
        summaries += bool(result.evicted_ids)
        agent, context = result.state, result.context
        last_prompt = llm.history[-1].messages
        assert llm.count_tokens(last_prompt, agent.llm_config, llm.history[-1].tools) <= window
        # the cut never leaves a tool return without its call
        assert context[0].role != "tool"
    assert sent_tokens > 3 * window
    assert summaries >= 2
    assert agent.summary and agent.summary.startswith("summary #")
    assert agent.metadata["evicted_messages"] > 0
    # the summary sits right after the system message
    assert llm.history[-1].messages[1]["content"].startswith("[Summary of")


async def test_system_prompt_overflow_stops_with_a_clear_reason() -> None:
    agent = make_agent(window=300, blocks=[Block(label="human", value="z" * 2000, limit=5000)])
    llm = ScriptedLLM([send_message("never")])
    result = await run(agent, llm)
    assert result.stop_reason.stop_reason == "context_window_overflow"
    assert "system prompt" in (result.stop_reason.detail or "")
    assert llm.calls == 0


# ---------------------------------------------------------------------- steps, cancel, preview, compact


async def test_every_llm_call_is_a_step_with_its_tokens_timings_and_messages() -> None:
    llm = ScriptedLLM([
        tool_call("core_memory_append", label="human", content="Likes tea", request_heartbeat=True),
        send_message("Noted!"),
    ])
    result = await run(make_agent(tags=["cafe"]), llm, "I like tea", run_id="run-1")

    first, second = result.steps
    assert [s.stop_reason for s in result.steps] == [None, "end_turn"]
    assert all(s.status == "success" and s.run_id == "run-1" and s.tags == ["cafe"] for s in result.steps)
    assert first.model == "openai/fake" and first.model_handle == "openai/fake" and first.provider_name == "openai"
    assert first.prompt_tokens > 0 and first.total_tokens == first.prompt_tokens + first.completion_tokens
    assert sum(s.total_tokens for s in result.steps) == result.usage.total_tokens
    assert all(s.step_ns >= s.llm_request_ns >= 0 and s.tool_execution_ns >= 0 for s in result.steps)
    assert first.step_start_ns < second.step_start_ns
    # Each message of the turn but the user's names the step that made it.
    by_step = {s.id: [m.role for m in result.new_messages if m.step_id == s.id] for s in result.steps}
    assert by_step == {first.id: ["assistant", "tool"], second.id: ["assistant", "tool"]}


async def test_a_failed_llm_call_is_a_failed_step() -> None:
    def broken(messages: list[dict[str, Any]], info: Any) -> Any:
        raise LLMError("provider down")

    result = await run(make_agent(), FunctionLLM(broken))
    [failed] = result.steps
    assert result.stop_reason.stop_reason == "llm_api_error"
    assert (failed.status, failed.stop_reason, failed.error_type) == ("failed", "llm_api_error", "LLMError")
    assert failed.error_data == {"message": "provider down"}


async def test_cancel_drops_the_llm_call_under_way_and_keeps_the_finished_steps() -> None:
    cancel = asyncio.Event()
    started = asyncio.Event()

    async def slow_second_call(messages: list[dict[str, Any]], info: Any) -> Any:
        if info.index == 0:
            return tool_call("core_memory_append", label="human", content="Has a cat", request_heartbeat=True)
        started.set()
        await asyncio.sleep(30)
        return send_message("too late")

    turn = asyncio.ensure_future(run(make_agent(), FunctionLLM(slow_second_call), "I have a cat", cancel=cancel))
    await asyncio.wait_for(started.wait(), 5)
    cancel.set()
    result = await asyncio.wait_for(turn, 5)

    assert result.stop_reason.stop_reason == "cancelled"
    assert [(s.status, s.stop_reason) for s in result.steps] == [("success", None), ("cancelled", "cancelled")]
    # The finished step is whole (call and return); nothing of the dropped one was written.
    assert [m.role for m in result.new_messages] == ["user", "assistant", "tool"]
    assert result.state.block("human").value == "Name: Ada\nHas a cat"
    assert result.state.message_ids == [m.id for m in result.new_messages]


async def test_preview_shows_the_first_request_without_changing_anything() -> None:
    agent = make_agent(tool_rules=[InitToolRule(tool_name="core_memory_append")])
    llm = ScriptedLLM([])
    payload = preview_request(agent, [], [MessageCreate(content="what's up?")], StepDeps(llm=llm),
                              toolset=base_toolset(), stats=MemoryStats())

    assert payload["model"] == "openai/fake"
    assert payload["messages"][0]["role"] == "system" and "I am Sam." in payload["messages"][0]["content"]
    assert payload["messages"][-1] == {"role": "user", "content": "what's up?"}
    assert {t["function"]["name"] for t in payload["tools"]} == {"core_memory_append"}  # the init rule
    assert payload["tool_choice"] == {"type": "function", "function": {"name": "core_memory_append"}}
    assert llm.history == [] and "api_key" not in payload


async def test_compact_summarises_the_older_messages_and_keeps_the_newest() -> None:
    agent = make_agent()
    history = [Message(agent_id=agent.id, role="user" if i % 2 == 0 else "assistant", content=f"message {i} " * 20)
               for i in range(12)]
    llm = FunctionLLM(lambda messages, info: "They talked about numbers.")
    done = await compact(agent.model_copy(update={"message_ids": [m.id for m in history]}), history,
                         StepDeps(llm=llm), stats=MemoryStats())

    assert done.summary == "They talked about numbers."
    assert 0 < len(done.context) < 6 and done.context == history[-len(done.context):]
    assert done.context[0].role == "user"  # the kept part starts at a user message
    assert done.evicted_ids == [m.id for m in history[:-len(done.context)]]
    assert done.state.message_ids == [m.id for m in done.context]
    assert done.state.metadata["evicted_messages"] == len(done.evicted_ids)
    nothing = await compact(agent, history[:1], StepDeps(llm=llm), stats=MemoryStats())
    assert nothing.evicted_ids == [] and nothing.context == history[:1] and nothing.summary is None


def test_default_initial_messages_follow_the_agent_type() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    greeting, result, login = default_initial_messages(make_agent(), now)
    assert greeting.tool_calls[0].name == "send_message" and result.tool_call_id == greeting.tool_calls[0].id
    assert json.loads(result.content)["status"] == "OK"
    assert json.loads(login.content)["type"] == "login"
    [only] = default_initial_messages(make_agent("letta_v1_agent"), now)
    assert only.role == "user" and json.loads(only.content)["type"] == "login"
