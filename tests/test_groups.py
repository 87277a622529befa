"""Groups: round robin, dynamic and supervisor policies (core, no Ray), then on Ray via GroupsAPI."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import Counter
from typing import Any

import pytest

from letta_ray.agent import step
from letta_ray.base_tools import DEFAULT_SYSTEM_PROMPTS, DEFAULT_TOOLS, base_toolset
from letta_ray.deps import StepDeps
from letta_ray.errors import InvalidInputError, LLMError, NotFoundError
from letta_ray.group_policies import (
    GROUP_TOOL,
    DynamicManager,
    Group,
    Participant,
    SupervisorManager,
    group_tag,
    pick_speaker,
    run_group,
    stored_events,
)
from letta_ray.messages import (
    AssistantMessage,
    LettaMessage,
    LettaResponse,
    Message,
    MessageCreate,
    ToolCallMessage,
    ToolReturnMessage,
)
from letta_ray.schemas import AgentState, Block, LLMConfig
from letta_ray.testing import FunctionLLM, last_user_text, send_message, tool_call

# --------------------------------------------------------------------------- a roster of core agents


class Roster:
    """Agents run by the core ``step`` on one fake LLM, no Ray and no stores.

    It is the policies' ``GroupMembers`` and ``TurnLog``, and the agents' ``Messenger``.
    """

    def __init__(self, llm: FunctionLLM) -> None:
        self.llm = llm
        self.states: dict[str, AgentState] = {}
        self.contexts: dict[str, list[Message]] = {}
        self.stored: dict[str, list[Message]] = {}
        self.inputs: list[tuple[str, list[str]]] = []  # (agent name, texts it was sent), in order
        self.ids: dict[str, str] = {}

    def add(self, name: str, *, tools: tuple[str, ...] = (), tags: tuple[str, ...] = (),
            metadata: dict[str, Any] | None = None) -> str:
        state = AgentState(name=name, system=DEFAULT_SYSTEM_PROMPTS["memgpt_v2_agent"],
                           tools=[*DEFAULT_TOOLS["memgpt_v2_agent"], *tools], tags=list(tags),
                           metadata=metadata or {}, blocks=[Block(label="persona", value=f"I am {name}.")],
                           llm_config=LLMConfig(model="openai/fake"))
        self.states[state.id], self.contexts[state.id], self.stored[state.id] = state, [], []
        self.ids[name] = state.id
        return state.id

    @property
    def names(self) -> dict[str, str]:
        return {a: s.name for a, s in self.states.items()}

    def participants(self, *names: str) -> list[Participant]:
        return [Participant(self.ids[n], n) for n in names]

    # GroupMembers
    async def send(self, agent_id: str, messages: list[MessageCreate]) -> LettaResponse:
        state = self.states[agent_id]
        self.inputs.append((state.name, [m.text() for m in messages]))
        result = await step(state, self.contexts[agent_id], messages, StepDeps(llm=self.llm, messenger=self),
                            toolset=base_toolset(state.tools))
        self.states[agent_id], self.contexts[agent_id] = result.state, result.context
        self.stored[agent_id] += result.new_messages
        return result.response()

    # Messenger (only what the group tool uses)
    async def broadcast(self, sender_id: str, text: str, match_all: list[str],
                        match_some: list[str]) -> list[tuple[str, str]]:
        targets = [a for a, s in self.states.items() if a != sender_id and set(match_all) <= set(s.tags)]
        replies = await asyncio.gather(*(self.send(t, [MessageCreate(content=f"[from {sender_id}] {text}",
                                                                     sender_id=sender_id)]) for t in targets))
        return [(t, r.assistant_text()) for t, r in zip(targets, replies, strict=True)]

    # TurnLog
    async def position(self, agent_id: str) -> str | None:
        return self.stored[agent_id][-1].id if self.stored[agent_id] else None

    async def events_after(self, agent_id: str, position: str | None) -> list[LettaMessage]:
        messages = self.stored[agent_id]
        start = next((i + 1 for i, m in enumerate(messages) if m.id == position), 0)
        return stored_events(messages[start:], uses_send_message=True)

    def said_to(self, name: str) -> list[list[str]]:
        return [texts for who, texts in self.inputs if who == name]


def who(messages: list[dict[str, Any]]) -> str:
    return re.search(r"I am (\w+)\.", messages[0]["content"]).group(1)  # type: ignore[union-attr]


def speakers(response: LettaResponse) -> list[str]:
    """Whose assistant messages the group response holds, in order."""
    return [m.name or "" for m in response.messages if isinstance(m, AssistantMessage)]


def counting_replies(messages: list[dict[str, Any]], info: Any, counts: Counter[str]) -> Any:
    me = who(messages)
    counts[me] += 1
    return send_message(f"{me} #{counts[me]}")


# --------------------------------------------------------------------------- round robin


async def test_round_robin_takes_turns_in_order_for_max_turns_and_each_sees_what_it_missed() -> None:
    counts: Counter[str] = Counter()
    roster = Roster(FunctionLLM(lambda m, i: counting_replies(m, i, counts)))
    a, b, c = (roster.add(n) for n in ("ann", "bob", "cat"))
    group = Group.create([a, b, c], {"manager_type": "round_robin", "max_turns": 5})

    turn = await run_group(group, [MessageCreate(content="plan the party")], roster, roster.names)

    assert speakers(turn.response) == ["ann", "bob", "cat", "ann", "bob"]
    assert [m.content for m in turn.response.messages if isinstance(m, AssistantMessage)] == [
        "ann #1", "bob #1", "cat #1", "ann #2", "bob #2"]
    assert turn.response.stop_reason.stop_reason == "end_turn"
    assert turn.response.usage.step_count == 5 and turn.response.usage.total_tokens > 0
    assert all(m.sender_id == roster.ids[m.name or ""] for m in turn.response.messages)
    # each speaker is sent exactly what was said since it last spoke, with who said it
    assert roster.said_to("ann") == [["plan the party"], ["bob: bob #1", "cat: cat #1"]]
    assert roster.said_to("bob") == [["plan the party", "ann: ann #1"], ["cat: cat #1", "ann: ann #2"]]
    assert roster.said_to("cat") == [["plan the party", "ann: ann #1", "bob: bob #1"]]
    # ... and what it did not hear yet is kept for the next run
    assert {roster.names[k]: [u.line() for u in v] for k, v in turn.backlog.items()} == {
        "ann": ["bob: bob #2"], "cat": ["ann: ann #2", "bob: bob #2"]}


async def test_round_robin_hands_the_backlog_over_on_the_next_run_and_defaults_to_one_turn_each() -> None:
    counts: Counter[str] = Counter()
    roster = Roster(FunctionLLM(lambda m, i: counting_replies(m, i, counts)))
    a, b = roster.add("ann"), roster.add("bob")
    group = Group.create([a, b])  # round robin, max_turns: each agent once

    first = await run_group(group, [MessageCreate(content="hi")], roster, roster.names)
    assert speakers(first.response) == ["ann", "bob"]
    second = await run_group(group, [MessageCreate(content="again")], roster, roster.names, backlog=first.backlog)
    assert speakers(second.response) == ["ann", "bob"]
    assert roster.said_to("ann")[-1] == ["bob: bob #1", "again"]  # what it missed last time comes first


async def test_a_failed_turn_stops_the_group_and_says_whose_it_was() -> None:
    def fn(messages: list[dict[str, Any]], info: Any) -> Any:
        if who(messages) == "bob":
            raise LLMError("provider down", status_code=503)
        return send_message("fine")

    roster = Roster(FunctionLLM(fn))
    ids = [roster.add(n) for n in ("ann", "bob", "cat")]
    turn = await run_group(Group.create(ids), [MessageCreate(content="go")], roster, roster.names)
    assert turn.response.stop_reason.stop_reason == "llm_api_error"
    assert f"bob ({ids[1]})" in (turn.response.stop_reason.detail or "")
    assert [who for who, _ in roster.inputs] == ["ann", "bob"]  # cat never spoke


# --------------------------------------------------------------------------- dynamic


def dynamic_llm(choices: list[str], counts: Counter[str]) -> FunctionLLM:
    """The manager 'mod' answers each question with the next of ``choices``; others count their turns."""
    answers = iter(choices)

    def fn(messages: list[dict[str, Any]], info: Any) -> Any:
        if who(messages) == "mod":
            return send_message(next(answers))
        return counting_replies(messages, info, counts)

    return FunctionLLM(fn)


async def test_dynamic_manager_chooses_the_speakers_and_stops_on_the_termination_token() -> None:
    counts: Counter[str] = Counter()
    roster = Roster(dynamic_llm(["bob should answer that", "ANN", "cat", "DONE"], counts))
    mod = roster.add("mod")
    ann, bob, cat = (roster.add(n) for n in ("ann", "bob", "cat"))
    group = Group.create([ann, bob, cat], DynamicManager(manager_agent_id=mod, max_turns=10))

    turn = await run_group(group, [MessageCreate(content="who knows?")], roster, roster.names)

    assert [s for s in speakers(turn.response) if s != "mod"] == ["bob", "ann", "cat"]
    assert speakers(turn.response) == ["mod", "bob", "mod", "ann", "mod", "cat", "mod"]
    assert turn.response.stop_reason.stop_reason == "end_turn"
    assert turn.response.usage.step_count == 7  # manager turns count too
    # the manager is shown every participant by name and id, and the transcript so far
    last_question = roster.said_to("mod")[-1][0]
    for name in ("ann", "bob", "cat"):
        assert f"{name} (id {roster.ids[name]})" in last_question
    assert "who knows?" in last_question and "bob: bob #1\nann: ann #1\ncat: cat #1" in last_question
    assert "reply with only DONE" in last_question
    assert roster.said_to("ann") == [["who knows?", "bob: bob #1"]]


async def test_dynamic_group_stops_at_max_turns_without_the_token() -> None:
    counts: Counter[str] = Counter()
    roster = Roster(dynamic_llm(["bob"] * 5, counts))
    mod, ann, bob = roster.add("mod"), roster.add("ann"), roster.add("bob")
    group = Group.create([ann, bob], {"manager_type": "dynamic", "manager_agent_id": mod, "max_turns": 2,
                                      "termination_token": "FIN"})

    turn = await run_group(group, [MessageCreate(content="go")], roster, roster.names)

    assert speakers(turn.response) == ["mod", "bob", "mod", "bob"]
    assert turn.response.stop_reason.stop_reason == "max_steps"
    assert "max_turns=2" in (turn.response.stop_reason.detail or "")
    assert roster.said_to("bob")[1] == ["[group] It is your turn again, bob; nobody has spoken since your last turn."]


async def test_dynamic_manager_is_corrected_once_then_the_run_fails_clearly() -> None:
    counts: Counter[str] = Counter()
    roster = Roster(dynamic_llm(["hmm", "ann", "no idea", "still no idea"], counts))
    mod, ann = roster.add("mod"), roster.add("ann")
    group = Group.create([ann], {"manager_type": "dynamic", "manager_agent_id": mod, "max_turns": 3})

    turn = await run_group(group, [MessageCreate(content="go")], roster, roster.names)

    assert speakers(turn.response) == ["mod", "mod", "ann", "mod", "mod"]
    assert "names no participant" in roster.said_to("mod")[1][0]
    assert turn.response.stop_reason.stop_reason == "error"
    assert "named no participant" in (turn.response.stop_reason.detail or "")


def test_pick_speaker_prefers_the_token_then_ids_then_the_first_name_mentioned() -> None:
    ann, anna = Participant("agent-1", "ann"), Participant("agent-2", "anna")
    people = [ann, anna]
    assert pick_speaker("anna, then ann", people, "DONE") is anna
    assert pick_speaker("Ann!", people, "DONE") is ann
    assert pick_speaker("agent-2 (not ann)", people, "DONE") is anna
    assert pick_speaker("ann. DONE", people, "DONE") == "DONE"
    assert pick_speaker("joanne", people, "DONE") is None


# --------------------------------------------------------------------------- supervisor


def supervisor_llm() -> FunctionLLM:
    """'boss' fans the question out, then sums the replies up; every worker answers in character."""

    def fn(messages: list[dict[str, Any]], info: Any) -> Any:
        me, last = who(messages), messages[-1]
        if me == "boss":
            if last["role"] == "tool":
                return send_message("Summary: " + json.loads(last["content"])["message"].replace("\n", " | "))
            return tool_call(GROUP_TOOL, message=f"your view on: {last_user_text(messages)}", request_heartbeat=True)
        return send_message(f"{me} says yes")

    return FunctionLLM(fn)


async def test_supervisor_collects_the_replies_of_three_workers() -> None:
    roster = Roster(supervisor_llm())
    group_id = "group-test"
    boss = roster.add("boss", tools=(GROUP_TOOL,), metadata={"group_id": group_id})
    workers = [roster.add(n, tags=(group_tag(group_id),)) for n in ("w1", "w2", "w3")]
    roster.add("outsider")  # not in the group: never asked
    group = Group(id=group_id, **SupervisorManager(manager_agent_id=boss).model_dump(), agent_ids=workers)

    turn = await run_group(group, [MessageCreate(content="ship it?")], roster, roster.names, log=roster)

    response = turn.response
    assert response.stop_reason.stop_reason == "end_turn"
    kinds = [(m.message_type, m.name) for m in response.messages]
    assert kinds == [("tool_call_message", "boss"),
                     ("assistant_message", "w1"), ("assistant_message", "w2"), ("assistant_message", "w3"),
                     ("tool_return_message", GROUP_TOOL), ("assistant_message", "boss")]
    assert [m.sender_id for m in response.messages] == [boss, *workers, boss, boss]
    [call] = [m for m in response.messages if isinstance(m, ToolCallMessage)]
    assert json.loads(call.tool_call.arguments)["message"] == "your view on: ship it?"
    [ret] = [m for m in response.messages if isinstance(m, ToolReturnMessage)]
    collected = json.loads(ret.tool_return)["message"]
    assert collected.splitlines() == [f"{w}: {n} says yes" for w, n in zip(workers, ("w1", "w2", "w3"), strict=True)]
    assert response.messages[-1].content.startswith("Summary: ")  # type: ignore[union-attr]
    assert all(f"{n} says yes" in response.messages[-1].content for n in ("w1", "w2", "w3"))  # type: ignore[union-attr]
    assert response.usage.step_count == 2  # the boss's steps: the workers' usage does not come back through messaging
    assert roster.said_to("outsider") == []
    assert all(texts == [f"[from {boss}] your view on: ship it?"] for texts in
               (roster.said_to(n)[0] for n in ("w1", "w2", "w3")))


async def test_the_group_tool_fails_back_to_a_manager_without_a_group() -> None:
    def fn(messages: list[dict[str, Any]], info: Any) -> Any:
        if messages[-1]["role"] == "tool":
            return send_message(json.loads(messages[-1]["content"])["message"])
        return tool_call(GROUP_TOOL, message="anyone?", request_heartbeat=True)

    roster = Roster(FunctionLLM(fn))
    lone = roster.add("lone", tools=(GROUP_TOOL,))
    response = await roster.send(lone, [MessageCreate(content="go")])
    assert "You do not supervise a group" in response.assistant_text()


# --------------------------------------------------------------------------- schema


def test_group_schema_is_letta_shaped_and_validates() -> None:
    group = Group.create(["agent-a", "agent-b"], {"manager_type": "dynamic", "manager_agent_id": "agent-m"})
    assert group.id.startswith("group-") and group.manager_type == "dynamic"
    assert group.termination_token == "DONE" and group.max_turns is None and group.turns == 2
    assert group.manager_config == DynamicManager(manager_agent_id="agent-m")
    assert Group.from_doc(group.to_doc()) == group
    # the create shape (manager_config nested) reads back too, as the sleep-time pairing stores it
    nested = Group.model_validate({"id": "group-x", "agent_ids": ["agent-s"], "description": "",
                                   "manager_config": {"manager_type": "sleeptime", "manager_agent_id": "agent-m",
                                                      "sleeptime_agent_frequency": 3}})
    assert (nested.manager_type, nested.sleeptime_agent_frequency) == ("sleeptime", 3)
    with pytest.raises(InvalidInputError, match="cannot also be one of the group's agent_ids"):
        Group.create(["agent-m"], {"manager_type": "supervisor", "manager_agent_id": "agent-m"})
    with pytest.raises(InvalidInputError, match="at least one agent"):
        Group.create([])
    with pytest.raises(InvalidInputError, match="manager_type"):
        Group.create(["agent-a"], {"manager_type": "swarm"})
    with pytest.raises(InvalidInputError, match="manager_agent_id"):
        Group.create(["agent-a"], {"manager_type": "supervisor"})
    with pytest.raises(InvalidInputError, match="more than once"):
        Group.create(["agent-a", "agent-a"])


# --------------------------------------------------------------------------- on Ray, through GroupsAPI


def group_responder(messages: list[dict[str, Any]], info: Any) -> Any:
    """The fake model behind the Ray tests: 'boss' supervises, 'mod' moderates, the rest answer."""
    me, last = who(messages), messages[-1]
    text = last_user_text(messages)
    if me == "boss":
        if last["role"] == "tool":
            return send_message("Summary: " + json.loads(last["content"])["message"].replace("\n", " | "))
        return tool_call(GROUP_TOOL, message=f"your view on: {text}", request_heartbeat=True)
    if me == "mod":  # the second participant speaks until two turns were taken
        roster = re.findall(r"^- (\S+) \(id ", text, flags=re.MULTILINE)
        said = re.findall(r"^(\S+): ", text.split("Transcript so far:")[-1], flags=re.MULTILINE)
        return send_message("DONE" if sum(s in roster for s in said) >= 2 else roster[1])
    return send_message(f"{me} says yes")


@pytest.fixture(scope="module")
def group_llm_server():
    from letta_ray.fake_llm_server import FakeOpenAIServer

    with FakeOpenAIServer(group_responder) as server:
        yield server


@pytest.fixture
def groups(client: Any) -> Any:
    return client.groups


def ray_agent(client: Any, server: Any, persona: str) -> Any:
    return client.create_agent(f"{persona}-{uuid.uuid4().hex[:6]}", model="fake-model", model_endpoint=server.url,
                               memory_blocks=[{"label": "persona", "value": f"I am {persona}."}])


def assistant_names(response: LettaResponse) -> list[str]:
    return [m.name or "" for m in response.messages if isinstance(m, AssistantMessage)]


@pytest.mark.ray
def test_a_supervisor_collects_three_workers_replies_on_ray(client: Any, groups: Any, group_llm_server: Any) -> None:
    boss = ray_agent(client, group_llm_server, "boss")
    workers = [ray_agent(client, group_llm_server, f"w{i}") for i in (1, 2, 3)]
    group = groups.create_group([w.id for w in workers], {"manager_type": "supervisor", "manager_agent_id": boss.id},
                                description="release council")

    assert groups.get_group(group.id) == group
    assert group.id in [g.id for g in groups.list_groups(manager_type="supervisor", limit=None)]
    assert GROUP_TOOL in boss.state().tools and boss.state().metadata["group_id"] == group.id
    assert all(group_tag(group.id) in w.state().tags for w in workers)

    response = groups.send_group(group.id, "ship it?")

    assert response.stop_reason.stop_reason == "end_turn"
    assert [m.message_type for m in response.messages] == [
        "tool_call_message", "assistant_message", "assistant_message", "assistant_message",
        "tool_return_message", "assistant_message"]
    assert assistant_names(response) == [*(w.name for w in workers), boss.name]
    assert [(m.sender_id, m.content) for m in response.messages[1:4]] == [  # type: ignore[union-attr]
        (w.id, f"w{i} says yes") for i, w in enumerate(workers, 1)]
    final = response.messages[-1].content  # type: ignore[union-attr]
    assert final.startswith("Summary: ") and all(f"{w.id}: w{i} says yes" in final for i, w in enumerate(workers, 1))
    assert response.usage.step_count == 2  # the boss's own steps

    groups.delete_group(group.id)
    with pytest.raises(NotFoundError):
        groups.get_group(group.id)
    assert GROUP_TOOL not in boss.state().tools and "group_id" not in boss.state().metadata
    assert not any(group_tag(group.id) in w.state().tags for w in workers)


@pytest.mark.ray
def test_round_robin_and_dynamic_groups_on_ray(client: Any, groups: Any, group_llm_server: Any) -> None:
    ann, bob = ray_agent(client, group_llm_server, "ann"), ray_agent(client, group_llm_server, "bob")
    rr = groups.create_group([ann.id, bob.id], {"manager_type": "round_robin", "max_turns": 3})
    response = groups.send_group(rr.id, "hello")
    assert assistant_names(response) == [ann.name, bob.name, ann.name]
    assert response.usage.step_count == 3
    # bob missed ann's last words: they are kept with the group and reach bob on the next run
    backlog = client.run_sync(client.runtime.store.get_group(rr.id))["backlog"]
    assert [u["text"] for u in backlog[bob.id]] == ["ann says yes"] and ann.id not in backlog
    groups.send_group(rr.id, "again")
    bob_heard = [m.content for m in bob.messages(limit=50) if m.role == "user"]
    assert bob_heard[-3:] == [f"{ann.name}: ann says yes", "again", f"{ann.name}: ann says yes"]

    mod = ray_agent(client, group_llm_server, "mod")
    dyn = groups.create_group([ann.id, bob.id], {"manager_type": "dynamic", "manager_agent_id": mod.id,
                                                 "max_turns": 5})
    response = groups.send_group(dyn.id, "discuss")
    assert assistant_names(response) == [mod.name, bob.name, mod.name, bob.name, mod.name]
    assert response.stop_reason.stop_reason == "end_turn"

    with pytest.raises(InvalidInputError, match="sleep-time"):
        groups.create_group([ann.id], {"manager_type": "sleeptime", "manager_agent_id": mod.id})
    with pytest.raises(NotFoundError):
        groups.create_group([ann.id, "agent-00000000-0000-0000-0000-000000000000"])
