"""The driver API on the shared local Ray: agents on hosts, stores, durability."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import letta_ray
from letta_ray.errors import BlockLimitError, ConflictError, InputTooLargeError, InvalidInputError, NotFoundError
from letta_ray.local_cluster import process_gone
from letta_ray.messages import AssistantMessage, ToolCallMessage
from letta_ray.schemas import Block

pytestmark = pytest.mark.ray


def poll(check: Any, *, timeout: float = 30.0, every: float = 0.05, what: str = "the condition") -> Any:
    """``check()``'s first truthy value, asked every ``every`` seconds for up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g} s")
        time.sleep(every)




def new_agent(client: Any, server: Any, **kw: Any) -> Any:
    kw.setdefault("memory_blocks", [{"label": "human", "value": "Name: Ada", "limit": 200},
                                    {"label": "persona", "value": "I am Sam."}])
    return client.create_agent(f"sam-{uuid.uuid4().hex[:8]}", model="fake-model", model_endpoint=server.url, **kw)


def test_create_send_and_read_through_the_driver_api(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server, tags=["demo"])
    reply = agent.send("hi, I moved to Lisbon")
    assert reply.stop_reason.stop_reason == "end_turn"
    assert reply.assistant_text() == "You said: hi, I moved to Lisbon"
    assert reply.usage.step_count == 1 and reply.usage.total_tokens > 0

    reply = agent.send("remember lives in Lisbon")
    assert [type(m) for m in reply.messages][1:3] == [ToolCallMessage, letta_ray.messages.ToolReturnMessage]
    assert isinstance(reply.messages[-1], AssistantMessage)
    assert agent.blocks["human"].value == "Name: Ada\nlives in Lisbon"

    history = agent.messages(limit=50)
    assert [m.content for m in history if m.role == "user"] == ["hi, I moved to Lisbon", "remember lives in Lisbon"]
    page = agent.messages(limit=2)
    rest = agent.messages(limit=50, after=page[-1].id)
    assert [m.id for m in page + rest] == [m.id for m in history]

    assert client.get_agent(agent.name).id == agent.id
    assert client.get_agent(agent.id).name == agent.name
    assert agent.id in [a.id for a in client.list_agents(tags=["demo"], limit=None)]


def test_archival_insert_and_search(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server)
    agent.archival.insert("Ada's sister lives in Porto", tags=["family"])
    agent.archival.insert("The quarterly report is due on Friday", tags=["work"])
    agent.send("archive Ada likes green tea")  # the model stores one itself
    assert agent.archival.count() == 3
    [best] = agent.archival.search("where does the sister live", top_k=1)
    assert "Porto" in best.text
    tagged = agent.archival.search("tea", tags=["note"])
    assert [p.text for p in tagged] == ["Ada likes green tea"]


def test_concurrent_sends_to_one_agent_are_serialised_and_none_lost(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server)
    replies: dict[int, str] = {}

    def send(i: int) -> None:
        replies[i] = agent.send(f"message {i}").assistant_text()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replies == {i: f"You said: message {i}" for i in range(10)}
    history = agent.messages(limit=200)
    users = [m for m in history if m.role == "user"]
    assert sorted(m.content for m in users) == sorted(f"message {i}" for i in range(10))
    # serialised: each user message is followed by its own reply before the next user message
    roles = [m.role for m in history]
    assert roles == ["user", "assistant", "tool"] * 10


def test_bad_input_raises_typed_errors(client: Any, fake_llm_server: Any) -> None:
    with pytest.raises(NotFoundError, match="agent 'agent-nope' not found"):
        client.get_agent("agent-nope")
    with pytest.raises(NotFoundError):
        client.delete_agent("agent-nope")
    agent = new_agent(client, fake_llm_server)
    with pytest.raises(BlockLimitError, match="over its limit of 200"):
        agent.blocks.update("human", "x" * 201)
    assert agent.blocks["human"].value == "Name: Ada"
    with pytest.raises(InvalidInputError, match="context_window"):
        client.create_agent("bad", model="fake-model", context_window=10)
    with pytest.raises(InvalidInputError, match="invalid memory block"):
        client.create_agent("bad", model="fake-model", memory_blocks=[{"value": "no label"}])
    with pytest.raises(InvalidInputError, match="no model given"):
        client.create_agent("bad", memory_blocks=[])
    with pytest.raises(NotFoundError, match="tool 'no_such_tool'"):
        client.create_agent("bad", model="fake-model", tools=["no_such_tool"])
    with pytest.raises(InvalidInputError):
        agent.send([])


