"""Agents messaging each other: replies, deadlock-free waits, tag broadcasts (no Ray)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from letta_ray.actors.archive import ArchiveActor, ArchiveHandle
from letta_ray.actors.embedder import EmbedderActor, EmbedderHandle
from letta_ray.actors.host import AgentHost
from letta_ray.actors.messaging import WaitGraph
from letta_ray.actors.metadata_store import MetadataStoreActor, MetadataStoreHandle
from letta_ray.base_tools import DEFAULT_SYSTEM_PROMPTS, DEFAULT_TOOLS, MULTI_AGENT_TOOLS
from letta_ray.errors import AgentCycleError
from letta_ray.messages import LettaResponse, MessageCreate
from letta_ray.schemas import AgentState, Block, EmbeddingConfig, LLMConfig
from letta_ray.testing import FunctionLLM, last_user_text, send_message, tool_call


class World:
    """Agents on local hosts with a shared wait graph: the Router of these tests."""

    def __init__(self, store: Any, archive: Any) -> None:
        self.store = store
        self.archive = archive
        self.hosts: dict[str, AgentHost] = {}
        self.ids: dict[str, str] = {}
        self.waits = WaitGraph()
        self.background: list[asyncio.Future[Any]] = []

    async def spawn(self, llm: FunctionLLM, names: list[str], *, tags: dict[str, list[str]] | None = None,
                    timeout: float = 5.0) -> None:
        """Host ``names`` on a new host (one host per call, so a world can span several)."""
        host = AgentHost(f"h{len(self.hosts)}", self.store, self.archive, llm=llm, router=self,
                         agent_call_timeout_s=timeout)
        states = [AgentState(name=n, system=DEFAULT_SYSTEM_PROMPTS["memgpt_v2_agent"],
                             tools=[*DEFAULT_TOOLS["memgpt_v2_agent"], *MULTI_AGENT_TOOLS],
                             blocks=[Block(label="persona", value=f"I am {n}.")], tags=(tags or {}).get(n, []),
                             llm_config=LLMConfig(model="openai/fake")) for n in names]
        await host.create_agents(states)
        for s in states:
            self.hosts[s.id] = host
            self.ids[s.name] = s.id

    async def send(self, name: str, text: str) -> LettaResponse:
        agent_id = self.ids[name]
        return await self.hosts[agent_id].send(agent_id, [MessageCreate(content=text)])

    # the Router protocol
    async def deliver(self, target_id: str, message: MessageCreate, *, wait: bool,
                      run_id: str | None = None) -> LettaResponse | None:
        turn = self.hosts[target_id].send(target_id, [message], run_id=run_id)
        if wait:
            return await turn
        self.background.append(asyncio.ensure_future(turn))
        return None

    async def wait_begin(self, waiter: str, target: str) -> None:
        self.waits.begin(waiter, target)

    async def wait_end(self, waiter: str, target: str) -> None:
        self.waits.end(waiter, target)

    async def find_by_tags(self, match_all: list[str], match_some: list[str]) -> list[str]:
        states = await self.store.list_agents(tags=match_all or match_some,
                                       match_all_tags=bool(match_all), limit=None)
        return [s.id for s in states if not match_some or set(match_some) & set(s.tags)]


def who(messages: list[dict[str, Any]]) -> str:
    return re.search(r"I am (\w+)\.", messages[0]["content"]).group(1)  # type: ignore[union-attr]


def scripted(plan: dict[str, Any]) -> FunctionLLM:
    """Agent ``name`` answers a user/agent message with ``plan[name](text)``; a tool result ends its turn."""

    def fn(messages: list[dict[str, Any]], info: Any) -> Any:
        me = who(messages)
        last = messages[-1]
        if last["role"] == "tool":
            return send_message(f"{me} got: {json.loads(last['content'])['message']}")
        return plan[me](last_user_text(messages))

    return FunctionLLM(fn)


@pytest.fixture
async def world(tmp_path: Path):
    meta = MetadataStoreActor(tmp_path / "meta.duckdb")
    embedder = EmbedderActor(EmbeddingConfig(embedding_model="hash", embedding_dim=64))
    archive = ArchiveActor(tmp_path / "archive", EmbedderHandle.local(embedder), dim=64)
    yield World(MetadataStoreHandle.local(meta), ArchiveHandle.local(archive))
    await meta.close()


def ask(world: World, target: str, message: str = "hello") -> Any:
    return lambda text: tool_call("send_message_to_agent_and_wait_for_reply", message=message,
                                  other_agent_id=world.ids[target], request_heartbeat=True)


def tool_results(response: LettaResponse) -> list[str]:
    return [json.loads(m.tool_return)["message"] for m in response.messages
            if m.message_type == "tool_return_message"]


async def test_a_reply_is_fetched_from_another_agent(world: World) -> None:
    llm = scripted({"alice": ask(world, "bob", "what is 6*7?"), "bob": lambda text: send_message("42")})
    await world.spawn(llm, ["alice"])
    await world.spawn(llm, ["bob"])  # on another host
    response = await world.send("alice", "ask bob")
    assert response.assistant_text() == "alice got: 42"
    bob_saw = next(c.messages[-1]["content"] for c in llm.history if who(c.messages) == "bob")
    assert f"from agent {world.ids['alice']}" in bob_saw and "what is 6*7?" in bob_saw


async def test_a_two_agent_wait_cycle_fails_fast_instead_of_hanging(world: World) -> None:
    llm = scripted({"alice": ask(world, "bob"), "bob": ask(world, "alice")})
    await world.spawn(llm, ["alice", "bob"], timeout=30.0)
    started = time.monotonic()
    response = await world.send("alice", "start")
    assert time.monotonic() - started < 5.0  # far below the 30 s timeout: refused, not timed out
    # bob's wait on alice was refused as a cycle; alice got bob's answer about it
    [alice_result] = tool_results(response)
    assert "would never end" in alice_result and "deadlock" in alice_result
    assert world.waits.edges == {}


async def test_a_three_agent_wait_cycle_fails_fast(world: World) -> None:
    llm = scripted({"a": ask(world, "b"), "b": ask(world, "c"), "c": ask(world, "a")})
    await world.spawn(llm, ["a", "b", "c"], timeout=30.0)
    started = time.monotonic()
    response = await world.send("a", "start")
    assert time.monotonic() - started < 5.0
    [result] = tool_results(response)
    assert "deadlock" in result and world.ids["c"] in result
    assert world.waits.edges == {}


async def test_two_users_make_two_agents_wait_on_each_other(world: World) -> None:
    """Independent turns of A and B each wait on the other: one is refused, both finish."""
    gate = asyncio.Event()

    async def slow_ask(target: str) -> Any:
        await gate.wait()
        return tool_call("send_message_to_agent_and_wait_for_reply", message="hi", other_agent_id=world.ids[target],
                         request_heartbeat=True)

    def fn(messages: list[dict[str, Any]], info: Any) -> Any:
        me, last = who(messages), messages[-1]
        if last["role"] == "tool":
            return send_message(f"{me} done")
        if "from agent" in last_user_text(messages):
            return send_message(f"{me} answers")
        return slow_ask("bob" if me == "alice" else "alice")

    await world.spawn(FunctionLLM(fn), ["alice", "bob"], timeout=3.0)
    turns = [asyncio.ensure_future(world.send("alice", "go")), asyncio.ensure_future(world.send("bob", "go"))]
    await asyncio.sleep(0.05)
    gate.set()
    started = time.monotonic()
    done = await asyncio.wait_for(asyncio.gather(*turns), 10)
    assert time.monotonic() - started < 8.0
    results = [r for response in done for r in tool_results(response)]
    assert any("deadlock" in r for r in results)
    assert all(response.stop_reason.stop_reason == "end_turn" for response in done)


async def test_a_wait_times_out_with_a_failed_tool_result(world: World) -> None:
    async def sleepy(text: str) -> Any:
        await asyncio.sleep(2.0)
        return send_message("too late")

    llm = scripted({"alice": ask(world, "bob"), "bob": lambda text: sleepy(text)})
    await world.spawn(llm, ["alice", "bob"], timeout=0.5)
    response = await world.send("alice", "ask bob")
    [result] = tool_results(response)
    assert "did not reply in time" in result
    assert world.waits.edges == {}


async def test_tag_broadcast_reaches_exactly_the_matching_agents(world: World) -> None:
    def boss(text: str) -> Any:
        return tool_call("send_message_to_agents_matching_tags", message="status?", match_all=["team-a"],
                         match_some=["backend", "frontend"], request_heartbeat=True)

    def worker(name: str) -> Any:
        return lambda text: send_message(f"{name} ok")

    replies = {n: worker(n) for n in ["w1", "w2", "w3", "w4"]}
    llm = scripted({"boss": boss, **replies})
    await world.spawn(llm, ["boss", "w1", "w2", "w3", "w4"], tags={
        "boss": ["team-a", "backend"],           # the sender itself is never messaged
        "w1": ["team-a", "backend"],             # matches
        "w2": ["team-a", "frontend", "x"],       # matches
        "w3": ["team-a"],                        # lacks a match_some tag
        "w4": ["team-b", "backend"],             # lacks team-a
    })
    response = await world.send("boss", "collect status")
    [result] = tool_results(response)
    assert sorted(line.split(": ", 1)[1] for line in result.splitlines()) == ["w1 ok", "w2 ok"]
    asked = {who(c.messages) for c in llm.history if "status?" in last_user_text(c.messages)}
    assert asked == {"w1", "w2"}


async def test_async_send_returns_at_once_and_the_message_arrives(world: World) -> None:
    llm = scripted({
        "alice": lambda text: tool_call("send_message_to_agent_async", message="fyi", other_agent_id=world.ids["bob"],
                                        request_heartbeat=True),
        "bob": lambda text: send_message("noted"),
    })
    await world.spawn(llm, ["alice", "bob"])
    response = await world.send("alice", "tell bob")
    assert "Sent to" in tool_results(response)[0]
    await asyncio.gather(*world.background)
    bob_history = await world.store.list_messages(world.ids["bob"], limit=10)
    assert any("fyi" in (m.content or "") for m in bob_history)


def test_the_wait_graph_refuses_only_cycles() -> None:
    graph = WaitGraph()
    graph.begin("a", "b")
    graph.begin("b", "c")
    graph.begin("x", "c")  # many may wait on one
    with pytest.raises(AgentCycleError, match="c -> a -> b -> c"):
        graph.begin("c", "a")
    graph.end("b", "c")
    graph.begin("c", "a")  # no cycle any more
    with pytest.raises(AgentCycleError):
        graph.begin("a", "a")


async def test_two_agents_appending_to_one_shared_block_at_once_both_land(world: World) -> None:
    gate = asyncio.Event()

    async def append(me: str) -> Any:
        await gate.wait()  # both turns edit at the same moment
        return tool_call("memory_insert", label="team", new_str=f"{me} was here", request_heartbeat=True)

    def fn(messages: list[dict[str, Any]], info: Any) -> Any:
        me, last = who(messages), messages[-1]
        if last["role"] == "tool":
            return send_message("ok")
        if "what do we know" in last_user_text(messages):
            return send_message(messages[0]["content"])  # echo the system prompt: what the agent sees
        return append(me)

    llm = FunctionLLM(fn)
    await world.spawn(llm, ["alice"])
    await world.spawn(llm, ["bob"])  # another host: no shared memory between them but the store
    team = Block(label="team", value="Team notes:", limit=500)
    await world.store.upsert_block(team)
    for name in ("alice", "bob"):
        await world.store.attach_block(world.ids[name], team.id)
        await world.hosts[world.ids[name]].reload(world.ids[name])
    turns = [asyncio.ensure_future(world.send(n, "note it")) for n in ("alice", "bob")]
    await asyncio.sleep(0.05)
    gate.set()
    done = await asyncio.gather(*turns)
    results = [r for response in done for r in tool_results(response)]
    assert len(results) == 2 and all(r.startswith("The memory block 'team' was edited") for r in results)

    stored = await world.store.get_block(team.id)
    assert sorted(stored.value.splitlines()) == sorted(["Team notes:", "alice was here", "bob was here"])
    # each agent sees the other's edit at its next step
    for name in ("alice", "bob"):
        seen = (await world.send(name, "what do we know?")).assistant_text()
        assert "alice was here" in seen and "bob was here" in seen
    # and the agents' own saved state did not roll the block back
    for name in ("alice", "bob"):
        assert (await world.store.get_agent(world.ids[name])).block("team").value == stored.value
