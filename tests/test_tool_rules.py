"""Letta's tool rules and human approval in the step loop, each against a scripted LLM that
tries to break it (no Ray)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter

from letta_ray.agent import StepResult, step
from letta_ray.base_tools import DEFAULT_SYSTEM_PROMPTS, base_toolset
from letta_ray.deps import StepDeps
from letta_ray.errors import ConflictError, InvalidInputError
from letta_ray.messages import ApprovalDecision, MessageCreate
from letta_ray.schemas import (
    AgentState,
    ClientTool,
    ConditionalToolRule,
    LLMConfig,
    MaxCountPerStepToolRule,
    ParentToolRule,
    RequiredBeforeExitToolRule,
    RequiresApprovalToolRule,
    ToolRule,
)
from letta_ray.testing import ScriptedLLM, send_message, tool_call
from letta_ray.tools import Toolset, build_tool

RAN: list[str] = []


def check(item: str) -> str:
    """Check an item.

    Args:
        item: what to check
    """
    RAN.append(f"check {item}")
    return "ok" if item != "bad" else "broken"


def repair(item: str) -> str:
    """Repair an item.

    Args:
        item: what to repair
    """
    RAN.append(f"repair {item}")
    return "repaired"


def ship(item: str) -> str:
    """Ship an item.

    Args:
        item: what to ship
    """
    RAN.append(f"ship {item}")
    return "shipped"


def toolset() -> Toolset:
    tools = base_toolset()
    for fn in (check, repair, ship):
        tools.add(build_tool(fn))
    return tools


def agent(*rules: Any, **kw: Any) -> AgentState:
    return AgentState(name="sam", system=DEFAULT_SYSTEM_PROMPTS["memgpt_v2_agent"],
                      tools=["send_message", "check", "repair", "ship"], tool_rules=list(rules),
                      llm_config=LLMConfig(model="openai/fake"), **kw)


async def run(state: AgentState, llm: ScriptedLLM, inbound: Any = "go", context: list[Any] | None = None,
              **kw: Any) -> StepResult:
    messages = [MessageCreate(content=inbound)] if isinstance(inbound, str) else inbound
    RAN.clear()
    return await step(state, context or [], messages, StepDeps(llm=llm), toolset=toolset(), **kw)


def offered(llm: ScriptedLLM, index: int) -> list[str]:
    return [t["function"]["name"] for t in llm.history[index].tools]


def returns(result: StepResult) -> list[dict[str, Any]]:
    return [json.loads(m.content) for m in result.new_messages if m.role == "tool"]


def test_letta_shaped_rules_validate_and_round_trip() -> None:
    adapter = TypeAdapter(list[ToolRule])
    raw = [{"type": "parent_last_tool", "tool_name": "check", "children": ["repair"]},
           {"type": "conditional", "tool_name": "check", "default_child": "ship",
            "child_output_mapping": {"broken": "repair"}, "require_output_mapping": False,
            "prompt_template": "ignored"},
           {"type": "requires_approval", "tool_name": "ship"}]
    rules = adapter.validate_python(raw)
    assert [type(r).__name__ for r in rules] == ["ParentToolRule", "ConditionalToolRule", "RequiresApprovalToolRule"]
    assert adapter.validate_python(adapter.dump_python(rules, mode="json")) == rules
    with pytest.raises(ValueError, match="child_output_mapping"):
        adapter.validate_python([{"type": "conditional", "tool_name": "check", "child_output_mapping": {}}])


async def test_conditional_routes_on_the_tools_output_and_refuses_the_wrong_child() -> None:
    state = agent(ConditionalToolRule(tool_name="check", child_output_mapping={"broken": "repair", "ok": "ship"}))
    llm = ScriptedLLM([
        tool_call("check", item="bad", request_heartbeat=True),
        tool_call("ship", item="bad", request_heartbeat=True),  # the output was "broken": ship is not allowed
        tool_call("repair", item="bad", request_heartbeat=True),
        send_message("fixed"),
    ])
    result = await run(state, llm)
    assert offered(llm, 1) == ["repair"]
    assert llm.history[1].tool_choice == {"type": "function", "function": {"name": "repair"}}
    assert returns(result)[1]["status"] == "Failed" and "tool rules" in returns(result)[1]["message"]
    assert RAN == ["check bad", "repair bad"]
    ok = ScriptedLLM([tool_call("check", item="good", request_heartbeat=True), tool_call("ship", item="good")])
    await run(state, ok)
    assert offered(ok, 1) == ["ship"] and RAN == ["check good", "ship good"]


async def test_conditional_with_no_match_falls_back_to_the_default_or_to_nothing() -> None:
    lenient = ScriptedLLM([tool_call("check", item="bad", request_heartbeat=True), tool_call("ship", item="x")])
    await run(agent(ConditionalToolRule(tool_name="check", default_child="ship",
                                        child_output_mapping={"ok": "repair"})), lenient)
    assert offered(lenient, 1) == ["ship"]
    strict = ScriptedLLM([tool_call("check", item="bad", request_heartbeat=True), tool_call("ship", item="x"),
                          tool_call("ship", item="x"), tool_call("ship", item="x")])
    result = await run(agent(ConditionalToolRule(tool_name="check", child_output_mapping={"ok": "repair"},
                                                 require_output_mapping=True)), strict)
    assert offered(strict, 1) == []
    assert "ship x" not in RAN and result.stop_reason.stop_reason == "invalid_tool_call"


async def test_parent_last_tool_offers_its_children_only_right_after_it() -> None:
    state = agent(ParentToolRule(tool_name="check", children=["repair"]))
    llm = ScriptedLLM([
        tool_call("repair", item="a", request_heartbeat=True),  # before check: refused
        tool_call("check", item="a", request_heartbeat=True),
        tool_call("ship", item="a", request_heartbeat=True),  # right after check only repair is allowed
        tool_call("repair", item="a", request_heartbeat=True),
        send_message("done"),
    ])
    result = await run(state, llm)
    assert "repair" not in offered(llm, 0)
    assert offered(llm, 2) == ["repair"]
    assert [r["status"] for r in returns(result)][:3] == ["Failed", "OK", "Failed"]
    assert RAN == ["check a", "repair a"]
    assert "repair" not in offered(llm, 4)  # after repair (not check) it is hidden again


async def test_max_count_and_required_before_exit_hold_against_a_stubborn_model() -> None:
    state = agent(MaxCountPerStepToolRule(tool_name="check", max_count_limit=2),
                  RequiredBeforeExitToolRule(tool_name="ship"))
    llm = ScriptedLLM([tool_call("check", item=str(i), request_heartbeat=True) for i in range(3)]
                      + [send_message("bye"), tool_call("ship", item="z"), send_message("bye")])
    result = await run(state, llm)
    assert RAN == ["check 0", "check 1", "ship z"]
    assert "check" not in offered(llm, 2)
    assert any("must call: ship" in (m.content or "") for m in result.new_messages if m.role == "user")
    assert result.stop_reason.stop_reason == "end_turn"


async def test_a_call_that_needs_approval_stops_the_turn_until_it_is_approved() -> None:
    state = agent(RequiresApprovalToolRule(tool_name="ship"))
    llm = ScriptedLLM([tool_call("ship", item="crate", request_heartbeat=True), send_message("shipped it")])
    first = await run(state, llm)
    assert first.stop_reason.stop_reason == "requires_approval" and RAN == []
    [request] = [e for e in first.events if e.message_type == "approval_request_message"]
    assert request.tool_call.name == "ship" and json.loads(request.tool_call.arguments)["item"] == "crate"
    [pending] = first.state.pending_approvals
    assert pending.tool_call_id == request.tool_call.tool_call_id

    with pytest.raises(ConflictError, match="waiting for approval"):
        await run(first.state, llm, "an ordinary message", context=first.context)

    approval = MessageCreate(type="approval", approvals=[ApprovalDecision(tool_call_id=pending.tool_call_id,
                                                                          approve=True)])
    second = await run(first.state, llm, [approval], context=first.context)
    assert RAN == ["ship crate"]
    assert returns(second)[0]["status"] == "OK" and returns(second)[0]["message"] == "shipped"
    assert second.response().assistant_text() == "shipped it"
    assert second.state.pending_approvals == [] and second.stop_reason.stop_reason == "end_turn"
    # the model saw the call, then its result, in order
    roles = [m["role"] for m in llm.history[-1].messages[1:]]
    assert roles[-3:] == ["user", "assistant", "tool"]


async def test_a_denied_call_goes_back_to_the_model_as_a_failed_result_with_the_reason() -> None:
    state = agent(RequiresApprovalToolRule(tool_name="ship"))
    llm = ScriptedLLM([tool_call("ship", item="crate", request_heartbeat=True), send_message("ok, I won't")])
    first = await run(state, llm)
    request_id = first.new_messages[-1].id  # Letta's older form answers the request message by id
    denial = MessageCreate(type="approval", approve=False, approval_request_id=request_id, reason="not today")
    second = await run(first.state, llm, [denial], context=first.context)
    assert RAN == []
    result = returns(second)[0]
    assert result["status"] == "Failed" and "denied" in result["message"] and "not today" in result["message"]
    assert second.response().assistant_text() == "ok, I won't"


async def test_approvals_must_answer_exactly_what_waits() -> None:
    state = agent(RequiresApprovalToolRule(tool_name="ship"))
    llm = ScriptedLLM([tool_call("ship", item="crate", request_heartbeat=True)])
    with pytest.raises(InvalidInputError, match="no tool call waiting"):
        await run(state, llm, [MessageCreate(type="approval", approvals=[
            ApprovalDecision(tool_call_id="call-x", approve=True)])])
    first = await run(state, llm)
    with pytest.raises(InvalidInputError, match="waits for approval"):
        await run(first.state, llm, [MessageCreate(type="approval", approvals=[
            ApprovalDecision(tool_call_id="call-unknown", approve=True)])], context=first.context)
    with pytest.raises(ValueError, match="approval"):
        MessageCreate(content="hi", approvals=[ApprovalDecision(tool_call_id="c", approve=True)])


async def test_a_tools_default_requires_approval_holds_without_a_rule() -> None:
    tools = toolset()
    guarded = build_tool(ship)
    tools.add(type(guarded)(tool=guarded.tool.model_copy(update={"default_requires_approval": True}),
                            fn=guarded.fn, takes_context=False))
    llm = ScriptedLLM([tool_call("ship", item="a", request_heartbeat=True)])
    RAN.clear()
    result = await step(agent(), [], [MessageCreate(content="go")], StepDeps(llm=llm), toolset=tools)
    assert result.stop_reason.stop_reason == "requires_approval" and RAN == []


LOOKUP = ClientTool(name="look_up", description="Look a word up in the client's dictionary.",
                    parameters={"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]})


async def test_a_client_side_tool_stops_the_turn_and_its_result_comes_back_from_the_client() -> None:
    llm = ScriptedLLM([tool_call("look_up", word="ossify"), send_message("it means to harden")])
    first = await run(agent(), llm, client_tools=[LOOKUP])
    schema = next(t["function"] for t in llm.history[0].tools if t["function"]["name"] == "look_up")
    assert schema["parameters"]["properties"] == {"word": {"type": "string"}}  # as the client gave it
    assert first.stop_reason.stop_reason == "requires_approval"
    [request] = [e for e in first.events if e.message_type == "approval_request_message"]
    assert json.loads(request.tool_call.arguments) == {"word": "ossify"}
    [pending] = first.state.pending_approvals
    assert pending.client_side and "look_up" not in first.state.tools  # offered for that request only
    with pytest.raises(InvalidInputError, match="client-side tool: answer with its result"):
        await run(first.state, llm, [MessageCreate(type="approval", approvals=[
            ApprovalDecision(tool_call_id=pending.tool_call_id, approve=True)])], context=first.context)
    answer = MessageCreate(type="approval", approvals=[ApprovalDecision(
        type="tool", tool_call_id=pending.tool_call_id, tool_return="to turn into bone", status="success")])
    second = await run(first.state, llm, [answer], context=first.context)
    assert returns(second)[0] == {**returns(second)[0], "status": "OK", "message": "to turn into bone"}
    assert second.response().assistant_text() == "it means to harden"  # the turn went on to the reply
    assert second.state.pending_approvals == [] and second.stop_reason.stop_reason == "end_turn"
    assert "look_up" not in offered(llm, 1)  # the next request did not offer it again


async def test_a_client_tool_takes_the_place_of_an_agent_tool_of_its_name_and_errors_come_back() -> None:
    mine = ClientTool(name="check", description="Check it on the client.")
    llm = ScriptedLLM([tool_call("check", item="x"), send_message("it failed on your side")])
    first = await run(agent(), llm, client_tools=[mine])
    assert offered(llm, 0).count("check") == 1 and RAN == []  # the agent's own check did not run
    [pending] = first.state.pending_approvals
    answer = MessageCreate(type="approval", approvals=[ApprovalDecision(
        type="tool", tool_call_id=pending.tool_call_id, tool_return=[{"type": "text", "text": "disk full"}],
        status="error")])
    second = await run(first.state, llm, [answer], context=first.context)
    assert returns(second)[0]["status"] == "Failed" and returns(second)[0]["message"] == "disk full"
    with pytest.raises(ValueError, match="tool_return and status"):
        ApprovalDecision(type="tool", tool_call_id="c")
    with pytest.raises(ValueError, match="needs approve"):
        ApprovalDecision(tool_call_id="c")