def test_delete_agent_removes_it(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server)
    agent.send("hello")
    agent.archival.insert("a fact")
    client.delete_agent(agent.id)
    with pytest.raises(NotFoundError):
        client.get_agent(agent.id)
    with pytest.raises(NotFoundError):
        agent.send("are you there?")
    assert agent.archival.count() == 0


def test_custom_tool_created_from_source_and_used(client: Any, fake_llm_server: Any) -> None:
    source = textwrap.dedent('''
        def roll_dice(sides: int) -> str:
            """Roll a die.

            Args:
                sides: how many sides the die has
            """
            return f"rolled a {sides}-sided die"
    ''')
    tool = client.create_tool(source)
    assert tool.json_schema["parameters"]["properties"]["sides"]["type"] == "integer"
    agent = new_agent(client, fake_llm_server, tools=["roll_dice"])
    assert "roll_dice" in agent.state().tools

    def roll() -> Any:
        reply = agent.send('call roll_dice {"sides": 6}')
        return next(m for m in reply.messages if m.message_type == "tool_return_message")

    first = roll()
    assert first.status == "success" and "rolled a 6-sided die" in first.tool_return
    # A new version of the tool reaches the agent's host at its next turn (hosts cache tools).
    client.create_tool(source.replace('return f"rolled', 'return f"v2 rolled'))
    assert "v2 rolled a 6-sided die" in roll().tool_return
    client.run_sync(client.delete_tool_async(tool.id))
    gone = roll()
    assert gone.status == "error" and "roll_dice" in gone.tool_return


def _host_pid(client: Any, agent_id: str) -> int:

    _, host = client.run_sync(client.hosts.locate(agent_id))
    return client.run_sync(host.info())["pid"]


def test_hosts_send_llm_calls_through_litellms_own_http_client(client: Any, fake_llm_server: Any) -> None:

    agent = new_agent(client, fake_llm_server)
    assert agent.send("hi").assistant_text() == "You said: hi"
    _, host = client.run_sync(client.hosts.locate(agent.id))
    assert client.run_sync(host.info())["llm_http_handler"] == "litellm"


def test_hosts_run_with_the_collector_tuned_for_turns_in_flight(client: Any, fake_llm_server: Any) -> None:
    from letta_ray import _collector

    agent = new_agent(client, fake_llm_server)
    agent.send("hi")
    _, host = client.run_sync(client.hosts.locate(agent.id))
    collector = client.run_sync(host.info())["gc"]
    assert collector["thresholds"] == list(_collector.THRESHOLDS)
    assert len(collector["collections"]) == len(collector["seconds"]) == 3  # per generation, as bench/sim.py reads it


def test_kill_9_of_a_host_then_the_agent_answers_with_memory_intact(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server)
    agent.send("remember has a cat named Miso")
    agent.archival.insert("Miso was adopted in 2021")
    before = [m.id for m in agent.messages(limit=100)]
    pid = _host_pid(client, agent.id)
    os.kill(pid, signal.SIGKILL)
    poll(lambda: process_gone(pid), what=f"host process {pid} exiting")

    reply = agent.send("hello after the crash")
    assert reply.assistant_text() == "You said: hello after the crash"
    assert _host_pid(client, agent.id) != pid
    assert agent.blocks["human"].value == "Name: Ada\nhas a cat named Miso"
    after = [m.id for m in agent.messages(limit=100)]
    assert after[: len(before)] == before
    assert agent.archival.count() == 1
    # the rehydrated context still holds the pre-crash conversation
    assert any(m.content == "remember has a cat named Miso" for m in agent.context())


def test_a_retried_message_with_its_otid_is_answered_again_not_run_again(client: Any, fake_llm_server: Any) -> None:
    """Letta's ``otid`` is the idempotency key of a message: a client that did not get the
    reply sends it again, and gets the same reply, also after its host was killed."""
    from letta_ray.messages import MessageCreate

    agent = new_agent(client, fake_llm_server)
    asked = MessageCreate(content="remember likes tea", otid=f"otid-{uuid.uuid4().hex}")
    first = agent.send(asked)
    stored = [m.id for m in agent.messages(limit=None)]
    calls = fake_llm_server.request_count
    again = agent.send(asked)
    assert again.model_dump() == first.model_dump()
    streamed = [e for e in agent.stream(asked) if getattr(e, "message_type", "").endswith("_message")]
    assert [e.id for e in streamed] == [e.id for e in first.messages]
    assert [m.id for m in agent.messages(limit=None)] == stored and fake_llm_server.request_count == calls
    assert agent.blocks["human"].value == "Name: Ada\nlikes tea"  # the edit ran once

    pid = _host_pid(client, agent.id)
    os.kill(pid, signal.SIGKILL)
    poll(lambda: process_gone(pid), what=f"host process {pid} exiting")
    rebuilt = agent.send(asked)  # a new host: rebuilt from the context window and the run
    assert [e.id for e in rebuilt.messages] == [e.id for e in first.messages]
    assert rebuilt.stop_reason.stop_reason == first.stop_reason.stop_reason
    assert [m.id for m in agent.messages(limit=None)] == stored and fake_llm_server.request_count == calls
    fresh = agent.send(MessageCreate(content="and coffee", otid=f"otid-{uuid.uuid4().hex}"))
    assert fresh.assistant_text() == "You said: and coffee"


