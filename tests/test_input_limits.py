"""Limits on input: each has a default and a setting, and going over it is a clear error
(``InputTooLargeError`` in Python, a 413 over HTTP) that changes nothing stored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from letta_ray.errors import InputTooLargeError
from letta_ray.messages import MessageCreate, as_messages
from letta_ray.schemas import Block
from letta_ray.settings import Settings

LIMITS = {"max_message_chars": 50, "max_messages_per_request": 3, "max_blocks_per_agent": 3,
          "max_block_chars": 25_000, "max_tool_source_kb": 1, "max_body_mb": 1, "max_upload_mb": 1}
TOOL = ('def shout(text: str) -> str:\n    """Shout.\n\n    Args:\n        text: what\n    """\n'
        "    return text.upper()\n")
BIG_TOOL = TOOL + "\n" + "# padding\n" * 200  # ~2 KB


def test_every_limit_has_a_default_and_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings().input_limits()
    assert defaults.max_message_chars == 200_000 and defaults.max_messages_per_request == 100
    assert defaults.max_blocks_per_agent == 100 and defaults.max_block_chars == 200_000
    assert defaults.max_tool_source_kb == 256
    assert Settings().max_body_mb == 32 and Settings().max_upload_mb == 100
    for name, value in LIMITS.items():
        monkeypatch.setenv(f"LETTA_RAY_{name.upper()}", str(value))
    assert Settings().input_limits().max_message_chars == 50 and Settings().max_body_mb == 1


def test_the_checks_name_the_limit_and_its_setting() -> None:
    limits = Settings(**LIMITS).input_limits()
    assert len(as_messages(["a" * 50, "b"], limits=limits)) == 2
    with pytest.raises(InputTooLargeError, match=r"51 characters; at most 50 .*LETTA_RAY_MAX_MESSAGE_CHARS"):
        as_messages("a" * 51, limits=limits)
    parts = MessageCreate(content=[{"type": "text", "text": "a" * 30}, {"type": "text", "text": "b" * 30}])
    with pytest.raises(InputTooLargeError, match="60 characters"):
        as_messages([parts], limits=limits)
    with pytest.raises(InputTooLargeError, match="4 messages in one request; at most 3"):
        as_messages(["x"] * 4, limits=limits)
    blocks = [Block(label=f"b{i}", value="v") for i in range(3)]
    limits.check_blocks(blocks)
    with pytest.raises(InputTooLargeError, match=r"4 memory blocks; at most 3 .*MAX_BLOCKS_PER_AGENT"):
        limits.check_blocks(blocks, already=1)
    with pytest.raises(InputTooLargeError, match="block 'big': a limit of 30,000 characters; at most 25,000"):
        limits.check_blocks([Block(label="big", value="v", limit=30_000)])
    with pytest.raises(InputTooLargeError, match="a value of 25,001"):
        limits.check_block("human", "x" * 25_001, None)
    limits.check_tool_source("shout", TOOL)
    with pytest.raises(InputTooLargeError, match="tool 'shout': 2 KB of source code; at most 1 KB"):
        limits.check_tool_source("shout", BIG_TOOL)


# --------------------------------------------------------------------------- through the runtime and HTTP


@pytest.fixture(scope="module")
def limited(ray_session: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import letta_ray

    c = letta_ray.connect(home=str(tmp_path_factory.mktemp("limited")), **LIMITS)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(limited: Any) -> Any:
    from fastapi.testclient import TestClient

    from letta_ray.serve.app import create_app

    with TestClient(create_app(limited)) as c:
        yield c


def test_over_a_limit_in_python_nothing_is_stored(limited: Any, fake_llm_server: Any) -> None:
    agent = limited.create_agent("py", model="fake-model", model_endpoint=fake_llm_server.url,
                                 memory_blocks=[{"label": "human", "value": "Name: Ada"}])
    assert agent.send("hi").assistant_text() == "You said: hi"
    before = [m.id for m in agent.messages(limit=None)]
    with pytest.raises(InputTooLargeError, match="at most 50"):
        agent.send("x" * 51)
    with pytest.raises(InputTooLargeError, match="at most 3"):
        agent.send(["a", "b", "c", "d"])
    assert [m.id for m in agent.messages(limit=None)] == before
    with pytest.raises(InputTooLargeError, match="at most 25,000"):
        agent.blocks.update("human", "Name: Ada", limit=30_000)
    assert agent.blocks["human"].limit != 30_000
    with pytest.raises(InputTooLargeError, match="4 memory blocks"):
        limited.create_agent("py-many", model="fake-model", model_endpoint=fake_llm_server.url,
                             memory_blocks=[{"label": f"b{i}", "value": "v"} for i in range(4)])
    assert "py-many" not in {a.name for a in limited.list_agents(limit=None)}
    with pytest.raises(InputTooLargeError, match="KB of source code"):
        limited.create_tool(BIG_TOOL)
    assert "shout" not in {t.name for t in limited.list_tools()}
    other = limited.create_agent("py-2", model="fake-model", model_endpoint=fake_llm_server.url)
    group = limited.groups.create_group([agent.id, other.id], {"manager_type": "round_robin", "max_turns": 2})
    with pytest.raises(InputTooLargeError, match="at most 50"):  # a group is sent messages too
        limited.groups.send_group(group.id, "x" * 51)
    assert [m.id for m in agent.messages(limit=None)] == before
    assert limited.groups.send_group(group.id, "hello all").stop_reason.stop_reason == "end_turn"
    assert agent.send("still fine").assistant_text() == "You said: still fine"


def test_over_a_limit_over_http_is_a_413_and_the_server_goes_on(http: Any, fake_llm_server: Any) -> None:
    created = http.post("/v1/agents/", json={
        "name": "web", "model": "fake-model", "model_endpoint": fake_llm_server.url,
        "memory_blocks": [{"label": "human", "value": "Name: Ada"}, {"label": "persona", "value": "Sam"}]})
    assert created.status_code == 200, created.text
    agent_id = created.json()["id"]

    def send(*texts: str) -> Any:
        return http.post(f"/v1/agents/{agent_id}/messages",
                         json={"messages": [{"role": "user", "content": t} for t in texts]})

    long = send("x" * 51)
    assert long.status_code == 413 and "at most 50" in long.json()["detail"]
    assert send("a", "b", "c", "d").status_code == 413
    blocks = [{"label": f"b{i}", "value": "v"} for i in range(4)]
    many = http.post("/v1/agents/", json={"name": "web-many", "model": "fake-model", "memory_blocks": blocks})
    assert many.status_code == 413 and "memory blocks" in many.json()["detail"]
    big_block = http.post("/v1/blocks/", json={"label": "big", "value": "v", "limit": 30_000})
    assert big_block.status_code == 413
    edit = http.patch(f"/v1/agents/{agent_id}/core-memory/blocks/human", json={"limit": 30_000})
    assert edit.status_code == 413
    shared = [http.post("/v1/blocks/", json={"label": f"s{i}", "value": "v"}).json()["id"] for i in range(2)]
    assert http.patch(f"/v1/agents/{agent_id}/core-memory/blocks/attach/{shared[0]}").status_code == 200
    over = http.patch(f"/v1/agents/{agent_id}/core-memory/blocks/attach/{shared[1]}")
    assert over.status_code == 413 and "4 memory blocks" in over.json()["detail"]
    tool = http.post("/v1/tools/", json={"source_code": BIG_TOOL})
    assert tool.status_code == 413 and "KB of source code" in tool.json()["detail"]

    # the body itself: refused on its declared length, or as it streams in without one
    body = json.dumps({"messages": [{"role": "user", "content": "y" * (2**20 + 10)}]}).encode()
    declared = http.post(f"/v1/agents/{agent_id}/messages", content=body,
                         headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and "LETTA_RAY_MAX_BODY_MB" in declared.json()["detail"]

    def pieces() -> Any:
        for i in range(0, len(body), 65_536):
            yield body[i:i + 65_536]

    chunked = http.post(f"/v1/agents/{agent_id}/messages", content=pieces(),
                        headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    folder = http.post("/v1/folders/", json={"name": "docs"}).json()["id"]
    upload = http.post(f"/v1/folders/{folder}/upload", files={"file": ("big.txt", b"z" * (2 * 2**20 + 1))})
    assert upload.status_code == 413

    ok = send("hello")
    assert ok.status_code == 200
    texts = [m.get("content") for m in http.get(f"/v1/agents/{agent_id}/messages", params={"limit": 100}).json()
             if m.get("message_type") == "user_message"]
    assert texts == ["hello"]  # none of the refused ones reached the agent
