"""The step loop against real stores (DuckDB recall, LanceDB archive) and real litellm."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from letta_ray.agent import step
from letta_ray.base_tools import DEFAULT_SYSTEM_PROMPTS, DEFAULT_TOOLS, base_toolset
from letta_ray.deps import StepDeps
from letta_ray.embeddings import HashEmbedder
from letta_ray.fake_llm_server import FakeOpenAIServer
from letta_ray.messages import Message, MessageCreate
from letta_ray.schemas import AgentState, Block, LLMConfig, Passage
from letta_ray.storage.archive import ArchivalStore, EmbeddedArchive
from letta_ray.storage.messages import EmbeddedRecall
from letta_ray.storage.metadata import MetadataStore
from letta_ray.testing import ScriptedLLM, send_message, tool_call


def agent(**kw: Any) -> AgentState:
    return AgentState(name="sam", system=DEFAULT_SYSTEM_PROMPTS["memgpt_v2_agent"],
                      tools=DEFAULT_TOOLS["memgpt_v2_agent"] + ["core_memory_append"],
                      blocks=[Block(label="human", value="Name: Ada", limit=500)],
                      llm_config=kw.pop("llm_config", LLMConfig(model="openai/fake")), **kw)


def tool_result(result: Any, name: str) -> dict[str, Any]:
    [message] = [m for m in result.new_messages if m.role == "tool" and m.name == name]
    return json.loads(message.content)


async def test_conversation_search_finds_a_message_said_500_messages_ago(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "meta.duckdb", fts_rebuild_threshold=100)
    state = agent()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    old = [Message(agent_id=state.id, role="user" if i % 2 == 0 else "assistant",
                   content=f"small talk number {i} about the weather", created_at=start + timedelta(minutes=i))
           for i in range(600)]
    old[100] = old[100].model_copy(update={"content": "my pelican is called Gregory", "role": "user"})
    store.messages.append_messages(old[:300])
    store.messages.append_messages(old[300:])
    llm = ScriptedLLM([
        tool_call("conversation_search", query="pelican", roles=["user"], request_heartbeat=True),
        send_message("Your pelican is Gregory."),
    ])
    deps = StepDeps(llm=llm, recall=EmbeddedRecall(store.messages))
    result = await step(state, [], [MessageCreate(content="what was my pelican called?")], deps,
                        toolset=base_toolset())
    found = tool_result(result, "conversation_search")
    assert found["status"] == "OK"
    assert "my pelican is called Gregory" in found["message"]
    assert "weather" not in found["message"]
    # the memory metadata told the model how much recall holds
    assert "600 earlier messages are in recall memory" in llm.history[0].messages[0]["content"]
    # date filters: nothing before 2024 matches
    llm2 = ScriptedLLM([tool_call("conversation_search", query="pelican", end_date="2023-12-31",
                                  request_heartbeat=True), send_message("none")])
    result2 = await step(state, [], [MessageCreate(content="and in 2023?")], StepDeps(llm=llm2, recall=deps.recall),
                         toolset=base_toolset())
    assert tool_result(result2, "conversation_search")["message"] == "No messages matched."
    store.close()


async def test_archival_insert_then_hybrid_search_with_tag_and_date_filters(tmp_path: Path) -> None:
    store = ArchivalStore(tmp_path / "archive", dim=384)
    archive = EmbeddedArchive(store, HashEmbedder(384))
    state = agent()
    embedder = HashEmbedder(384)
    seeded = [("Ada's brother Tom lives in Berlin", ["family"], datetime(2023, 5, 1, tzinfo=UTC)),
              ("Ada's sister Eva lives in Porto", ["family", "travel"], datetime(2024, 6, 1, tzinfo=UTC)),
              ("Ada booked a flight to Porto", ["travel"], datetime(2024, 7, 1, tzinfo=UTC))]
    store.insert([Passage(agent_id=state.id, text=t, tags=tags, created_at=when, embedding=v)
                  for (t, tags, when), v in zip(seeded, await embedder.embed([s[0] for s in seeded]), strict=True)])
    llm = ScriptedLLM([
        tool_call("archival_memory_insert", content="Ada's sister Eva has a dog", tags=["family"],
                  request_heartbeat=True),
        tool_call("archival_memory_search", query="where does the sister live", tags=["family", "travel"],
                  tag_match_mode="all", request_heartbeat=True),
        tool_call("archival_memory_search", query="lives in", tags=["family"],
                  start_datetime="2024-01-01", end_datetime="2024-12-31", request_heartbeat=True),
        tool_call("archival_memory_search", query="Eva dog", request_heartbeat=True),
        send_message("Eva lives in Porto."),
    ])
    result = await step(state, [], [MessageCreate(content="where does my sister live?")],
                        StepDeps(llm=llm, archive=archive), toolset=base_toolset())
    assert result.stop_reason.stop_reason == "end_turn"
    returns = [json.loads(m.content) for m in result.new_messages if m.role == "tool"]
    assert returns[0]["status"] == "OK" and await archive.count(state.id) == 4
    all_tags = returns[1]["message"].splitlines()
    assert len(all_tags) == 1 and "Eva lives in Porto" in all_tags[0]
    dated = returns[2]["message"]
    assert "Eva lives in Porto" in dated and "Berlin" not in dated  # Tom's is from 2023
    assert "Eva has a dog" not in dated  # stored today, outside 2024
    assert "Eva has a dog" in returns[3]["message"].splitlines()[0]  # found right after insert
    bad = ScriptedLLM([tool_call("archival_memory_search", query="x", start_datetime="last tuesday",
                                 request_heartbeat=True), send_message("sorry")])
    result = await step(state, [], [MessageCreate(content="?")], StepDeps(llm=bad, archive=archive),
                        toolset=base_toolset())
    failed = tool_result(result, "archival_memory_search")
    assert failed["status"] == "Failed" and "not an ISO date" in failed["message"]


async def test_a_turn_through_real_litellm_and_the_loopback_server() -> None:
    from letta_ray.llm import LiteLLM

    script = ScriptedLLM([
        tool_call("core_memory_append", label="human", content="Moved to Lisbon", request_heartbeat=True),
        send_message("Welcome to Lisbon!"),
    ])
    with FakeOpenAIServer(script) as server:
        state = agent(llm_config=server.llm_config())
        result = await step(state, [], [MessageCreate(content="I moved to Lisbon")], StepDeps(llm=LiteLLM()),
                            toolset=base_toolset())
        assert result.stop_reason.stop_reason == "end_turn"
        assert result.response().assistant_text() == "Welcome to Lisbon!"
        assert result.state.block("human").value == "Name: Ada\nMoved to Lisbon"
        assert result.usage.step_count == 2 and result.usage.prompt_tokens > 0
        # the server received our tool schemas and the edited memory on the second call
        second = server.requests[1]["body"]
        assert "Moved to Lisbon" in second["messages"][0]["content"]
        assert {t["function"]["name"] for t in second["tools"]} >= {"send_message", "core_memory_append"}


async def test_a_real_provider_is_refused_in_tests() -> None:
    from letta_ray.errors import LLMError
    from letta_ray.llm import LiteLLM

    with pytest.raises(LLMError, match="only loopback"):
        await LiteLLM(max_retries=0).complete([{"role": "user", "content": "hi"}], [],
                                              LLMConfig(model="openai/gpt-4o-mini"))