def test_close_and_reconnect_keeps_everything(ray_session: Any, fake_llm_server: Any, tmp_path: Path) -> None:
    home = tmp_path / "restart_home"
    first = letta_ray.connect(home=str(home))
    agent = new_agent(first, fake_llm_server)
    agent.send("remember plays chess")
    agent.archival.insert("likes the Sicilian defence", tags=["chess"])
    counts = (len(agent.messages(limit=None)), agent.archival.count(), agent.blocks["human"].value)
    first.close()

    second = letta_ray.connect(home=str(home))
    try:
        again = second.get_agent(agent.name)
        assert (len(again.messages(limit=None)), again.archival.count(), again.blocks["human"].value) == counts
        assert again.send("still there?").assistant_text() == "You said: still there?"
    finally:
        second.close()


def test_a_new_process_sees_what_the_last_one_wrote(fake_llm_server: Any, tmp_path: Path) -> None:
    """A real process restart: one process writes and exits, another connects and reads."""
    home = tmp_path / "process_home"
    script = textwrap.dedent(f'''
        import json, sys, letta_ray
        client = letta_ray.connect(home={str(home)!r})
        if sys.argv[1] == "write":
            a = client.create_agent("proc", model="fake-model", model_endpoint={fake_llm_server.url!r},
                                    memory_blocks=[{{"label": "human", "value": "Name: Ada"}}])
            a.send("remember owns a boat")
            a.archival.insert("the boat is called Wind", tags=["boat"])
            a.archival.insert("the boat is blue")
        a = client.get_agent("proc")
        print(json.dumps({{"messages": len(a.messages(limit=None)), "passages": a.archival.count(),
                          "human": a.blocks["human"].value}}))
        client.close()
    ''')
    env = {**os.environ, "LETTA_RAY_HOME": str(home)}
    runs = [subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, env=env,
                           timeout=240) for mode in ("write", "read")]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    wrote, read = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
    assert wrote == read
    assert read["human"] == "Name: Ada\nowns a boat" and read["passages"] == 2 and read["messages"] == 5


def test_streaming_yields_events_then_stop_reason_and_usage(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server)
    items = list(agent.stream("remember likes jazz"))
    kinds = [getattr(i, "message_type", None) for i in items]
    assert kinds == ["user_message", "tool_call_message", "tool_return_message", "assistant_message",
                     "stop_reason", "usage_statistics"]
    assert items[-2].stop_reason == "end_turn" and items[-1].step_count == 2
    assert agent.blocks["human"].value.endswith("likes jazz")  # persisted before the stop reason


def test_agents_on_different_hosts_message_each_other(client: Any, fake_llm_server: Any) -> None:
    from letta_ray.base_tools import MULTI_AGENT_TOOLS

    asker = new_agent(client, fake_llm_server, tools=MULTI_AGENT_TOOLS)
    answerer = new_agent(client, fake_llm_server)
    reply = asker.send(f"ask {answerer.id} how are you?")
    [result] = [m for m in reply.messages if m.message_type == "tool_return_message"]
    assert json.loads(result.tool_return)["status"] == "OK"
    assert "how are you?" in json.loads(result.tool_return)["message"]  # the other agent's echo
    theirs = answerer.messages(limit=10)
    assert theirs[0].sender_id == asker.id and f"from agent {asker.id}" in theirs[0].content


