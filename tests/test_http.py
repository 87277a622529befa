"""The HTTP API on a real Ray Serve deployment, driven by Letta's own SDK and raw HTTP."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from letta_ray.local_cluster import descendants, start_serve
from letta_ray.serve.startup import free_port

pytestmark = pytest.mark.ray

letta_client = pytest.importorskip("letta_client")


@pytest.fixture(scope="module")
def base_url(client: Any) -> Any:
    """Serve on 127.0.0.1 over the session's deployment, for this module only."""
    from ray import serve

    from letta_ray.serve.deployment import start_http

    url = start_http(client.settings, host="127.0.0.1", port=free_port())
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def sdk(base_url: str) -> Any:
    return letta_client.Letta(base_url=base_url, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(base_url: str) -> Any:
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


def new_agent(sdk: Any, fake: Any, **kw: Any) -> Any:
    kw.setdefault("memory_blocks", [{"label": "human", "value": "Name: Ada", "limit": 200},
                                    {"label": "persona", "value": "I am Sam."}])
    return sdk.agents.create(
        name=f"http-{uuid.uuid4().hex[:8]}",
        llm_config={"model": "fake-model", "model_endpoint_type": "openai", "model_endpoint": fake.url,
                    "context_window": 32000},
        **kw)


def system_prompt_of_last_call(fake: Any) -> str:
    chats = [r["body"] for r in fake.requests if r["path"].endswith("/chat/completions")]
    return chats[-1]["messages"][0]["content"]


# --------------------------------------------------------------------------- letta-client, happy paths


def test_create_send_and_read_the_reply(sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server, tags=["http"])
    assert [b.label for b in agent.memory.blocks] == ["human", "persona"]
    assert agent.agent_type == "letta_v1_agent"  # Letta's default: plain text ends a turn, no send_message
    assert "send_message" not in [t.name for t in agent.tools] and "memory_insert" in [t.name for t in agent.tools]
    assert agent.llm_config.api_model_endpoint == fake_llm_server.url

    reply = sdk.agents.messages.create(agent.id, messages=[{"role": "user", "content": "hi there"}])
    assert [m.message_type for m in reply.messages] == ["assistant_message"]
    assert reply.messages[0].content == "You said: hi there"
    assert reply.stop_reason.stop_reason == "end_turn"
    assert reply.usage.step_count == 1 and reply.usage.total_tokens > 0

    assert sdk.agents.retrieve(agent.id).name == agent.name
    assert agent.id in [a.id for a in sdk.agents.list(tags=["http"], limit=1000)]


def test_stream_yields_typed_events_in_order(sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    events = list(sdk.agents.messages.create(agent.id, messages=[{"role": "user", "content": "remember likes jazz"}],
                                             streaming=True))
    assert [e.message_type for e in events] == ["tool_call_message", "tool_return_message", "assistant_message",
                                                "stop_reason", "usage_statistics"]
    assert events[0].tool_call.name == "memory_insert"
    assert events[-2].stop_reason == "end_turn" and events[-1].step_count == 2
    # persisted before the stop reason went out
    assert sdk.agents.blocks.retrieve("human", agent_id=agent.id).value == "Name: Ada\nlikes jazz"


def test_stream_tokens_streams_the_reply_and_tool_arguments_in_pieces(sdk: Any, fake_llm_server: Any) -> None:
    agent, twin = new_agent(sdk, fake_llm_server), new_agent(sdk, fake_llm_server)
    say = [{"role": "user", "content": "remember likes jazz"}]
    whole = list(sdk.agents.messages.create(twin.id, messages=say, streaming=True))
    events = list(sdk.agents.messages.create(agent.id, messages=say, streaming=True, stream_tokens=True))
    # the LLM streamed for the tokens, and only then
    assert [bool(r["body"].get("stream")) for r in list(fake_llm_server.requests)[-4:]] == [False, False, True, True]

    kinds = [e.message_type for e in events]
    assert kinds[-2:] == ["stop_reason", "usage_statistics"] and kinds.count("tool_return_message") == 1
    calls = [e for e in events if e.message_type == "tool_call_message"]
    replies = [e for e in events if e.message_type == "assistant_message"]
    assert len(calls) > 1 and len(replies) > 1
    [whole_call] = [e for e in whole if e.message_type == "tool_call_message"]
    [whole_reply] = [e for e in whole if e.message_type == "assistant_message"]
    assert {e.tool_call.name for e in calls} == {"memory_insert"}
    assert json.loads("".join(e.tool_call.arguments for e in calls)) == json.loads(whole_call.tool_call.arguments)
    assert "".join(e.content for e in replies) == whole_reply.content
    # the pieces of a message share its id, the one the stored message has
    assert len({e.id for e in calls}) == 1 and len({e.id for e in replies}) == 1
    stored = {m.id: m.message_type for m in sdk.agents.messages.list(agent.id, limit=50)}
    assert stored[replies[0].id] == "assistant_message" and stored[calls[0].id] == "tool_call_message"


def test_stream_route_frames_server_sent_events(http: Any, sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    with http.stream("POST", f"/v1/agents/{agent.id}/messages/stream",
                     json={"messages": [{"role": "user", "content": "hello"}]}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [line for line in response.iter_lines() if line]
    assert all(f.startswith("data: ") for f in frames)
    assert frames[-1] == "data: [DONE]"
    kinds = [json.loads(f[6:])["message_type"] for f in frames[:-1]]
    assert kinds == ["assistant_message", "stop_reason", "usage_statistics"]


def test_edited_block_reaches_the_agent(sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    block = sdk.agents.blocks.update("human", agent_id=agent.id, value="Name: Grace Hopper")
    assert block.value == "Name: Grace Hopper" and block.limit == 200
    sdk.agents.messages.create(agent.id, messages=[{"role": "user", "content": "who am I?"}])
    assert "Name: Grace Hopper" in system_prompt_of_last_call(fake_llm_server)
    assert [b.value for b in sdk.agents.blocks.list(agent.id)] == ["Name: Grace Hopper", "I am Sam."]


def test_archival_insert_search_and_delete(sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    [sister] = sdk.agents.passages.create(agent.id, text="Ada's sister lives in Porto", tags=["family"])
    sdk.agents.passages.create(agent.id, text="The quarterly report is due on Friday", tags=["work"])
    assert sister.text == "Ada's sister lives in Porto" and sister.tags == ["family"]

    found = sdk.agents.passages.search(agent.id, query="where does the sister live", top_k=1)
    assert found.count == 1 and "Porto" in found.results[0].content
    tagged = sdk.agents.passages.search(agent.id, query="report", tags=["work"])
    assert [r.content for r in tagged.results] == ["The quarterly report is due on Friday"]
    later = sdk.agents.passages.search(agent.id, query="Porto", start_datetime="2999-01-01T00:00:00Z")
    assert later.count == 0

    assert len(sdk.agents.passages.list(agent.id)) == 2
    sdk.agents.passages.delete(sister.id, agent_id=agent.id)
    assert [p.text for p in sdk.agents.passages.list(agent.id)] == ["The quarterly report is due on Friday"]


def test_page_through_messages(sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    for i in range(3):
        sdk.agents.messages.create(agent.id, messages=[{"role": "user", "content": f"message {i}"}])
    everything = list(sdk.agents.messages.list(agent.id, order="asc", limit=100).items)
    assert [m.content for m in everything if m.message_type == "user_message"] == [
        "message 0", "message 1", "message 2"]
    paged = list(sdk.agents.messages.list(agent.id, order="asc", limit=2))  # iterating pages on
    assert [m.id for m in paged] == [m.id for m in everything]
    newest_first = list(sdk.agents.messages.list(agent.id, limit=2))  # Letta's default order: desc
    assert [m.id for m in newest_first] == [m.id for m in reversed(everything)]


def test_modify_agent(sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    changed = sdk.agents.update(agent.id, name="renamed", tags=["a", "b"], system="You are terse.",
                                context_window_limit=16000)
    assert (changed.name, changed.tags, changed.system) == ("renamed", ["a", "b"], "You are terse.")
    assert changed.llm_config.context_window == 16000
    assert changed.llm_config.api_model_endpoint == fake_llm_server.url  # the rest of the config is kept
    sdk.agents.messages.create(agent.id, messages=[{"role": "user", "content": "hi"}])
    assert system_prompt_of_last_call(fake_llm_server).startswith("You are terse.")
    assert sdk.agents.retrieve(agent.id).name == "renamed"


def test_create_with_a_sleeptime_agent(sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server, enable_sleeptime=True)
    assert agent.metadata and any(isinstance(v, str) and v.startswith("agent-") for v in agent.metadata.values())


def test_delete_agent(sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    sdk.agents.delete(agent.id)
    with pytest.raises(letta_client.NotFoundError):
        sdk.agents.retrieve(agent.id)


def test_async_message_creates_a_run_to_poll(sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    run = sdk.agents.messages.create_async(agent.id, messages=[{"role": "user", "content": "in the background"}])
    assert run.agent_id == agent.id and run.status in ("created", "running", "completed")
    deadline = time.monotonic() + 60
    while (run := sdk.runs.retrieve(run.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, run
        time.sleep(0.1)
    assert run.status == "completed" and run.stop_reason == "end_turn"
    replies = [m for m in sdk.agents.messages.list(agent.id) if m.message_type == "assistant_message"]
    assert replies[0].content == "You said: in the background" and replies[0].run_id == run.id


def test_runs_steps_and_messages_with_the_letta_sdk(sdk: Any, http: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server, tags=["steps"])
    reply = sdk.agents.messages.create(agent.id, messages=[{"role": "user", "content": "remember likes oolong"}])
    [run_id] = reply.usage.run_ids

    run = sdk.runs.retrieve(run_id)
    assert (run.agent_id, run.status, run.stop_reason, run.background) == (agent.id, "completed", "end_turn", False)
    assert [r.id for r in sdk.runs.list(agent_id=agent.id)] == [run_id]
    assert sdk.runs.list(agent_id=agent.id, statuses=["failed"]).items == []
    assert sdk.runs.usage.retrieve(run_id).total_tokens == reply.usage.total_tokens
    kinds = [m.message_type for m in sdk.runs.messages.list(run_id)]
    assert kinds == ["user_message", "tool_call_message", "tool_return_message", "assistant_message"]
    run_steps = sdk.runs.steps.list(run_id).items
    assert [s.stop_reason for s in run_steps] == [None, "end_turn"] and {s.run_id for s in run_steps} == {run_id}
    assert sum(s.total_tokens for s in run_steps) == reply.usage.total_tokens

    step = sdk.steps.retrieve(run_steps[0].id)
    assert (step.agent_id, step.status, step.model, step.tags) == (agent.id, "success", "fake-model", ["steps"])
    assert step.context_window_limit == 32000 and step.prompt_tokens > 0
    assert [s.id for s in sdk.steps.list(agent_id=agent.id, order="asc")] == [s.id for s in run_steps]
    metrics = sdk.steps.metrics.retrieve(step.id)
    assert metrics.step_ns >= metrics.llm_request_ns > 0 and metrics.step_start_ns > 0
    step_kinds = [m.message_type for m in sdk.steps.messages.list(step.id)]
    assert step_kinds == ["tool_call_message", "tool_return_message"]
    rated = sdk.steps.feedback.create(step.id, feedback="positive", tags=["nice"])
    assert rated.feedback == "positive" and [s.id for s in sdk.steps.list(has_feedback=True, agent_id=agent.id)] \
        == [step.id]
    trace = http.get(f"/v1/runs/{run_id}/trace").json()
    assert [t["step_id"] for t in trace] == [s.id for s in run_steps] and all(t["duration_ns"] > 0 for t in trace)

    newest = sdk.messages.list(limit=1)
    assert newest[0].message_type == "assistant_message"
    user_id = sdk.runs.messages.list(run_id).items[0].id
    [shown] = sdk.messages.retrieve(user_id)
    assert shown.message_type == "user_message" and shown.content == "remember likes oolong"
    found = sdk.messages.search(query="oolong", agent_id=agent.id)
    assert {(f.message_type, f.message_id) for f in found} >= {("user_message", user_id)}
    assert all(f.agent_id == agent.id for f in found)

    assert http.delete(f"/v1/runs/{run_id}").json()["id"] == run_id
    assert http.get(f"/v1/runs/{run_id}").status_code == 404
    assert http.get(f"/v1/steps/{step.id}").status_code == 404


def test_cancel_compact_recompile_preview_and_reset_over_http(sdk: Any, http: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    with pytest.raises(letta_client.BadRequestError, match="no running turn"):
        sdk.agents.messages.cancel(agent.id)
    replies: list[Any] = []
    sender = threading.Thread(target=lambda: replies.append(
        sdk.agents.messages.create(agent.id, messages=[{"role": "user", "content": "slowly now"}])))
    sender.start()
    deadline = time.monotonic() + 30
    while not (cancelled := http.post(f"/v1/agents/{agent.id}/messages/cancel", json={}).json()) \
            or "detail" in cancelled:
        assert time.monotonic() < deadline, cancelled
        time.sleep(0.05)
    sender.join(20)
    [(run_id, verdict)] = cancelled.items()
    assert verdict == "cancelled" and replies[0].stop_reason.stop_reason == "cancelled"
    assert sdk.runs.retrieve(run_id).status == "cancelled"

    for i in range(5):
        sdk.agents.messages.create(agent.id, messages=[{"role": "user", "content": f"turn {i} " + "words " * 40}])
    compacted = sdk.agents.messages.compact(agent.id)
    assert compacted.summary and compacted.num_messages_after < compacted.num_messages_before

    sdk.agents.blocks.update("human", agent_id=agent.id, value="Name: Ada, likes oolong")
    prompt = json.loads(sdk.agents.recompile(agent.id))  # a JSON string, as Letta answers (the SDK leaves it so)
    assert "Name: Ada, likes oolong" in prompt
    payload = http.post(f"/v1/agents/{agent.id}/messages/preview-raw-payload",
                        json={"messages": [{"role": "user", "content": "peek"}]}).json()
    assert payload["messages"][0]["content"] == prompt and payload["messages"][-1]["content"] == "peek"
    assert payload["model"] == "fake-model" and "api_key" not in json.dumps(payload)

    sdk.agents.messages.reset(agent.id, add_default_initial_messages=True)
    [login] = sdk.agents.messages.list(agent.id, limit=1).items
    assert login.message_type == "user_message" and json.loads(login.content)["type"] == "login"
    assert sdk.agents.retrieve(agent.id).message_ids == [login.id]  # a letta_v1 agent starts with the login


def test_a_background_stream_can_be_re_attached_by_run_id(sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    stream = sdk.agents.messages.create(agent.id, messages=[{"role": "user", "content": "remember likes rooibos"}],
                                        streaming=True, background=True)
    first = next(iter(stream))
    assert first.message_type == "tool_call_message" and first.seq_id == 1 and first.run_id
    stream.close()  # the client goes away; the turn runs on
    run_id = first.run_id
    deadline = time.monotonic() + 60
    while (run := sdk.runs.retrieve(run_id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, run
        time.sleep(0.1)
    assert run.background is True and run.status == "completed"
    resumed = list(sdk.runs.messages.stream(run_id, starting_after=1))
    kinds = [getattr(e, "message_type", None) for e in resumed]
    assert kinds == ["tool_return_message", "assistant_message", "stop_reason", "usage_statistics"]
    assert resumed[1].content == "You said: remember likes rooibos"
    everything = list(sdk.runs.messages.stream(run_id))
    assert [getattr(e, "seq_id", None) for e in everything[:3]] == [1, 2, 3]


def test_archives_and_passage_search_with_the_letta_sdk(sdk: Any, http: Any, fake_llm_server: Any) -> None:
    archive = sdk.archives.create(name=f"faq-{uuid.uuid4().hex[:6]}", description="answers")
    assert archive.id.startswith("archive-") and archive.embedding_config.embedding_dim > 0
    sdk.archives.update(archive.id, description="answers, checked")
    assert sdk.archives.retrieve(archive.id).description == "answers, checked"
    assert archive.id in [a.id for a in sdk.archives.list(name=archive.name)]
    one = sdk.archives.passages.create(archive.id, text="Refunds take five working days.", tags=["billing"])
    assert one.archive_id == archive.id and one.tags == ["billing"]
    many = sdk.archives.passages.create_many(archive.id, passages=[
        {"text": "The help desk opens at eight.", "tags": ["hours"]},
        {"text": "Passwords are reset from the login page.", "tags": ["accounts"]}])
    assert len(many) == 2

    agent = new_agent(sdk, fake_llm_server)
    sdk.agents.archives.attach(archive.id, agent_id=agent.id)
    assert [a.id for a in sdk.archives.list(agent_id=agent.id)] == [archive.id]
    hits = sdk.passages.search(agent_id=agent.id, query="how long do refunds take", limit=2)
    assert hits[0].passage.text == "Refunds take five working days." and hits[0].score > 0
    tagged = sdk.passages.search(archive_id=archive.id, query="opening hours", tags=["hours"])
    assert [h.passage.text for h in tagged] == ["The help desk opens at eight."]
    # The agent's own archival search covers the archive now.
    own = sdk.agents.passages.search(agent.id, query="passwords")
    assert own.results[0].content == "Passwords are reset from the login page."

    sdk.archives.passages.delete(one.id, archive_id=archive.id)
    assert [p["text"] for p in http.get(f"/v1/archives/{archive.id}/passages").json()] == [
        "The help desk opens at eight.", "Passwords are reset from the login page."]
    sdk.agents.archives.detach(archive.id, agent_id=agent.id)
    assert sdk.passages.search(agent_id=agent.id, query="passwords") == []
    sdk.archives.delete(archive.id)
    assert http.get(f"/v1/archives/{archive.id}").status_code == 404
    assert http.post("/v1/passages/search", json={"archive_id": archive.id, "query": "x"}).status_code == 404


def test_tags_counts_and_order_on_every_list(sdk: Any, http: Any, fake_llm_server: Any) -> None:
    mark = uuid.uuid4().hex[:6]
    new_agent(sdk, fake_llm_server, tags=[f"zz-{mark}-b", f"zz-{mark}-a"])
    new_agent(sdk, fake_llm_server, tags=[f"zz-{mark}-c", f"zz-{mark}-a"])
    assert sdk.tags.list(name=mark) == [f"zz-{mark}-a", f"zz-{mark}-b", f"zz-{mark}-c"]
    assert sdk.tags.list(name=mark, order="desc", limit=2) == [f"zz-{mark}-c", f"zz-{mark}-b"]
    assert sdk.tags.list(name=mark, after=f"zz-{mark}-a") == [f"zz-{mark}-b", f"zz-{mark}-c"]

    agents = http.get("/v1/agents/", params={"limit": 1000}).json()
    assert http.get("/v1/agents/count").json() == len(agents) >= 2
    tools = http.get("/v1/tools/", params={"limit": 1000}).json()
    assert http.get("/v1/tools/count").json() == len(tools)
    newest_first = http.get("/v1/tools/", params={"limit": 1000, "order": "desc"}).json()
    assert [t["id"] for t in newest_first] == [t["id"] for t in tools][::-1]
    sdk.blocks.create(label=f"note-{mark}", value="one")
    blocks = http.get("/v1/blocks/", params={"limit": 1000}).json()
    assert http.get("/v1/blocks/count").json() == len(blocks)
    assert [b["id"] for b in http.get("/v1/blocks/", params={"limit": 1000, "order": "desc"}).json()] \
        == [b["id"] for b in blocks][::-1]
    assert http.get("/v1/groups/count").json() == len(http.get("/v1/groups/", params={"limit": 1000}).json())
    runs = http.get("/v1/runs/", params={"order": "asc", "limit": 1000}).json()
    assert [r["id"] for r in http.get("/v1/runs/", params={"order": "desc", "limit": 1000}).json()] \
        == [r["id"] for r in runs][::-1]


def test_the_agent_fields_and_message_options_letta_sends(sdk: Any, http: Any, fake_llm_server: Any) -> None:
    plain = new_agent(sdk, fake_llm_server)
    assert plain.agent_type == "letta_v1_agent" and "send_message" not in [t.name for t in plain.tools]
    rich = new_agent(sdk, fake_llm_server, agent_type="memgpt_v2_agent", embedding="openai/text-embedding-3-small",
                     model_settings={"temperature": 0.2, "max_output_tokens": 300}, timezone="Asia/Tokyo",
                     include_base_tool_rules=True,
                     initial_message_sequence=[{"role": "user", "content": "my name is Ada"},
                                               {"role": "assistant", "content": "Nice to meet you, Ada."}])
    assert rich.timezone == "Asia/Tokyo" and rich.metadata["requested_embedding"] == "openai/text-embedding-3-small"
    assert (rich.llm_config.temperature, rich.llm_config.max_tokens) == (0.2, 300)
    assert len(rich.message_ids) == 2
    before = len(fake_llm_server.requests)
    reply = sdk.agents.messages.create(rich.id, messages=[{"role": "user", "content": "remember likes tea"}])
    [first_call] = [r["body"] for r in list(fake_llm_server.requests)[before:]
                    if r["path"].endswith("/chat/completions")][:1]
    assert [m["content"] for m in first_call["messages"][1:3]] == ["my name is Ada", "Nice to meet you, Ada."]
    assert first_call["temperature"] == 0.2 and first_call["max_tokens"] == 300
    call = next(m for m in reply.messages if m.message_type == "tool_call_message")
    assert [c.name for c in call.tool_calls] == ["memory_insert"]
    back = next(m for m in reply.messages if m.message_type == "tool_return_message")
    assert back.tool_returns[0].tool_call_id == call.tool_call.tool_call_id
    assert "+0900" in back.tool_return  # the agent's time zone

    react = new_agent(sdk, fake_llm_server, agent_type="react_agent")
    assert react.agent_type == "react_agent" and react.tools == []
    answer = sdk.agents.messages.create(react.id, messages=[{"role": "user", "content": "hi react"}])
    assert answer.messages[-1].content == "You said: hi react"
    forgetful = new_agent(sdk, fake_llm_server, message_buffer_autoclear=True)
    sdk.agents.messages.create(forgetful.id, messages=[{"role": "user", "content": "hello"}])
    assert sdk.agents.retrieve(forgetful.id).message_ids == []
    assert len(sdk.agents.messages.list(forgetful.id).items) == 2  # the history keeps the turn

    # Seeded with an assistant line, answered by another model for this request only.
    seeded = sdk.agents.messages.create(plain.id, override_model="other-model", messages=[
        {"role": "assistant", "content": "I am listening."}, {"role": "user", "content": "switch models"}])
    [step] = sdk.runs.steps.list(seeded.usage.run_ids[0]).items
    assert step.api_model_handle == "other-model" and step.model == "other-model"
    assert sdk.agents.retrieve(plain.id).llm_config.model == "fake-model"

    for bad, why in (({"agent_type": "voice_convo_agent"}, "not supported"),
                     ({"timezone": "Mars/Olympus"}, "time zone"),
                     ({"folder_ids": ["source-1"]}, "source-1"),
                     ({"response_format": {"type": "json_object"}}, "response_format")):
        response = http.post("/v1/agents/", json={"name": "bad", "model": "fake-model", **bad})
        assert response.status_code in (400, 404, 422) and why in json.dumps(response.json()), (bad, response.text)


def test_folders_files_and_an_agents_open_files_with_the_letta_sdk(sdk: Any, http: Any, fake_llm_server: Any,
                                                                  tmp_path: Path) -> None:
    folder = sdk.folders.create(name=f"docs-{uuid.uuid4().hex[:6]}", description="manuals",
                                embedding="openai/text-embedding-3-small")
    assert folder.id.startswith("source-") and folder.embedding_config.embedding_dim > 0
    assert folder.id in [f.id for f in sdk.folders.list(name=folder.name)]
    manual = tmp_path / "manual.txt"
    manual.write_text("Chapter 1\nPress the red button to start.\nHold it for three seconds.\n")
    with open(manual, "rb") as f:
        uploaded = sdk.folders.files.upload(folder.id, file=f)
    assert uploaded.source_id == folder.id and uploaded.processing_status in ("pending", "parsing", "embedding",
                                                                              "completed")
    deadline = time.monotonic() + 60
    while (file := sdk.folders.files.retrieve(uploaded.id, folder_id=folder.id)).processing_status != "completed":
        assert file.processing_status != "error" and time.monotonic() < deadline, file
        time.sleep(0.1)
    with_text = sdk.folders.files.retrieve(uploaded.id, folder_id=folder.id, include_content=True)
    assert with_text.content == manual.read_text()
    assert [f.file_name for f in sdk.folders.files.list(folder.id)] == ["manual.txt"]
    bad = http.post(f"/v1/folders/{folder.id}/upload", files={"file": ("clip.mp4", b"\x00\x01", "video/mp4")})
    assert bad.status_code == 400 and "supported files" in bad.json()["detail"]

    agent = new_agent(sdk, fake_llm_server, folder_ids=[folder.id])  # or attached later:
    sdk.agents.folders.attach(folder.id, agent_id=agent.id)  # (a second attach changes nothing)
    assert [f.id for f in sdk.agents.folders.list(agent.id)] == [folder.id]
    assert sdk.folders.agents.list(folder.id) == [agent.id]
    assert {"open_files", "grep_files"} <= {t.name for t in sdk.agents.retrieve(agent.id).tools}
    assert sdk.agents.files.open(uploaded.id, agent_id=agent.id) == []
    [shown] = sdk.agents.files.list(agent.id).files
    assert shown.is_open and shown.folder_name == folder.name and "2: Press the red button" in shown.visible_content
    prompt = json.loads(sdk.agents.recompile(agent.id))
    assert "Press the red button to start." in prompt
    assert sdk.agents.files.close_all(agent.id) == [f"{folder.name}/manual.txt"]
    assert sdk.agents.files.list(agent.id, is_open=True).files == []

    sdk.agents.folders.detach(folder.id, agent_id=agent.id)
    assert "open_files" not in {t.name for t in sdk.agents.retrieve(agent.id).tools}
    sdk.folders.files.delete(uploaded.id, folder_id=folder.id)
    assert http.get(f"/v1/folders/{folder.id}/files/{uploaded.id}").status_code == 404
    sdk.folders.delete(folder.id)
    assert http.get(f"/v1/folders/{folder.id}").status_code == 404


def test_a_50_mb_upload_does_not_hold_up_other_requests(sdk: Any, http: Any, base_url: str, tmp_path: Path) -> None:
    folder = sdk.folders.create(name=f"big-{uuid.uuid4().hex[:6]}")
    big = tmp_path / "big.txt"
    line = "All work and no play makes a long file; " * 3 + "\n"
    with open(big, "w") as out:
        for _ in range(50 * 2**20 // len(line)):
            out.write(line)
    answers: list[tuple[int, float]] = []
    uploaded: list[Any] = []

    def upload() -> None:
        with httpx.Client(base_url=base_url, timeout=120) as c, open(big, "rb") as f:
            uploaded.append(c.post(f"/v1/folders/{folder.id}/upload", files={"file": ("big.txt", f, "text/plain")}))

    sender = threading.Thread(target=upload)
    sender.start()
    while sender.is_alive():
        started = time.perf_counter()
        answers.append((http.get("/v1/health/").status_code, time.perf_counter() - started))
        time.sleep(0.02)
    sender.join()
    assert uploaded[0].status_code == 200, uploaded[0].text
    assert uploaded[0].json()["file_size"] == big.stat().st_size
    assert answers and all(status == 200 for status, _ in answers)
    assert max(seconds for _, seconds in answers) < 5.0, answers
    sdk.folders.delete(folder.id)  # stops its processing


def test_conversations_and_identities_with_the_letta_sdk(sdk: Any, http: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    conversation = sdk.conversations.create(agent_id=agent.id, summary="support thread")
    assert conversation.id.startswith("conv-") and conversation.agent_id == agent.id
    events = list(sdk.conversations.messages.create(conversation.id,
                                                    messages=[{"role": "user", "content": "hi in a thread"}]))
    kinds = [getattr(e, "message_type", None) for e in events]
    assert "assistant_message" in kinds and kinds[-2:] == ["stop_reason", "usage_statistics"]
    reply = next(e for e in events if getattr(e, "message_type", None) == "assistant_message")
    assert reply.content == "You said: hi in a thread"
    plain = http.post(f"/v1/conversations/{conversation.id}/messages",
                      json={"messages": [{"role": "user", "content": "and again"}], "streaming": False}).json()
    assert plain["messages"][-1]["content"] == "You said: and again"
    listed = sdk.conversations.messages.list(conversation.id).items
    assert [m.message_type for m in listed].count("user_message") == 2
    assert sdk.agents.messages.list(agent.id, limit=1).items  # the agent's history has them too
    assert len(sdk.agents.retrieve(agent.id).message_ids) == 0  # ... but not its own context
    assert [c.id for c in sdk.conversations.list(agent_id=agent.id)] == [conversation.id]
    updated = sdk.conversations.update(conversation.id, summary="resolved")
    assert updated.summary == "resolved" and len(updated.in_context_message_ids) == 4
    fork = sdk.conversations.fork(conversation.id)
    assert fork.in_context_message_ids == updated.in_context_message_ids and fork.id != conversation.id
    assert "You are" in json.loads(sdk.conversations.recompile(conversation.id))
    resumed = list(sdk.conversations.messages.stream(conversation.id))
    assert [getattr(e, "message_type", None) for e in resumed][-2:] == ["stop_reason", "usage_statistics"]
    assert http.post(f"/v1/conversations/{conversation.id}/cancel").status_code == 400  # nothing running
    sdk.conversations.delete(fork.id)
    assert http.get(f"/v1/conversations/{fork.id}").status_code == 404
    assert http.post("/v1/conversations/", json={"agent_id": "agent-nope"}).status_code == 404
    assert http.post("/v1/conversations/", json={}).status_code == 400

    key = f"customer-{uuid.uuid4().hex[:6]}"
    made = http.post("/v1/identities/", json={"identifier_key": key, "name": "Ada", "identity_type": "user",
                                              "properties": [{"key": "tier", "value": "gold", "type": "string"}]})
    assert made.status_code == 200, made.text
    identity = made.json()
    assert http.post("/v1/identities/", json={"identifier_key": key, "name": "Ada"}).status_code == 409
    sdk.agents.identities.attach(identity["id"], agent_id=agent.id)
    assert http.get(f"/v1/identities/{identity['id']}").json()["agent_ids"] == [agent.id]
    assert sdk.agents.retrieve(agent.id).identity_ids == [identity["id"]]
    assert [a.id for a in sdk.agents.list(identity_id=identity["id"])] == [agent.id]
    upserted = http.put("/v1/identities/", json={"identifier_key": key, "name": "Ada L.", "identity_type": "user"})
    assert upserted.json()["id"] == identity["id"] and upserted.json()["name"] == "Ada L."
    props = http.put(f"/v1/identities/{identity['id']}/properties",
                     json=[{"key": "tier", "value": "platinum", "type": "string"}]).json()
    assert props["properties"] == [{"key": "tier", "value": "platinum", "type": "string"}]
    assert [i["id"] for i in http.get("/v1/identities/", params={"identifier_key": key}).json()] == [identity["id"]]
    sdk.agents.identities.detach(identity["id"], agent_id=agent.id)
    assert http.get(f"/v1/identities/{identity['id']}/agents").json() == []
    assert http.delete(f"/v1/identities/{identity['id']}").status_code == 200
    assert http.get(f"/v1/identities/{identity['id']}").status_code == 404


def test_shared_block_edit_reaches_every_agent(sdk: Any, fake_llm_server: Any) -> None:
    first, second = new_agent(sdk, fake_llm_server), new_agent(sdk, fake_llm_server)
    team = sdk.blocks.create(label="team", value="Team: red", limit=100)
    for agent in (first, second):
        state = sdk.agents.blocks.attach(team.id, agent_id=agent.id)
        assert "team" in [b.label for b in state.memory.blocks]
    sdk.agents.messages.create(first.id, messages=[{"role": "user", "content": "warm up"}])  # hosted now

    sdk.blocks.update(team.id, value="Team: blue")
    for agent in (first, second):
        assert sdk.agents.blocks.retrieve("team", agent_id=agent.id).value == "Team: blue"
    sdk.agents.messages.create(first.id, messages=[{"role": "user", "content": "which team?"}])
    assert "Team: blue" in system_prompt_of_last_call(fake_llm_server)
    assert sorted(a.id for a in sdk.blocks.agents.list(team.id)) == sorted([first.id, second.id])

    state = sdk.agents.blocks.detach(team.id, agent_id=second.id)
    assert "team" not in [b.label for b in state.memory.blocks]
    assert sdk.blocks.retrieve(team.id).value == "Team: blue"


def test_tool_from_source_attached_and_detached(sdk: Any, fake_llm_server: Any) -> None:
    source = textwrap.dedent('''
        def flip_coin(times: int) -> str:
            """Flip a coin.

            Args:
                times: how many times to flip it
            """
            return "heads" * times
    ''')
    tool = sdk.tools.create(source_code=source)
    assert tool.name == "flip_coin" and tool.json_schema["parameters"]["properties"]["times"]["type"] == "integer"
    assert tool.id in [t.id for t in sdk.tools.list(limit=1000)]
    agent = new_agent(sdk, fake_llm_server)
    state = sdk.agents.tools.attach(tool.id, agent_id=agent.id)
    assert "flip_coin" in [t.name for t in state.tools]
    assert "flip_coin" in [t.name for t in sdk.agents.tools.list(agent.id)]
    state = sdk.agents.tools.detach(tool.id, agent_id=agent.id)
    assert "flip_coin" not in [t.name for t in state.tools]


PEEK = textwrap.dedent('''
    import glob, os

    def peek(what: str, where: str = "") -> str:
        """Look at the process the tool runs in.

        Args:
            what: env, files or exit
            where: a folder to list
        """
        if what == "exit":
            os._exit(1)
        if what == "files":
            return repr(glob.glob(where + "/*"))
        return repr(sorted(os.environ))
''')


def test_a_user_tool_sees_neither_the_servers_keys_nor_its_data_and_cannot_stop_its_host(
        client: Any, sdk: Any, http: Any, fake_llm_server: Any) -> None:
    """The three findings of issue 13, tried over HTTP with Letta's SDK."""
    tool = sdk.tools.create(source_code=PEEK, return_char_limit=2000)
    assert tool.return_char_limit == 2000
    agent = new_agent(sdk, fake_llm_server, tool_ids=[tool.id], secrets={"MY_TOKEN": "t0k"})
    neighbour = new_agent(sdk, fake_llm_server)

    def peek(what: str, **extra: str) -> Any:
        reply = sdk.agents.messages.create(agent.id, messages=[
            {"role": "user", "content": f"call peek {json.dumps({'what': what, **extra})}"}])
        [result] = [m for m in reply.messages if m.message_type == "tool_return_message"]
        return json.loads(result.tool_return)

    env = peek("env")
    assert env["status"] == "OK" and "MY_TOKEN" in env["message"]
    # the hosts run with LETTA_RAY_OFFLINE_LLM (the test session sets it everywhere); the tool must not
    assert "LETTA_RAY" not in env["message"] and "OPENAI" not in env["message"]

    home = str(client.settings.home)
    assert os.listdir(home), "the data directory has files to hide"
    assert peek("files", where=home)["message"] == "[]"

    started = time.monotonic()
    died = peek("exit")
    assert died["status"] == "Failed" and "exit status 1" in died["message"]
    assert time.monotonic() - started < 10
    for who in (agent, neighbour):  # both agents answer at once, on the same host as before
        reply = sdk.agents.messages.create(who.id, messages=[{"role": "user", "content": "still there?"}])
        assert reply.messages[-1].content == "You said: still there?"

    run = sdk.agents.tools.run("peek", agent_id=agent.id, args={"what": "env"})
    assert run.status == "success" and "MY_TOKEN" in str(run.func_return)
    updated = sdk.tools.update(tool.id, description="Peek around.", tags=["probe"])
    assert updated.description == "Peek around." and updated.tags == ["probe"]
    found = sdk.tools.search(query="peek around", tags=["probe"])
    assert [r.tool.name for r in found] == ["peek"]
    answer = http.post("/v1/tools/run", json={"source_code": PEEK, "args": {"what": "env"},
                                              "env_vars": {"ONLY_THIS": "1"}}).json()
    assert answer["status"] == "success" and "ONLY_THIS" in answer["tool_return"]
    assert "MY_TOKEN" not in answer["tool_return"]


def test_a_tool_that_needs_approval_waits_for_it_over_http(sdk: Any, http: Any, fake_llm_server: Any) -> None:
    source = textwrap.dedent('''
        def launch(target: str) -> str:
            """Launch something.

            Args:
                target: what to launch
            """
            return "launched " + target
    ''')
    tool = sdk.tools.create(source_code=source)
    agent = new_agent(sdk, fake_llm_server, tool_ids=[tool.id])
    state = sdk.agents.tools.update_approval("launch", agent_id=agent.id, body_requires_approval=True)
    assert {"type": "requires_approval", "tool_name": "launch"} in [
        {"type": r.type, "tool_name": r.tool_name} for r in state.tool_rules]

    ask = {"role": "user", "content": 'call launch {"target": "rocket"}'}
    first = sdk.agents.messages.create(agent.id, messages=[ask])
    assert first.stop_reason.stop_reason == "requires_approval"
    [request] = [m for m in first.messages if m.message_type == "approval_request_message"]
    assert request.tool_call.name == "launch"
    assert not [m for m in first.messages if m.message_type == "tool_return_message"]

    busy = http.post(f"/v1/agents/{agent.id}/messages", json={"messages": [{"role": "user", "content": "hi"}]})
    assert busy.status_code == 409 and "waiting for approval" in busy.json()["detail"]

    approval = {"type": "approval", "approvals": [
        {"type": "approval", "tool_call_id": request.tool_call.tool_call_id, "approve": True}]}
    second = sdk.agents.messages.create(agent.id, messages=[approval])
    [result] = [m for m in second.messages if m.message_type == "tool_return_message"]
    assert result.status == "success" and "launched rocket" in result.tool_return
    assert second.stop_reason.stop_reason == "end_turn"
    history = [m.message_type for m in sdk.agents.messages.list(agent.id, order="asc", limit=50)]
    assert "approval_request_message" in history

    sdk.agents.tools.update_approval("launch", agent_id=agent.id, body_requires_approval=False)
    third = sdk.agents.messages.create(agent.id, messages=[ask])
    assert third.stop_reason.stop_reason == "end_turn"
    assert [m.message_type for m in third.messages if m.message_type == "tool_return_message"]


def test_health_models_and_docs(sdk: Any, http: Any) -> None:
    assert sdk.health().status == "ok"
    assert isinstance(sdk.models.list(), list)
    spec = http.get("/openapi.json").json()
    assert "/v1/agents/{agent_id}/messages" in spec["paths"]
    assert http.get("/docs").status_code == 200


def test_the_schemas_bounds_are_json_schema_keywords(http: Any) -> None:
    """Found by schemathesis: a bound set after a validator came out as pydantic's ``ge`` (which
    JSON Schema ignores), so the schema allowed a chunk size of -2**62 that the route refused."""
    spec = http.get("/openapi.json").json()
    pydantic_only = {"ge", "gt", "le", "lt", "min_length", "max_length", "multiple_of"}

    def stray(node: Any, where: str) -> list[str]:
        if isinstance(node, dict):
            found = [f"{where}/{key}" for key, value in node.items()
                     if key in pydantic_only and not isinstance(value, dict)]
            return found + [hit for key, value in node.items() for hit in stray(value, f"{where}/{key}")]
        if isinstance(node, list):
            return [hit for i, value in enumerate(node) for hit in stray(value, f"{where}[{i}]")]
        return []

    assert not stray(spec, ""), stray(spec, "")
    size = spec["components"]["schemas"]["CreateFolderRequest"]["properties"]["embedding_chunk_size"]
    assert size["anyOf"][0]["minimum"] == 1
    refused = http.post("/v1/folders/", json={"name": "f", "embedding_chunk_size": -4611686018427387904})
    assert refused.status_code == 422 and "greater than or equal to 1" in refused.text


# --------------------------------------------------------------------------- one runtime, two doors


def test_agents_are_shared_between_http_and_the_driver(client: Any, sdk: Any, fake_llm_server: Any) -> None:
    over_http = new_agent(sdk, fake_llm_server)
    handle = client.get_agent(over_http.id)
    assert handle.send("from a script").assistant_text() == "You said: from a script"

    in_driver = client.create_agent(f"drv-{uuid.uuid4().hex[:8]}", model="fake-model",
                                    model_endpoint=fake_llm_server.url)
    assert sdk.agents.retrieve(in_driver.id).name == in_driver.name
    reply = sdk.agents.messages.create(in_driver.id, messages=[{"role": "user", "content": "from http"}])
    assert reply.messages[-1].content == "You said: from http"
    assert [m.content for m in in_driver.messages() if m.role == "user"] == ["from http"]


def test_concurrent_sends_to_one_agent_wait_their_turn(http: Any, sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    results: dict[int, Any] = {}

    def send(i: int) -> None:
        results[i] = http.post(f"/v1/agents/{agent.id}/messages",
                               json={"messages": [{"role": "user", "content": f"message {i}"}]})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r.status_code for i, r in results.items()} == dict.fromkeys(range(6), 200)
    assert {i: r.json()["messages"][-1]["content"] for i, r in results.items()} == {
        i: f"You said: message {i}" for i in range(6)}


def test_every_serve_listener_is_on_loopback(base_url: str) -> None:
    from test_network import _is_loopback, _socket_inodes, listening_sockets

    listeners = listening_sockets()
    ours = {listeners[i] for pid in descendants(os.getpid()) for i in _socket_inodes(pid) if i in listeners}
    port = int(base_url.rsplit(":", 1)[1])
    assert ("127.0.0.1", port) in ours
    assert not [a for a in ours if not _is_loopback(a[0])], sorted(ours)


def test_the_proxy_and_the_replica_run_with_the_lean_request_path(base_url: str) -> None:
    """Serve's per-request settings (direct ingress, no extra loop threads) reach the
    processes that read them, and the API replica itself listens on the API's port:
    through Serve's proxy a message costs ~4x the CPU in Serve."""
    from pathlib import Path

    from test_network import _socket_inodes, listening_sockets

    from letta_ray.serve.startup import PROXY_ENV, REPLICA_ENV, direct_ingress_env

    def environ(pid: int) -> dict[str, str]:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)

    def cmdline(pid: int) -> str:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")

    pids = descendants(os.getpid())
    proxies = [p for p in pids if "ray::ProxyActor" in cmdline(p)]
    replicas = [p for p in pids if "ServeReplica:letta_ray:letta_ray_http" in cmdline(p)]
    assert proxies and replicas
    for pid in proxies:
        assert PROXY_ENV.items() <= environ(pid).items()
    port = int(base_url.rsplit(":", 1)[1])
    for pid in replicas:
        assert (REPLICA_ENV | direct_ingress_env(port)).items() <= environ(pid).items()
    listeners = listening_sockets()
    owners = [pid for pid in pids for inode in _socket_inodes(pid) if listeners.get(inode) == ("127.0.0.1", port)]
    assert owners and set(owners) <= set(replicas), (owners, replicas, proxies)
    assert httpx.get(f"{base_url}/v1/health/").status_code == 200


# --------------------------------------------------------------------------- errors, over raw HTTP


def test_unknown_things_are_404_with_a_json_detail(http: Any) -> None:
    for method, path, body in [
        ("GET", "/v1/agents/agent-nope", None),
        ("POST", "/v1/agents/agent-nope/messages", {"messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/v1/agents/agent-nope/messages/stream", {"messages": [{"role": "user", "content": "hi"}]}),
        ("GET", "/v1/agents/agent-nope/messages", None),
        ("GET", "/v1/agents/agent-nope/archival-memory", None),
        ("DELETE", "/v1/agents/agent-nope", None),
        ("GET", "/v1/blocks/block-nope", None),
        ("GET", "/v1/runs/run-nope", None),
    ]:
        response = http.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert "not found" in response.json()["detail"], (method, path)
    response = http.get("/v1/no-such-route")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}


def test_invalid_bodies_are_422(http: Any, sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    cases = [
        ("/v1/agents/", {"memory_blocks": "not a list"}),
        ("/v1/agents/", {"model": "fake-model", "context_window_limit": 10}),
        (f"/v1/agents/{agent.id}/messages", {"messages": []}),
        (f"/v1/agents/{agent.id}/messages", {"messages": [{"role": "wizard", "content": "hi"}]}),
    ]
    for path, body in cases:
        response = http.post(path, json=body)
        assert response.status_code == 422, (path, body, response.text)
        assert response.json()["detail"], (path, body)
    malformed = http.post(f"/v1/agents/{agent.id}/messages", content=b'{"messages": [',
                          headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["detail"]


def test_bad_edits_are_400_and_change_nothing(http: Any, sdk: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    response = http.patch(f"/v1/agents/{agent.id}/core-memory/blocks/human", json={"value": "x" * 201})
    assert response.status_code == 400
    assert "over its limit of 200" in response.json()["detail"]
    assert sdk.agents.blocks.retrieve("human", agent_id=agent.id).value == "Name: Ada"
    response = http.post("/v1/blocks/", json={"label": "big", "value": "x" * 20, "limit": 10})
    assert response.status_code == 400 and "over its limit" in response.json()["detail"]
    response = http.post("/v1/tools/", json={"source_code": "def f(x):\n    return x\n"})
    assert response.status_code == 400 and "docstring" in response.json()["detail"]
    response = http.patch(f"/v1/agents/{agent.id}/core-memory/blocks/attach/block-nope")
    assert response.status_code == 404


def test_a_page_size_past_the_maximum_is_a_422_and_the_schema_says_so(http: Any) -> None:
    """Found by schemathesis: this once reached DuckDB and came back as a 500 with its SQL."""
    response = http.get("/v1/blocks/", params={"label": "0", "limit": "591993940433374975879547080146944"})
    assert response.status_code == 422, response.text
    assert "less than or equal to 10000" in response.text and "SELECT" not in response.text
    assert http.get("/v1/blocks/", params={"limit": 10_000}).status_code == 200
    spec = http.get("/openapi.json").json()
    limit = next(p for p in spec["paths"]["/v1/blocks/"]["get"]["parameters"] if p["name"] == "limit")
    bounds = limit["schema"]["anyOf"][0] if "anyOf" in limit["schema"] else limit["schema"]
    assert bounds["maximum"] == 10_000 and bounds["minimum"] == 0
    # every list route's limit is bounded in the published schema
    unbounded = [(path, op) for path, ops in spec["paths"].items() for op, spec_op in ops.items()
                 for p in spec_op.get("parameters", []) if p["name"] == "limit"
                 and "maximum" not in json.dumps(p["schema"])]
    assert not unbounded, unbounded
    block = http.post("/v1/blocks/", json={"label": "x", "value": "", "limit": 10**30})
    assert block.status_code == 422


def test_a_bad_patch_is_refused_and_does_not_break_later_reads(http: Any) -> None:
    """Found by schemathesis: PATCH /v1/folders/{id} with "metadata": null was stored as it
    was, and from then on every listing of folders failed."""
    folder = http.post("/v1/folders/", json={"name": "patched-badly"}).json()
    for bad in ({"metadata": None}, {"name": None}, {"metadata": ["not", "an", "object"]}):
        response = http.patch(f"/v1/folders/{folder['id']}", json=bad)
        assert response.status_code in (400, 422), (bad, response.text)
    assert http.get(f"/v1/folders/{folder['id']}").json()["metadata"] == {}
    assert http.get("/v1/folders/", params={"limit": 1000}).status_code == 200
    assert http.patch(f"/v1/folders/{folder['id']}", json={"metadata": {"k": "v"}}).json()["metadata"] == {"k": "v"}
    archive = http.post("/v1/archives/", json={"name": "patched-archive"}).json()
    assert http.patch(f"/v1/archives/{archive['id']}", json={"metadata": ["a", "list"]}).status_code in (400, 422)
    assert http.patch(f"/v1/archives/{archive['id']}", json={"name": None}).json()["name"] == "patched-archive"
    assert http.get("/v1/archives/", params={"limit": 1000}).status_code == 200


def test_a_method_not_allowed_lists_every_method_of_the_path(http: Any) -> None:
    """Starlette lists only the first matching route's methods; GET and POST of /v1/agents/
    are two routes, and the answer must name both (found by schemathesis)."""
    response = http.request("OPTIONS", "/v1/agents/")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST"}
    response = http.request("PUT", "/v1/agents/agent-x")
    assert response.status_code == 405 and set(response.headers["allow"].split(", ")) == {"DELETE", "GET", "PATCH"}
    # the most specific path: /v1/agents/count is its own route, not an agent called "count"
    assert http.request("OPTIONS", "/v1/agents/count").headers["allow"] == "GET"
    assert http.get("/v1/nowhere").status_code == 404


def test_an_internal_error_reaches_the_client_as_a_500_with_an_error_id_only(
        client: Any, caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from letta_ray.errors import StorageError
    from letta_ray.serve.app import create_app

    class Broken:
        settings = client.settings

        async def list_blocks_async(self, **kwargs: Any) -> list[Any]:
            raise RuntimeError('Binder Error: SELECT doc FROM blocks WHERE label = ? -- at /srv/meta.duckdb')

        async def list_tools_async(self, **kwargs: Any) -> list[Any]:
            raise StorageError("cannot write /srv/letta/meta.duckdb: IO Error: No space left on device")

    with TestClient(create_app(Broken()), raise_server_exceptions=False) as broken:  # type: ignore[arg-type]
        response = broken.get("/v1/blocks/")
        assert response.status_code == 500
        body = response.json()
        assert set(body) == {"detail", "error_id"} and body["detail"].startswith("internal error")
        assert "SELECT" not in response.text and "duckdb" not in response.text and "RuntimeError" not in response.text
        assert any(body["error_id"] in r.getMessage() and r.exc_info for r in caplog.records)  # the detail is logged
        storage = broken.get("/v1/tools/")
        assert storage.status_code == 503 and storage.json()["detail"].startswith("storage is unavailable")
        assert "No space" not in storage.text and "/srv" not in storage.text


def test_bearer_token_is_required_when_configured(client: Any) -> None:
    from fastapi.testclient import TestClient

    from letta_ray.serve.app import create_app

    class Guarded:
        settings = client.settings.model_copy(update={"api_token": "s3cret"})

        async def list_agents_async(self, **kwargs: Any) -> list[Any]:
            return []

        async def list_tools_async(self, **kwargs: Any) -> list[Any]:
            return []

    with TestClient(create_app(Guarded())) as guarded:  # type: ignore[arg-type]
        assert guarded.get("/v1/agents/").status_code == 401
        assert guarded.get("/v1/agents/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert guarded.get("/v1/agents/", headers={"Authorization": "Bearer s3cret"}).json() == []
        assert guarded.get("/v1/health/").status_code == 200
    # and that is the header Letta's SDK sends for its api_key
    assert letta_client.Letta(base_url="http://127.0.0.1:1", api_key="s3cret").auth_headers == {
        "Authorization": "Bearer s3cret"}


def test_with_a_token_every_route_but_health_refuses_a_request_without_it(client: Any) -> None:
    """Walks every operation of the published OpenAPI spec without a token: 401 for all but
    health; Letta's X-BARE-PASSWORD header (as the ADE sends it, and bare) is taken too."""
    import re

    from fastapi.testclient import TestClient

    from letta_ray.serve.app import create_app

    class Guarded:
        settings = client.settings.model_copy(update={"api_token": "s3cret"})

        async def list_agents_async(self, **kwargs: Any) -> list[Any]:
            return []

    with TestClient(create_app(Guarded()), raise_server_exceptions=False) as guarded:  # type: ignore[arg-type]
        spec = guarded.get("/openapi.json").json()
        walked, let_through = 0, []
        for path, operations in spec["paths"].items():
            for method in operations:
                url = re.sub(r"\{[^}]+\}", "x", path)
                response = guarded.request(method.upper(), url)
                walked += 1
                if path.startswith("/v1/health"):
                    assert response.status_code == 200, (method, path)
                elif response.status_code != 401:
                    let_through.append((method, path, response.status_code))
        assert not let_through, let_through
        assert walked > 100  # the whole API, not a handful
        for header in ({"X-BARE-PASSWORD": "password s3cret"}, {"X-BARE-PASSWORD": "s3cret"},
                       {"Authorization": "Bearer s3cret"}):
            assert guarded.get("/v1/agents/", headers=header).json() == [], header
        assert guarded.get("/v1/agents/", headers={"X-BARE-PASSWORD": "password wrong"}).status_code == 401


# --------------------------------------------------------------------------- the command


def test_letta_ray_serve_command_serves_until_terminated(tmp_path: Any) -> None:
    port = free_port()
    env = {**os.environ, "LETTA_RAY_HOME": str(tmp_path / "home")}
    log = tmp_path / "serve.log"
    proc = start_serve(port, env, log)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/v1/health/", timeout=10).json()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert f"letta_ray HTTP API on http://127.0.0.1:{port}/v1" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_groups_round_robin_over_http(http: Any, sdk: Any, fake_llm_server: Any) -> None:
    a, b = new_agent(sdk, fake_llm_server), new_agent(sdk, fake_llm_server)
    created = http.post("/v1/groups/", json={"agent_ids": [a.id, b.id], "description": "pair",
                                             "manager_config": {"manager_type": "round_robin", "max_turns": 2}})
    assert created.status_code == 200, created.text
    group = created.json()
    assert group["manager_type"] == "round_robin" and group["agent_ids"] == [a.id, b.id]
    assert http.get(f"/v1/groups/{group['id']}").json()["id"] == group["id"]
    assert group["id"] in [g["id"] for g in http.get("/v1/groups/", params={"limit": 100}).json()]

    sent = http.post(f"/v1/groups/{group['id']}/messages", json={"messages": [{"role": "user", "content": "hi all"}]})
    assert sent.status_code == 200, sent.text
    body = sent.json()
    replies = [m for m in body["messages"] if m["message_type"] == "assistant_message"]
    assert [m["sender_id"] for m in replies] == [a.id, b.id]  # each participant in turn
    assert body["stop_reason"]["message_type"] == "stop_reason"

    assert http.post("/v1/groups/", json={"agent_ids": ["agent-nope"]}).status_code == 404
    assert http.post("/v1/groups/", json={"agent_ids": [a.id], "manager_config": {"manager_type": "x"}}
                     ).status_code == 422
    assert http.delete(f"/v1/groups/{group['id']}").status_code == 200
    assert http.get(f"/v1/groups/{group['id']}").status_code == 404


def test_a_killed_api_replica_is_replaced_on_the_same_port(base_url: str, http: Any, sdk: Any,
                                                          fake_llm_server: Any) -> None:
    """kill -9 of the API replica: Serve starts another, which listens on the same port
    (direct ingress hands out a range of exactly that port) and serves the same agents.
    Kept last in this module: the API is down while the replica restarts."""

    agent = new_agent(sdk, fake_llm_server)

    def replicas() -> set[int]:
        return {p for p in descendants(os.getpid())
                if "ServeReplica:letta_ray:letta_ray_http" in Path(f"/proc/{p}/cmdline").read_bytes().decode()}

    (old,) = replicas()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 90
    answered = None
    while time.monotonic() < deadline:
        try:
            if replicas() - {old} and (answered := httpx.get(f"{base_url}/v1/agents/{agent.id}", timeout=5)
                                       ).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    assert answered is not None and answered.status_code == 200, "the API did not come back on its port"
    assert answered.json()["id"] == agent.id
    reply = http.post(f"/v1/agents/{agent.id}/messages", json={"messages": [{"role": "user", "content": "again"}]})
    assert reply.status_code == 200 and reply.json()["messages"][-1]["content"] == "You said: again"


# --------------------------------------------------------------------------- MCP servers


def test_the_mcp_server_routes_with_the_letta_sdk(sdk: Any, http: Any, fake_llm_server: Any) -> None:
    demo = {"mcp_server_type": "stdio", "command": sys.executable,
            "args": [str(Path(__file__).with_name("mcp_demo_server.py")), "stdio"]}
    created = sdk.mcp_servers.create(server_name="demo-sdk", config=demo)
    try:
        assert created.server_name == "demo-sdk" and created.mcp_server_type == "stdio"
        assert [s.id for s in sdk.mcp_servers.list()].count(created.id) == 1
        assert sdk.mcp_servers.retrieve(created.id).command == sys.executable
        tools = sdk.mcp_servers.tools.list(created.id)
        add = next(t for t in tools if t.name == "add")
        assert add.tool_type == "external_mcp" and sdk.mcp_servers.tools.retrieve(
            add.id, mcp_server_id=created.id).name == "add"
        result = sdk.mcp_servers.tools.run(add.id, mcp_server_id=created.id, args={"a": 3, "b": 4})
        assert result.status == "success" and result.func_return == "7"
        failed = sdk.mcp_servers.tools.run(add.id, mcp_server_id=created.id, args={"a": "x", "b": 1})
        assert failed.status == "error"
        renamed = sdk.mcp_servers.update(created.id, server_name="demo-sdk-2", config={"mcp_server_type": "stdio"})
        assert renamed.server_name == "demo-sdk-2"
        assert sdk.tools.retrieve(add.id).tags == ["mcp:demo-sdk-2"]  # the same tool, retagged
        changes = sdk.mcp_servers.refresh(created.id)
        assert set(changes) >= {"added", "updated", "deleted"}
        agent = new_agent(sdk, fake_llm_server)
        sdk.agents.tools.attach(add.id, agent_id=agent.id)
        assert "add" in [t.name for t in sdk.agents.tools.list(agent.id)]
        run = http.post(f"/v1/agents/{agent.id}/tools/add/run", json={"args": {"a": 1, "b": 1}})
        assert run.status_code == 200 and run.json()["func_return"] == "2"
        bad = http.post("/v1/mcp-servers/", json={"server_name": "x", "config": {
            "mcp_server_type": "streamable_http", "server_url": "not a url"}})
        assert bad.status_code in (400, 422) and "server_url" in bad.text
        duplicate = http.post("/v1/mcp-servers/", json={"server_name": "demo-sdk-2", "config": demo})
        assert duplicate.status_code == 409
        assert http.get("/v1/mcp-servers/mcp_server-nope").status_code == 404
    finally:
        sdk.mcp_servers.delete(created.id)
    assert http.get(f"/v1/mcp-servers/{created.id}").status_code == 404
    assert http.get(f"/v1/tools/{add.id}").status_code == 404


def test_client_side_tools_over_http(sdk: Any, http: Any, fake_llm_server: Any) -> None:
    agent = new_agent(sdk, fake_llm_server)
    lookup = {"name": "look_up", "description": "Look a word up on the client.",
              "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}
    ask = {"role": "user", "content": 'call look_up {"word": "ossify"}'}
    first = sdk.agents.messages.create(agent.id, messages=[ask], client_tools=[lookup])
    assert first.stop_reason.stop_reason == "requires_approval"
    [request] = [m for m in first.messages if m.message_type == "approval_request_message"]
    assert request.tool_call.name == "look_up"
    call_id = request.tool_call.tool_call_id
    wrong = http.post(f"/v1/agents/{agent.id}/messages", json={"messages": [
        {"type": "approval", "approvals": [{"type": "approval", "tool_call_id": call_id, "approve": True}]}]})
    assert wrong.status_code == 400 and "client-side tool" in wrong.json()["detail"]
    # the SDK's ToolReturnCreate: the client ran it
    second = sdk.agents.messages.create(agent.id, messages=[{"type": "tool_return", "tool_returns": [
        {"type": "tool", "tool_call_id": call_id, "tool_return": "to turn into bone", "status": "success"}]}])
    [result] = [m for m in second.messages if m.message_type == "tool_return_message"]
    assert result.status == "success" and "to turn into bone" in result.tool_return
    assert second.stop_reason.stop_reason == "end_turn"
    assert "look_up" not in [t.name for t in sdk.agents.tools.list(agent.id)]
    bad = http.post(f"/v1/agents/{agent.id}/messages", json={"messages": [ask], "client_tools": [{"name": "a b"}]})
    assert bad.status_code == 422


# --------------------------------------------------------------------------- agent files


def test_agent_files_import_and_export_over_http(sdk: Any, http: Any) -> None:
    fixtures = Path(__file__).with_name("fixtures") / "agent-files"
    with open(fixtures / "customer_service.af", "rb") as f:  # JSON encoded twice, as the SDK saves it
        imported = sdk.agents.import_file(file=f, override_existing_tools=True,
                                          secrets=json.dumps({"SUPPORT_KEY": "s"}))
    [agent_id] = imported.agent_ids
    agent = sdk.agents.retrieve(agent_id)
    assert agent.name == "customer_service_copy"  # the route's default, as in Letta
    assert {"cancel_order", "check_order_status"} <= {t.name for t in sdk.agents.tools.list(agent_id)}
    exported = http.get(f"/v1/agents/{agent_id}/export")
    assert exported.status_code == 200
    doc = exported.json()
    assert doc["agents"][0]["name"] == "customer_service_copy"
    assert {t["name"] for t in doc["tools"]} >= {"cancel_order", "conversation_search"}
    text = sdk.agents.export_file(agent_id)  # the SDK reads it as text
    assert json.loads(text)["agents"][0]["id"] == "agent-0"
    again = http.post("/v1/agents/import", files={"file": ("a.af", exported.content)},
                      data={"append_copy_suffix": "false", "name": "cs-2"})
    assert again.status_code == 200
    assert sdk.agents.retrieve(again.json()["agent_ids"][0]).name == "cs-2"
    bad = http.post("/v1/agents/import", files={"file": ("a.af", b'{"agents": [{"id": "agent-0", "name": "x", '
                                                               b'"block_ids": ["block-7"]}]}')})
    assert bad.status_code == 400 and "block-7" in bad.json()["detail"]
    assert http.post("/v1/agents/import", files={"file": ("a.af", b"\x00garbage")}).status_code == 400
    assert http.get("/v1/agents/agent-nope/export").status_code == 404
    for an_id in [agent_id, again.json()["agent_ids"][0]]:
        sdk.agents.delete(an_id)


_VOLATILE = {"id", "agent_id", "created_at", "updated_at", "in_context_message_ids", "tool_ids", "block_ids",
             "agent_ids", "manager_agent_id", "group_ids", "metadata", "otid"}


def _normal(doc: Any) -> Any:
    """An agent file up to its ids and timestamps (references kept as counts)."""
    if isinstance(doc, dict):
        return {k: (len(v) if isinstance(v, list) else None) if k in _VOLATILE else _normal(v)
                for k, v in doc.items() if k not in ("exported_by",)}
    if isinstance(doc, list):
        return [_normal(v) for v in doc]
    return doc


def _differences(x: Any, y: Any, path: str = "") -> list[str]:
    if isinstance(x, dict) and isinstance(y, dict):
        return [d for k in sorted(set(x) | set(y)) for d in _differences(x.get(k), y.get(k), f"{path}.{k}")]
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return [d for i, (p, q) in enumerate(zip(x, y, strict=True)) for d in _differences(p, q, f"{path}[{i}]")]
    return [] if x == y else [f"{path}: {x!r:.120} != {y!r:.120}"]


@pytest.mark.parametrize("name", ["customer_service.af", "deep_research_agent.af", "outreach_workflow_agent.af",
                                  "evie.af", "void.af"])
def test_real_agent_files_import_answer_and_round_trip(name: str, sdk: Any, http: Any, fake_llm_server: Any) -> None:
    with open(Path(__file__).with_name("fixtures") / "agent-files" / name, "rb") as f:
        ids = sdk.agents.import_file(file=f, append_copy_suffix=False).agent_ids
    main = ids[0]
    state = sdk.agents.retrieve(main)
    sdk.agents.update(main, llm_config={"model": "fake-model", "model_endpoint_type": "openai",
                                        "model_endpoint": fake_llm_server.url, "context_window": 32000})
    reply = sdk.agents.messages.create(main, messages=[{"role": "user", "content": "hello there"}], max_steps=6)
    # the fake model cannot follow outreach's workflow rules to their end: it answers, within its steps
    assert reply.stop_reason.stop_reason in ("end_turn", "no_tool_call", "max_steps")
    assert any(m.message_type in ("assistant_message", "tool_call_message") for m in reply.messages)
    first = http.get(f"/v1/agents/{main}/export", params={"scrub_messages": True}).json()
    again = http.post("/v1/agents/import", files={"file": (name, json.dumps(first).encode())},
                      data={"append_copy_suffix": "false"}).json()["agent_ids"]
    assert len(again) == len(ids)
    second = http.get(f"/v1/agents/{again[0]}/export", params={"scrub_messages": True}).json()
    assert _differences(_normal(first), _normal(second)) == []
    assert first["agents"][0]["name"] == state.name
    for an_id in [*ids, *again]:
        sdk.agents.delete(an_id)
