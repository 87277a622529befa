"""Letta agent files (.af): the real files in shared/fixtures read and planned without Ray;
imported on the runtime (all or nothing), exported, and read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from letta_ray.agent_file import (
    KEPT,
    AgentFileError,
    ExportedAgent,
    ImportOptions,
    export_agents,
    plan_import,
    read_agent_file,
)
from letta_ray.base_tools import BASE_TOOLS, DEFAULT_SYSTEM_PROMPTS
from letta_ray.schemas import EmbeddingConfig

# Real files from letta-ai/agent-file (Apache 2.0, see the LICENSE beside them).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "agent-files"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def plan(raw: Any, **options: Any) -> Any:
    return plan_import(read_agent_file(raw), ImportOptions(**options), embedding=EmbeddingConfig(),
                       base_tools={n: tf.tool for n, tf in BASE_TOOLS.items()}, default_system=DEFAULT_SYSTEM_PROMPTS)


@pytest.mark.parametrize("name", ["customer_service.af", "deep_research_agent.af", "outreach_workflow_agent.af",
                                  "evie.af", "void.af"])
def test_every_real_file_reads_and_plans(name: str) -> None:
    raw = fixture(name)
    decoded = json.loads(raw)
    doc = json.loads(decoded) if isinstance(decoded, str) else decoded  # two are JSON encoded twice
    result = plan(raw)
    assert [a.name for a in result.agents] == [a["name"] for a in doc["agents"]]
    custom = sorted(t["name"] for t in doc["tools"] if t["tool_type"] == "custom")
    assert sorted(t.name for t in result.tools) == custom
    for agent, file_agent in zip(result.agents, doc["agents"], strict=True):
        assert agent.id.startswith("agent-") and agent.id != file_agent["id"]
        assert [b.label for b in agent.blocks] == [
            next(b["label"] for b in doc["blocks"] if b["id"] == bid) for bid in file_agent["block_ids"]]
        assert len(agent.tool_rules) == len(file_agent["tool_rules"])
        assert agent.metadata[KEPT]["llm_config"] == file_agent["llm_config"]  # kept for export


def test_evie_keeps_its_shared_blocks_shared_and_its_sleeptime_group() -> None:
    result = plan(fixture("evie.af"))
    main, sleeper = result.agents
    assert main.llm_config.model == "anthropic/claude-opus-4-5-20251101"
    assert sleeper.agent_type == "sleeptime_agent"
    shared = {b.id for b in main.blocks} & {b.id for b in sleeper.blocks}
    assert len(shared) == 12  # the same Block objects, so one stored block each
    [group] = result.groups
    assert group["manager_config"] == {"manager_type": "sleeptime", "manager_agent_id": main.id,
                                       "sleeptime_agent_frequency": 5}
    assert group["agent_ids"] == [sleeper.id]
    # the sleep-time agent's in-context messages (after the system prompt) are its context
    assert [m.role for m in result.context[1]] == ["user"]
    assert "web_search" in main.metadata[KEPT]["unavailable_tools"] and "web_search" not in main.tools
    assert any("web_search" in w for w in result.warnings)


def test_options_rename_remodel_and_fill_secrets() -> None:
    result = plan(fixture("deep_research_agent.af"), name="scout", model="openai/gpt-4o-mini",
                  secrets={"TAVILY_API_KEY": "k"})
    [agent] = result.agents
    assert agent.name == "scout" and agent.llm_config.model == "openai/gpt-4o-mini"
    assert agent.secrets == {"TAVILY_API_KEY": "k"}
    copied = plan(fixture("customer_service.af"), append_copy_suffix=True)
    assert copied.agents[0].name == "customer_service_copy"
    embedded = plan(fixture("customer_service.af"), embedding="openai/text-embedding-3-large")
    kept = embedded.agents[0].metadata[KEPT]["embedding_config"]
    assert kept["handle"] == "openai/text-embedding-3-large" and kept["embedding_model"] == "text-embedding-3-large"
    stripped = plan(fixture("evie.af"), strip_messages=True)
    assert stripped.context == [[], []] and stripped.history == []


def test_the_older_single_agent_layout_is_read() -> None:
    legacy = {"name": "old", "agent_type": "memgpt_agent", "system": "You are old.",
              "llm_config": {"model": "gpt-4o-mini", "model_endpoint_type": "openai", "context_window": 8000},
              "core_memory": [{"label": "human", "value": "Ada", "limit": 500}],
              "tools": [{"name": "send_message", "tool_type": "letta_core", "json_schema": {}}],
              "messages": [{"role": "system", "content": [{"type": "text", "text": "sys"}]},
                           {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                           {"role": "assistant", "content": [], "tool_calls": [
                               {"id": "c1", "type": "function",
                                "function": {"name": "send_message", "arguments": "{\"message\": \"hello\"}"}}]},
                           {"role": "tool", "content": [{"type": "text", "text": "{\"status\": \"OK\"}"}],
                            "tool_call_id": "c1", "name": "send_message"}],
              "in_context_message_indices": [0, 1, 2, 3], "tags": [{"tag": "t"}],
              "tool_exec_environment_variables": [{"key": "K", "value": "v"}]}
    result = plan(json.dumps(legacy))
    [agent] = result.agents
    assert agent.blocks[0].value == "Ada" and agent.tools == ["send_message"] and agent.tags == ["t"]
    assert agent.secrets == {"K": "v"}
    assert [m.role for m in result.context[0]] == ["user", "assistant", "tool"]
    assert result.context[0][1].tool_calls[0].name == "send_message"
    assert result.context[0][2].tool_call_id == "c1"


@pytest.mark.parametrize(("doc", "where"), [
    ("not json at all", "not JSON"),
    ('{"agents": [{"id": "agent-0", "name": "a"', "not JSON"),  # truncated
    ({"agents": [{"id": "agent-0", "name": "a", "block_ids": ["block-0"], "llm_config": {"model": "m"}}],
      "blocks": [{"id": "block-0", "label": "human", "value": "x", "limit": -3}]}, "limit of -3"),
    ("[1, 2]", "not an object"),
    ({"blocks": []}, "agents"),
    ({"agents": [{"id": "agent-0", "name": "a", "block_ids": ["block-9"],
                  "llm_config": {"model": "m", "context_window": 1000}}]}, "block-9"),
    ({"agents": [{"id": "agent-0", "name": "a", "in_context_message_ids": ["message-3"],
                  "llm_config": {"model": "m", "context_window": 1000}}]}, "message-3"),
    ({"agents": [{"id": "agent-0", "name": "a", "tool_ids": ["tool-0"], "llm_config": {"model": "m"}}],
      "tools": [{"id": "tool-0", "name": "f", "tool_type": "custom", "source_code": "def f(:\n",
                 "json_schema": {"parameters": {}}}]}, "does not parse"),
    ({"agents": [{"id": "agent-0", "name": "a", "llm_config": {"model": "m"}}],
      "groups": [{"id": "group-0", "agent_ids": ["agent-5"]}]}, "agent-5"),
    ({"agents": [{"id": "agent-0", "name": "a", "llm_config": {"model": "m"},
                  "tool_rules": [{"type": "no_such_rule", "tool_name": "x"}]}]}, "tool_rules"),
])
def test_a_bad_file_says_which_element_is_wrong(doc: Any, where: str) -> None:
    with pytest.raises(AgentFileError, match=where):
        plan(doc if isinstance(doc, str) else json.dumps(doc))


def test_an_export_reads_back_as_the_same_agents() -> None:
    result = plan(fixture("outreach_workflow_agent.af"))
    [agent] = result.agents
    tools = {t.name: t for t in result.tools}
    doc = export_agents([ExportedAgent(agent, result.context[0], agent.system)], tools, [])
    again = plan(json.dumps(doc))
    [back] = again.agents
    assert back.name == agent.name and back.tools == agent.tools
    assert [r.model_dump() for r in back.tool_rules] == [r.model_dump() for r in agent.tool_rules]
    assert {t.name: t.source_code for t in again.tools} == {n: t.source_code for n, t in tools.items()}
    assert doc["agents"][0]["llm_config"]["handle"] == "openai/gpt-4o-mini"


def test_a_block_over_its_limit_imports_with_room_and_exports_its_limit_back() -> None:
    # Letta 0.16 does not check block limits, and real files (ezra.af) hold blocks past theirs.
    doc = {"agents": [{"id": "agent-0", "name": "a", "block_ids": ["block-0"], "llm_config": {"model": "m"}}],
           "blocks": [{"id": "block-0", "label": "notes/long", "value": "x" * 50, "limit": 10}]}
    result = plan(json.dumps(doc))
    [agent] = result.agents
    assert agent.blocks[0].value == "x" * 50 and agent.blocks[0].limit == 50
    assert any("over its limit of 10" in w for w in result.warnings)
    written = export_agents([ExportedAgent(agent, [], agent.system)], {}, [])
    assert written["blocks"][0]["limit"] == 10 and written["blocks"][0]["value"] == "x" * 50


def test_tools_this_server_lacks_are_written_back_as_the_file_had_them() -> None:
    raw = json.loads(fixture("deep_research_agent.af"))
    result = plan(raw)
    [agent] = result.agents
    doc = export_agents([ExportedAgent(agent, [], agent.system)], {t.name: t for t in result.tools}, [])
    original = next(t for t in raw["tools"] if t["name"] == "web_search")
    written = next(t for t in doc["tools"] if t["name"] == "web_search")
    assert {k: v for k, v in written.items() if k != "id"} == {k: v for k, v in original.items() if k != "id"}


# --------------------------------------------------------------------------- on Ray


@pytest.mark.ray
def test_importing_evie_creates_both_agents_sharing_blocks_and_exports_them_back(client: Any) -> None:
    main, sleeper = client.import_agent_file(str(FIXTURES / "evie.af"))
    main_state, sleeper_state = main.state(), sleeper.state()
    assert main_state.name == "Evie" and sleeper_state.agent_type == "sleeptime_agent"
    assert main_state.metadata["sleeptime_agent_id"] == sleeper.id  # it runs as a sleep-time pair here
    shared = {b.id for b in main_state.blocks} & {b.id for b in sleeper_state.blocks}
    assert len(shared) == 12
    main.blocks.update("persona", value="Evie, edited")  # one block: the sleeper sees the edit
    assert sleeper.blocks["persona"].value == "Evie, edited"
    assert [m.role for m in sleeper.context()] == ["user"]

    doc = client.export_agent_file(main.id)
    assert [a["name"] for a in doc["agents"]] == ["Evie", sleeper_state.name]
    assert doc["groups"][0]["manager_config"]["manager_type"] == "sleeptime"
    again = client.import_agent_file(doc, append_copy_suffix=True)
    assert [a.name for a in again] == ["Evie_copy", f"{sleeper_state.name}_copy"]
    assert again[0].blocks["persona"].value == "Evie, edited"
    for handle in [main, sleeper, *again]:
        client.delete_agent(handle.id)


def test_a_files_sources_and_files_become_folders_with_the_agents_open_files() -> None:
    result = plan(fixture("void.af"))
    [folder] = result.folders
    [(file, text)] = result.files
    [agent] = result.agents
    assert folder.id.startswith("source-") and file.folder_id == folder.id and file.id.startswith("file-")
    assert file.file_name == "social-ai-transcript.md" and len(text) == file.file_size == 56915
    assert agent.folder_ids == [folder.id]
    [opened] = agent.open_files
    assert opened.file_id == file.id and opened.file_name == f"{folder.name}/social-ai-transcript.md"
    assert "Stateful Agents Meetup" in opened.view
    assert {"open_files", "grep_files", "semantic_search_files"} <= set(agent.tools)
    doc = json.loads(fixture("void.af"))
    doc["agents"][0]["source_ids"] = ["source-9"]
    with pytest.raises(AgentFileError, match="source_ids names 'source-9'"):
        plan(doc)


@pytest.mark.ray
def test_importing_void_brings_its_folder_and_file_and_exports_them_back(client: Any) -> None:
    [agent] = client.import_agent_file(str(FIXTURES / "void.af"))
    state = agent.state()
    [folder_id] = state.folder_ids
    [file] = client.folders.list_files(folder_id)
    done = client.folders.wait_for_file(folder_id, file.id)
    assert done.processing_status == "completed" and done.total_chunks > 10
    assert "Stateful Agents Meetup" in state.open_files[0].view and "Stateful Agents Meetup" in agent.system_prompt()
    found = client.run_sync(client.runtime.archive.search([file.id], "AT Protocol firehose", top_k=1))
    assert found and found[0].agent_id == file.id

    doc = client.export_agent_file(agent.id)
    [source] = doc["sources"]
    [exported] = doc["files"]
    assert exported["source_id"] == source["id"] and len(exported["content"]) == 56915
    assert doc["agents"][0]["source_ids"] == [source["id"]]
    assert doc["agents"][0]["files_agents"][0]["file_id"] == exported["id"]
    [again] = client.import_agent_file(doc, append_copy_suffix=True)
    assert len(again.state().folder_ids) == 1 and again.state().folder_ids != state.folder_ids
    for handle in (agent, again):
        client.delete_agent(handle.id)


@pytest.mark.ray
def test_an_import_that_fails_halfway_leaves_nothing_behind(client: Any, monkeypatch: Any) -> None:
    before_agents = {a.id for a in client.list_agents(limit=None)}
    before_tools = {t.name for t in client.list_tools(limit=None)}

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the disk is full")

    doc = json.loads(fixture("outreach_workflow_agent.af"))
    doc = json.loads(doc) if isinstance(doc, str) else doc
    doc["groups"] = [{"id": "group-0", "agent_ids": [doc["agents"][0]["id"]], "description": "team",
                      "manager_config": {"manager_type": "round_robin"}}]
    monkeypatch.setattr(client.groups, "create_group_async", broken)
    with pytest.raises(RuntimeError, match="disk is full"):
        client.import_agent_file(doc)
    assert {a.id for a in client.list_agents(limit=None)} == before_agents
    assert {t.name for t in client.list_tools(limit=None)} == before_tools
    # and a file's folders go too
    folders_before = {f.id for f in client.folders.list(limit=None)}
    void = json.loads(fixture("void.af"))
    void["groups"] = [{"id": "group-0", "agent_ids": [void["agents"][0]["id"]], "description": "team",
                       "manager_config": {"manager_type": "round_robin"}}]
    with pytest.raises(RuntimeError, match="disk is full"):
        client.import_agent_file(void)
    assert {f.id for f in client.folders.list(limit=None)} == folders_before


@pytest.mark.ray
def test_an_agents_mcp_server_travels_with_it(client: Any, fake_llm_server: Any) -> None:
    import sys

    demo = str(Path(__file__).with_name("mcp_demo_server.py"))
    server = client.mcp_servers.create("demo-af", {"mcp_server_type": "stdio", "command": sys.executable,
                                                   "args": [demo, "stdio"], "env": {"TOKEN": "tok-zq93"}})
    agent = client.create_agent("mcp-af", model="fake-model", model_endpoint=fake_llm_server.url, tools=["add"])
    doc = client.export_agent_file(agent.id)
    [written] = doc["mcp_servers"]
    assert written["server_type"] == "stdio" and written["stdio_config"]["args"] == [demo, "stdio"]
    assert "tok-zq93" not in json.dumps(doc)  # the server's env stays here
    [add] = [t for t in doc["tools"] if t["name"] == "add"]
    assert add["tool_type"] == "external_mcp" and add["metadata_"]["mcp"]["server_id"] == written["id"]
    client.delete_agent(agent.id)
    client.mcp_servers.delete(server.id)

    [again] = client.import_agent_file(doc)
    [registered] = [s for s in client.mcp_servers.list() if s.server_name == "demo-af"]
    assert "add" in again.state().tools
    assert again.run_tool("add", {"a": 2, "b": 5}).message == "7"
    client.delete_agent(again.id)
    client.mcp_servers.delete(registered.id)