def test_sleeptime_agent_rewrites_a_shared_block_in_the_background(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server, enable_sleeptime=True, sleeptime_agent_frequency=5)
    sleeper_id = agent.state().metadata["sleeptime_agent_id"]
    for i in range(5):  # the sleep-time agent wakes after the 5th turn and takes ~1 s
        assert agent.send(f"turn {i}").assistant_text() == f"You said: turn {i}"
    [started] = poll(lambda: client.runs.list(agent_id=sleeper_id), what="the sleep-time run starting")
    assert started["status"] == "running" and started["main_agent_id"] == agent.id
    # replies keep coming while it works: the next turns end before its run does
    for i in range(5, 7):
        assert agent.send(f"turn {i}").assistant_text() == f"You said: turn {i}"
    assert client.runs.list(agent_id=sleeper_id)[0]["status"] == "running"
    [run] = poll(lambda: [r for r in client.runs.list(agent_id=sleeper_id) if r["status"] != "running"],
                 what="the sleep-time run ending")
    assert run["status"] == "completed" and run["stop_reason"] == "end_turn", run
    expected = "Name: Ada (reviewed by the sleep-time agent, 5 turns)"
    assert agent.blocks["human"].value == expected
    assert client.get_agent(sleeper_id).blocks["human"].value == expected
    # the main agent's next step sees the new value in its system prompt
    agent.send("and now?")
    last_prompt = fake_llm_server.requests[-1]["body"]["messages"][0]["content"]
    assert expected in last_prompt


def test_a_timer_wakes_an_agent_with_a_system_message(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server)
    agent.send("hello")  # a host's first turn loads litellm (seconds); don't let that eat the window
    schedule = client.schedule(agent.id, every_s=0.5, message="time to check in")
    assert [s.id for s in client.list_schedules(agent.id)] == [schedule.id]

    def wakeups() -> list[Any]:
        return [m for m in agent.messages(limit=100) if m.role == "system"]

    poll(lambda: len(wakeups()) >= 2, what="two wake-ups")
    client.cancel_schedule(schedule.id)
    assert client.list_schedules(agent.id) == []
    seen = wakeups()
    assert "time to check in" in seen[0].content
    assert all(f"Scheduled wake-up {schedule.id}" in m.content for m in seen)
    time.sleep(4 * 0.5)  # four periods: a cancelled schedule must not fire again (one may be in flight)
    assert len(wakeups()) <= len(seen) + 1
    with pytest.raises(NotFoundError):
        client.schedule("agent-nope", every_s=1)


def test_every_turn_is_a_run_with_its_steps_and_messages(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server, tags=["runs"])
    reply = agent.send("remember likes green tea")
    [run_id] = reply.usage.run_ids

    run = client.runs.retrieve(run_id)
    assert (run["agent_id"], run["status"], run["stop_reason"]) == (agent.id, "completed", "end_turn")
    assert run["usage"]["total_tokens"] == reply.usage.total_tokens and run["total_duration_ns"] > 0
    messages = client.runs.messages(run_id)
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant", "tool"]
    assert {m.run_id for m in messages} == {run_id}
    steps = client.runs.steps(run_id)
    assert [s.stop_reason for s in steps] == [None, "end_turn"] and all(s.status == "success" for s in steps)
    assert sum(s.total_tokens for s in steps) == reply.usage.total_tokens
    assert [m.role for m in client.steps.messages(steps[0].id)] == ["assistant", "tool"]
    assert client.steps.retrieve(steps[1].id).tags == ["runs"]
    assert [s.id for s in client.steps.list(agent_id=agent.id)] == [steps[1].id, steps[0].id]
    assert client.runs.list(agent_id=agent.id)[0]["id"] == run_id

    # The history of every agent, by id, page and search.
    assert client.messages.retrieve(messages[0].id).content == "remember likes green tea"
    assert [m.id for m in client.messages.list(agent_id=agent.id, limit=2)] == [m.id for m in messages[:-3:-1]]
    found = {m.id for m in client.messages.search("green tea", agent_id=agent.id)}
    assert messages[0].id in found and messages[1].id in found  # the user's words and the tool call's
    assert messages[2].id not in found

    client.runs.delete(run_id)
    with pytest.raises(NotFoundError):
        client.runs.retrieve(run_id)
    assert client.steps.list(run_id=run_id) == [] and len(agent.messages()) == 5


def test_cancel_stops_a_running_turn_cleanly(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server)
    replies: list[Any] = []
    sender = threading.Thread(target=lambda: replies.append(agent.send("slowly please")))
    sender.start()
    [run_id] = poll(lambda: agent.cancel(), what="the slow turn to be running")
    sender.join(20)

    assert not sender.is_alive() and replies[0].stop_reason.stop_reason == "cancelled"
    assert replies[0].usage.run_ids == [run_id]
    run = client.runs.retrieve(run_id)
    assert (run["status"], run["stop_reason"]) == ("cancelled", "cancelled")
    [dropped] = client.runs.steps(run_id)
    assert dropped.status == "cancelled"
    # Only the user's message was written: the dropped call left nothing behind.
    assert [m.role for m in client.runs.messages(run_id)] == ["user"]
    assert agent.cancel() == []  # nothing runs now
    assert agent.send("hi again").assistant_text() == "You said: hi again"  # and the agent goes on


def test_compact_recompile_preview_and_reset_with_initial_messages(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server)
    for i in range(6):
        agent.send(f"message number {i} " + "padding " * 30)
    before = len(agent.context())
    done = agent.compact()
    assert done["num_messages_before"] == before and 0 < done["num_messages_after"] < before
    assert done["summary"] and agent.state().summary == done["summary"]
    assert len(agent.context()) == done["num_messages_after"]
    assert len(agent.messages(limit=None)) == 6 * 3  # the history keeps everything

    agent.blocks.update("human", value="Name: Ada Lovelace")
    assert "Name: Ada Lovelace" in agent.system_prompt()
    payload = agent.preview("what do you know?")
    assert payload["messages"][0]["content"] == agent.system_prompt()
    assert payload["messages"][-1] == {"role": "user", "content": "what do you know?"}
    assert "send_message" in {t["function"]["name"] for t in payload["tools"]}
    assert len(agent.context()) == done["num_messages_after"]  # a preview changes nothing

    state = agent.reset_messages(add_default_initial_messages=True)
    assert [m.role for m in agent.context()] == ["assistant", "tool", "user"]
    assert state.message_ids == [m.id for m in agent.context()] and state.summary is None
    assert agent.send("hello").assistant_text() == "You said: hello"


def test_a_shared_archive_is_one_archival_memory_for_its_agents(client: Any, fake_llm_server: Any) -> None:
    handbook = client.archives.create("team handbook", description="what every agent should know")
    writer, reader, outsider = (new_agent(client, fake_llm_server) for _ in range(3))
    for agent in (writer, reader):
        assert client.archives.attach(agent.id, handbook.id) == [handbook.id]
    assert [a.id for a in client.archives.list(agent_id=reader.id)] == [handbook.id]

    # The writer's own tool stores into the archive; the reader's search finds it.
    writer.send("archive stand-ups are at nine in the blue room")
    [stored] = client.archives.passages(handbook.id)
    assert stored.text == "stand-ups are at nine in the blue room" and stored.agent_id == handbook.id
    client.archives.insert(handbook.id, "the office closes at six", tags=["hours"])
    assert [p.text for p in reader.archival.search("when are stand-ups?", top_k=1)] == [stored.text]
    found = client.archives.search("closing time office", agent_id=reader.id, tags=["hours"])
    assert [p.text for p in found] == ["the office closes at six"] and found[0].score > 0
    assert client.archives.search("stand-ups", agent_id=outsider.id) == []
    assert reader.state().archive_ids == [handbook.id]

    client.archives.update(handbook.id, name="handbook v2")
    assert client.archives.retrieve(handbook.id).name == "handbook v2"
    client.archives.delete(handbook.id)
    assert writer.state().archive_ids == [] and reader.archival.search("stand-ups") == []
    with pytest.raises(NotFoundError):
        client.archives.retrieve(handbook.id)


def test_folders_of_documents_agents_read_with_their_file_tools(client: Any, fake_llm_server: Any,
                                                               tmp_path: Path) -> None:
    from letta_ray.testing import tiny_pdf

    folder = client.folders.create(f"handbook-{uuid.uuid4().hex[:6]}", instructions="company policies")
    policies = tmp_path / "policies.md"
    policies.write_text("# Policies\n\nRefunds take five working days.\nThe help desk opens at eight.\n" +
                        "".join(f"Filler line {i} about nothing much.\n" for i in range(200)))
    uploaded = client.folders.upload(folder.id, policies)
    assert uploaded.processing_status == "pending" and uploaded.file_type == "text/markdown"
    done = client.folders.wait_for_file(folder.id, uploaded.id)
    assert done.processing_status == "completed" and done.total_chunks == done.chunks_embedded > 1
    report = tmp_path / "report.pdf"
    report.write_bytes(tiny_pdf(["Quarterly report", "Revenue grew 12 percent"]))
    pdf = client.folders.wait_for_file(folder.id, client.folders.upload(folder.id, report).id)
    assert pdf.processing_status == "completed"

    agent = new_agent(client, fake_llm_server)
    assert client.folders.attach(agent.id, folder.id) == [folder.id]
    assert {"open_files", "grep_files", "semantic_search_files"} <= set(agent.state().tools)

    def tool_result(command: str) -> str:
        reply = agent.send(command)
        [back] = [e for e in reply.messages if e.message_type == "tool_return_message"]
        return back.tool_return

    grepped = tool_result('call grep_files {"pattern": "refund"}')
    assert "1 matches in 1 files" in grepped and "policies.md:3" in grepped and "Refunds take" in grepped
    found = tool_result('call semantic_search_files {"query": "how fast does revenue grow", "limit": 1}')
    assert "report.pdf" in found and "Revenue grew 12 percent" in found
    request = {"file_requests": [{"file_name": f"{folder.name}/policies.md", "offset": 2, "length": 2}]}
    opened = tool_result(f"call open_files {json.dumps(request)}")
    assert "Opened" in opened and "(lines 3-4)" in opened
    [view] = agent.state().open_files
    assert view.view == "3: Refunds take five working days.\n4: The help desk opens at eight."
    assert view.view in agent.system_prompt()  # shown in the agent's context
    missing = tool_result('call open_files {"file_requests": [{"file_name": "nope.txt"}]}')
    assert "No file named 'nope.txt'" in missing and "policies.md" in missing

    listed = {f.file_name: o for f, o in client.folders.agent_files(agent.id)}
    assert set(listed) == {"policies.md", "report.pdf"} and listed["report.pdf"] is None
    assert client.folders.open_file(agent.id, pdf.id, length=1) == []
    assert [o.file_name.split("/")[1] for o in agent.state().open_files] == ["policies.md", "report.pdf"]
    assert client.folders.close_file(agent.id, uploaded.id) == [f"{folder.name}/policies.md"]

    # Bad files: refused at once if their type is unknown, marked "error" if they do not parse.
    with pytest.raises(InvalidInputError, match="supported files"):
        client.folders.upload(folder.id, tmp_path / "movie.mp4")
    (tmp_path / "broken.json").write_text("{not json")
    broken = client.folders.wait_for_file(folder.id, client.folders.upload(folder.id, tmp_path / "broken.json").id)
    assert broken.processing_status == "error" and "not valid JSON" in broken.error_message
    again = client.folders.upload(folder.id, policies)
    assert again.file_name == "policies (1).md"
    with pytest.raises(ConflictError, match="has a file named"):
        client.folders.upload(folder.id, policies, duplicate_handling="error")

    client.folders.delete_file(folder.id, pdf.id)
    assert agent.state().open_files == []
    client.folders.delete(folder.id)
    state = agent.state()
    assert state.folder_ids == [] and "grep_files" not in state.tools
    with pytest.raises(NotFoundError):
        client.folders.retrieve(folder.id)


def test_conversations_are_threads_over_one_memory(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server)
    agent.send("hello on the main thread")
    work = client.conversations.create(agent.id, summary="about work")
    home = client.conversations.create(agent.id)
    assert [c.id for c in client.conversations.list(agent_id=agent.id)] == [home.id, work.id]

    client.conversations.send(work.id, "remember likes jazz")
    assert "likes jazz" in agent.blocks["human"].value  # one memory for every thread
    client.conversations.send(home.id, "hi from home")
    last = [r["body"] for r in fake_llm_server.requests if r["path"].endswith("/chat/completions")][-1]
    said = [m.get("content") for m in last["messages"][1:]]
    assert "hi from home" in said and "remember likes jazz" not in said and "hello on the main thread" not in said
    assert "likes jazz" in last["messages"][0]["content"]  # ... but the memory is the same
    assert [m.role for m in client.conversations.messages(work.id)] == ["user", "assistant", "tool", "assistant",
                                                                         "tool"]
    assert {m.conversation_id for m in client.conversations.messages(home.id)} == {home.id}
    assert [m.content for m in agent.context() if m.role == "user"] == ["hello on the main thread"]
    assert client.conversations.retrieve(work.id).summary == "about work"
    assert len(client.conversations.retrieve(work.id).message_ids) == 5

    fork = client.conversations.fork(work.id)
    assert fork.message_ids == client.conversations.retrieve(work.id).message_ids
    client.conversations.send(fork.id, "only in the fork")
    assert len(client.conversations.retrieve(fork.id).message_ids) == 8
    assert len(client.conversations.retrieve(work.id).message_ids) == 5

    replies: list[Any] = []
    sender = threading.Thread(target=lambda: replies.append(client.conversations.send(home.id, "slowly at home")))
    sender.start()
    def cancel_home() -> list[str]:
        assert client.conversations.cancel(work.id) == []  # another thread's turn is not this one's to stop
        return client.conversations.cancel(home.id)

    poll(cancel_home, what="the slow turn of the home conversation to be cancelled")
    sender.join(20)
    assert replies[0].stop_reason.stop_reason == "cancelled"

    for i in range(4):
        client.conversations.send(work.id, f"work item {i} " + "detail " * 40)
    done = client.conversations.compact(work.id)
    assert done["num_messages_after"] < done["num_messages_before"]
    assert client.conversations.retrieve(work.id).summary == done["summary"]
    assert agent.state().summary is None  # the agent's own thread is untouched

    client.conversations.delete(home.id)
    with pytest.raises(NotFoundError):
        client.conversations.retrieve(home.id)
    assert any(m.content == "hi from home" for m in agent.messages(limit=None))  # the history keeps it
    with pytest.raises(NotFoundError):
        client.conversations.create("agent-missing")


def test_identities_name_who_agents_talk_to(client: Any, fake_llm_server: Any) -> None:
    key = f"user-{uuid.uuid4().hex[:6]}"
    agent = new_agent(client, fake_llm_server)
    block = client.run_sync(client.create_block_async(Block(label=f"about-{key}", value="likes tea")))
    ada = client.identities.create(key, "Ada", agent_ids=[agent.id], block_ids=[block.id],
                                   properties=[{"key": "plan", "value": "pro", "type": "string"}])
    assert ada.id.startswith("identity-") and client.identities.agents(ada.id) == [agent.id]
    assert agent.state().identity_ids == [ada.id]
    with pytest.raises(ConflictError, match="exists already"):
        client.identities.create(key, "Someone else")
    again = client.identities.upsert(key, "Ada Lovelace", identity_type="user")
    assert again.id == ada.id and again.name == "Ada Lovelace" and again.block_ids == [block.id]
    assert [i.id for i in client.identities.list(identifier_key=key)] == [ada.id]
    client.identities.update(ada.id, agent_ids=[])
    assert agent.state().identity_ids == []
    client.identities.attach(agent.id, ada.id)
    client.identities.delete(ada.id)
    assert agent.state().identity_ids == []
    with pytest.raises(NotFoundError):
        client.identities.create(f"{key}-2", "Bob", block_ids=["block-missing"])


def test_status_shows_where_agents_are_and_that_the_store_keeps_up(client: Any, fake_llm_server: Any) -> None:
    agent = new_agent(client, fake_llm_server)
    before = client.status()["store"]["turns_applied"]
    agent.send("hello")
    assert agent.messages(limit=5)  # a read: every acknowledged turn is applied first
    status = client.status()
    placement, store = status["placement"], status["store"]
    assert placement["agents"] >= 1 and sum(placement["hosts"].values()) >= 1
    assert store["turns_applied"] >= before + 1 and store["last_applied_at"] is not None
    assert store["journal_backlog_bytes"] == 0  # nothing journaled is waiting after the read
    assert store["snapshots_to"] is None and status["keepers"] == []  # embedded: no object store, no keepers


def test_create_agent_waits_on_its_host_in_the_callers_thread_not_on_the_clients_loop(
        ray_session: Any, fake_llm_server: Any, tmp_path: Path) -> None:
    """A loop of create_agent calls is the obvious way to make agents: each call goes straight
    to its host from the caller's thread (an id reserved ahead, built-in tools only), so it
    still completes while the client's own event loop is busy."""
    c = letta_ray.connect(home=str(tmp_path / "home"))
    try:
        c.create_agent("first", model="fake-model", model_endpoint=fake_llm_server.url)
        assert c.hosts._reserved, "the first create reserves ids for the next ones"
        released, loop_free = threading.Event(), threading.Event()

        def occupy() -> None:  # holds the client's loop thread until the create below returns
            released.wait(60)
            loop_free.set()
        c.connection.loop.loop.call_soon_threadsafe(occupy)
        try:
            second = c.create_agent("second", model="fake-model", model_endpoint=fake_llm_server.url,
                                    memory_blocks=[{"label": "human", "value": "Ada"}])
            assert not loop_free.is_set(), "create_agent waited for the client's loop"
        finally:
            released.set()
        assert loop_free.wait(10)
        assert second.send("hi").assistant_text() == "You said: hi"
        assert [b.value for b in second.state().blocks if b.label == "human"] == ["Ada"]
        c.create_agent("third", model="fake-model", model_endpoint=fake_llm_server.url, new_blocks=True)
        stock = len(c.hosts._reserved)
        assert stock > 0, "the third create reserved more ids"
        with pytest.raises(InputTooLargeError, match="LETTA_RAY_MAX_BLOCK_CHARS"):  # the server's limits
            c.create_agent("too big", model="fake-model", model_endpoint=fake_llm_server.url,
                           memory_blocks=[{"label": "human", "value": "x" * 200_001, "limit": 300_000}])
        with pytest.raises(InvalidInputError, match="invalid initial message"):
            c.create_agent("bad start", model="fake-model", model_endpoint=fake_llm_server.url,
                           initial_messages=[{"role": "nobody", "content": "hi"}])
        assert len(c.hosts._reserved) == stock, "a refused agent takes no reserved id"
        assert {a.name for a in c.list_agents()} == {"first", "second", "third"}
    finally:
        c.close()


def test_a_closing_client_gives_its_unused_reserved_ids_back(
        ray_session: Any, fake_llm_server: Any, tmp_path: Path) -> None:
    """Ids reserved ahead count in their host's load; a client that closes while its runtime
    lives on (a driver connected to a cluster) releases the ones it did not use."""
    home = str(tmp_path / "home")
    owner = letta_ray.connect(home=home)
    try:
        def load() -> int:
            return sum(owner.run_sync(owner.runtime.directory.describe())["hosts"].values())
        visitor = letta_ray.connect(home=home)
        try:
            for i in range(3):  # reserves 2, then 4: three used, three left in stock
                visitor.create_agent(f"v{i}", model="fake-model", model_endpoint=fake_llm_server.url)
            left = len(visitor.hosts._reserved)
            assert left > 0
            before = load()
        finally:
            visitor.close(shutdown=False)
        assert load() == before - left
        assert owner.get_agent("v2").send("hi").assistant_text() == "You said: hi"  # the runtime lives on
    finally:
        owner.close()


def test_agents_created_one_by_one_outlive_a_restarted_directory_and_a_killed_host(
        ray_session: Any, fake_llm_server: Any, tmp_path: Path) -> None:
    """create_agent uses ids the directory placed ahead. A directory restarted since (it
    took the hosts over) or a host killed since must not leave an agent nowhere or on
    two hosts: the agent is placed again, created once, and answers."""
    import ray

    c = letta_ray.connect(home=str(tmp_path / "home"))
    try:
        def make(name: str) -> Any:
            return c.create_agent(name, model="fake-model", model_endpoint=fake_llm_server.url)

        def the_host_of(agent_id: str) -> tuple[str, Any]:
            return c.run_sync(c.runtime.directory.locate(agent_id))

        first = make("before")
        first_host = the_host_of(first.id)[0]
        assert c.hosts._reserved, "the first create_agent reserves more ids than it uses"
        epoch = c.hosts._epoch
        ray.kill(c.runtime.directory.actor, no_restart=False)

        def taken_over() -> bool:  # the restarted directory (a new epoch) takes the live hosts over
            try:
                return c.run_sync(c.runtime.directory.reserve([]))[0] != epoch
            except Exception:  # still restarting
                return False
        poll(taken_over, what="the restarted directory answering")
        assert the_host_of(first.id)[0] == first_host, "the restarted directory took the live hosts over"

        second = make("after the directory restarted")  # a reservation of the old directory: refused, placed anew
        _, host = the_host_of(second.id)
        assert second.id in c.run_sync(host.hosted())
        third = make("reserved by the new directory")
        assert c.hosts._epoch != epoch
        assert second.send("hi").assistant_text() == "You said: hi"

        def hosting(agent_id: str) -> list[str]:  # of the live hosts this client has seen
            found = []
            for host_id, handle in c.hosts._handles.items():
                try:
                    if agent_id in c.run_sync(handle.hosted()):
                        found.append(host_id)
                except Exception:  # the killed one
                    pass
            return found
        assert hosting(second.id) == [the_host_of(second.id)[0]]  # on one host: the directory's

        _, doomed = the_host_of(third.id)
        pid = c.run_sync(doomed.info())["pid"]
        os.kill(pid, signal.SIGKILL)
        poll(lambda: process_gone(pid), what=f"host process {pid} exiting")
        fourth = make("after the host died")  # its reservation may name the dead host
        assert fourth.send("still here?").assistant_text() == "You said: still here?"
        names = {a.name for a in c.list_agents()}
        assert names == {"before", "after the directory restarted", "reserved by the new directory",
                         "after the host died"}
        assert hosting(fourth.id) == [the_host_of(fourth.id)[0]]
    finally:
        c.close()
