"""The test doubles: FunctionLLM, ScriptedLLM, the script helpers and FakeOpenAIServer."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from letta_ray.deps import LLM, LLMResponse
from letta_ray.errors import LLMError
from letta_ray.fake_llm_server import FakeOpenAIServer
from letta_ray.messages import ToolCall
from letta_ray.schemas import LLMConfig
from letta_ray.testing import (
    CallInfo,
    FunctionLLM,
    ScriptedLLM,
    ScriptExhausted,
    estimate_tokens,
    reply,
    send_message,
    tool_call,
)

CONFIG = LLMConfig(model="fake-model")
USER_HI = [{"role": "user", "content": "hi"}]


def _tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": {}}},
    }


SEND_MESSAGE_TOOL = _tool("send_message")


# --------------------------------------------------------------------------- helpers


def test_tool_call_encodes_arguments_as_json():
    call = tool_call("archival_memory_insert", content="likes tea", tags=["food"])
    assert call.name == "archival_memory_insert"
    assert json.loads(call.arguments) == {"content": "likes tea", "tags": ["food"]}
    assert call.id


def test_send_message_and_reply():
    assert json.loads(send_message("Hello!").arguments) == {"message": "Hello!"}
    assert send_message("x").name == "send_message"
    answer = reply("Done.", reasoning="the user asked")
    assert isinstance(answer, LLMResponse)
    assert (answer.content, answer.reasoning, answer.tool_calls) == ("Done.", "the user asked", [])


def test_fakes_satisfy_the_llm_protocol():
    assert isinstance(FunctionLLM(lambda m, i: "x"), LLM)
    assert isinstance(ScriptedLLM([]), LLM)


def test_the_fakes_import_neither_litellm_nor_the_llm_module():
    code = (
        "import sys, letta_ray.testing, letta_ray.fake_llm_server; "
        "bad = [m for m in ('litellm', 'letta_ray.llm') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- FunctionLLM


async def test_function_llm_turns_shorthands_into_responses():
    answers = iter(["plain text", send_message("hi"), [tool_call("a"), tool_call("b", x=1)]])
    llm = FunctionLLM(lambda messages, info: next(answers))

    text = await llm.complete(USER_HI, [], CONFIG)
    assert (text.content, text.tool_calls, text.finish_reason) == ("plain text", [], "stop")

    one = await llm.complete(USER_HI, [SEND_MESSAGE_TOOL], CONFIG)
    assert [c.name for c in one.tool_calls] == ["send_message"]
    assert one.content is None and one.finish_reason == "tool_calls"

    two = await llm.complete(USER_HI, [], CONFIG)
    assert [c.name for c in two.tool_calls] == ["a", "b"]


async def test_function_llm_passes_call_info_and_supports_async_functions():
    seen: list[CallInfo] = []

    async def fn(messages: list[dict[str, Any]], info: CallInfo) -> str:
        seen.append(info)
        return f"{len(messages)} messages, tools {sorted(info.tool_names)}"

    llm = FunctionLLM(fn)
    config = LLMConfig(model="m", temperature=0.1)
    first = await llm.complete(USER_HI, [SEND_MESSAGE_TOOL], config, tool_choice="required")
    await llm.complete(USER_HI * 2, [], config)

    assert first.content == "1 messages, tools ['send_message']"
    assert [i.index for i in seen] == [0, 1]
    assert seen[0].config is config and seen[0].tool_choice == "required"
    assert seen[0].tools == [SEND_MESSAGE_TOOL] and seen[1].tools == []


async def test_fakes_report_plausible_usage_unless_the_response_sets_it():
    llm = FunctionLLM(lambda m, i: "x" * 40)
    response = await llm.complete(USER_HI, [SEND_MESSAGE_TOOL], CONFIG)
    assert response.prompt_tokens == llm.count_tokens(USER_HI, CONFIG, [SEND_MESSAGE_TOOL]) > 0
    assert response.completion_tokens == 10
    assert response.model == "fake-model"

    fixed = FunctionLLM(lambda m, i: LLMResponse(content="y", prompt_tokens=7, completion_tokens=3))
    response = await fixed.complete(USER_HI, [], CONFIG)
    assert (response.prompt_tokens, response.completion_tokens) == (7, 3)


async def test_function_llm_errors_propagate_and_are_recorded():
    def fn(messages: list[dict[str, Any]], info: CallInfo) -> str:
        raise LLMError("provider down", status_code=503, retryable=True)

    llm = FunctionLLM(fn)
    with pytest.raises(LLMError, match="provider down"):
        await llm.complete(USER_HI, [], CONFIG)
    assert isinstance(llm.last.error, LLMError)


async def test_bad_fake_response_type_is_a_clear_error():
    llm = FunctionLLM(lambda m, i: 42)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="LLMResponse, str, ToolCall"):
        await llm.complete(USER_HI, [], CONFIG)


def test_count_tokens_is_deterministic_and_configurable():
    messages = [{"role": "user", "content": "a" * 400}]
    llm = FunctionLLM(lambda m, i: "x")
    assert llm.count_tokens(messages, CONFIG) == llm.count_tokens(messages, CONFIG)
    assert llm.count_tokens(messages, CONFIG) == estimate_tokens(messages)
    assert llm.count_tokens(messages, CONFIG, [SEND_MESSAGE_TOOL]) > llm.count_tokens(messages, CONFIG)

    dense = FunctionLLM(lambda m, i: "x", tokens_per_char=0.5)
    assert dense.count_tokens(messages, CONFIG) == pytest.approx(2 * llm.count_tokens(messages, CONFIG), abs=1)

    custom = ScriptedLLM([], counter=lambda messages, tools: 1000 * len(messages))
    assert custom.count_tokens(messages * 3, CONFIG) == 3000


# --------------------------------------------------------------------------- ScriptedLLM


async def test_scripted_llm_answers_in_order_and_records_history():
    llm = ScriptedLLM([tool_call("core_memory_append", label="human", content="tea"), send_message("Noted")])
    first = await llm.complete(USER_HI, [SEND_MESSAGE_TOOL], CONFIG, tool_choice="auto")
    second = await llm.complete([*USER_HI, {"role": "assistant", "content": "ok"}], [], CONFIG)

    assert first.tool_calls[0].name == "core_memory_append"
    assert json.loads(second.tool_calls[0].arguments) == {"message": "Noted"}
    assert llm.calls == 2 and llm.remaining == 0
    assert llm.history[0].messages == USER_HI
    assert llm.history[0].tools == [SEND_MESSAGE_TOOL]
    assert llm.history[0].config is CONFIG and llm.history[0].tool_choice == "auto"
    assert llm.history[0].response == first
    assert llm.last.messages[-1]["role"] == "assistant"


async def test_history_is_a_snapshot_of_the_messages():
    llm = ScriptedLLM(["ok"])
    messages = [{"role": "user", "content": "before"}]
    await llm.complete(messages, [], CONFIG)
    messages[0]["content"] = "after"
    messages.append({"role": "user", "content": "more"})
    assert llm.last.messages == [{"role": "user", "content": "before"}]


async def test_scripted_llm_exhaustion_names_the_call_and_enqueue_extends():
    llm = ScriptedLLM(["one"])
    await llm.complete(USER_HI, [], CONFIG)
    with pytest.raises(ScriptExhausted, match=r"call #2 .*scripted with 1.*'hi'.*enqueue") as caught:
        await llm.complete(USER_HI, [], CONFIG)
    assert isinstance(caught.value, AssertionError)

    llm.enqueue("two", reply("three"))
    assert (await llm.complete(USER_HI, [], CONFIG)).content == "two"
    assert (await llm.complete(USER_HI, [], CONFIG)).content == "three"


async def test_scripted_llm_raises_scripted_errors_and_runs_scripted_functions():
    llm = ScriptedLLM(
        [
            LLMError("rate limited", status_code=429, retryable=True),
            lambda messages, info: f"call {info.index}: {messages[-1]['content']}",
        ]
    )
    with pytest.raises(LLMError, match="rate limited"):
        await llm.complete(USER_HI, [], CONFIG)
    assert (await llm.complete(USER_HI, [], CONFIG)).content == "call 1: hi"


# --------------------------------------------------------------------------- FakeOpenAIServer


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(embedding_dim=16) as running:
        yield running


def _chat(server: FakeOpenAIServer, text: str, **body: Any) -> httpx.Response:
    payload = {"model": "fake-model", "messages": [{"role": "user", "content": text}], **body}
    return httpx.post(f"{server.url}/chat/completions", json=payload, timeout=10)


def test_server_binds_loopback_and_lists_its_model(server: FakeOpenAIServer):
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
    models = httpx.get(f"{server.url}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["fake-model"]
    assert server.llm_config().model_endpoint == server.url


def test_server_default_echoes_through_send_message_or_as_text(server: FakeOpenAIServer):
    with_tool = _chat(server, "hello", tools=[SEND_MESSAGE_TOOL]).json()
    message = with_tool["choices"][0]["message"]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"message": "You said: hello"}
    assert with_tool["choices"][0]["finish_reason"] == "tool_calls"
    assert with_tool["usage"]["prompt_tokens"] > 0 and with_tool["usage"]["completion_tokens"] > 0

    packed = json.dumps({"type": "user_message", "message": "hello", "time": "now"})
    plain = _chat(server, packed).json()
    assert plain["choices"][0]["message"]["content"] == "You said: hello"
    assert server.request_count == 2
    assert server.requests[-1]["body"]["messages"][0]["content"] == packed


def test_server_answers_from_a_script_and_reports_exhaustion_as_400():
    with FakeOpenAIServer([reply("first", reasoning="thinking")]) as server:
        body = _chat(server, "hi").json()
        assert body["choices"][0]["message"]["content"] == "first"
        assert body["choices"][0]["message"]["reasoning_content"] == "thinking"

        exhausted = _chat(server, "again")
        assert exhausted.status_code == 400
        assert "no response left" in exhausted.json()["error"]["message"]

        server.enqueue("second")
        assert _chat(server, "hi").json()["choices"][0]["message"]["content"] == "second"


def test_server_streams_sse_chunks_that_reassemble_the_answer():
    call = ToolCall(name="send_message", arguments=json.dumps({"message": "streamed reply"}))
    with FakeOpenAIServer(lambda m, i: LLMResponse(content="Let me answer.", tool_calls=[call])) as server:
        response = _chat(server, "hi", stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    content, name, arguments, finish = "", "", "", None
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for part in delta.get("tool_calls") or []:
                name += part["function"].get("name") or ""
                arguments += part["function"].get("arguments") or ""
            finish = choice["finish_reason"] or finish
    assert content == "Let me answer."
    assert (name, json.loads(arguments), finish) == ("send_message", {"message": "streamed reply"}, "tool_calls")
    assert chunks[-1]["usage"]["total_tokens"] > 0


def test_server_embeddings_are_deterministic_unit_vectors(server: FakeOpenAIServer):
    def embed(texts: list[str], **extra: Any) -> list[Any]:
        body = {"model": "embed", "input": texts, **extra}
        data = httpx.post(f"{server.url}/embeddings", json=body, timeout=10).json()["data"]
        return [item["embedding"] for item in sorted(data, key=lambda d: d["index"])]

    first, again, other = embed(["the cat sat", "the cat sat", "quantum physics"])
    assert len(first) == 16 and first == again and first != other
    assert sum(v * v for v in first) == pytest.approx(1.0)

    (encoded,) = embed(["the cat sat"], encoding_format="base64")
    assert list(struct.unpack("<16f", base64.b64decode(encoded))) == pytest.approx(first, abs=1e-6)
    assert len(embed(["x"], dimensions=8)[0]) == 8


def test_server_fail_next_injects_errors_then_recovers(server: FakeOpenAIServer):
    server.fail_next(2, status=429)
    assert [_chat(server, "hi").status_code for _ in range(3)] == [429, 429, 200]

    server.fail_next(1, status=400, code="context_length_exceeded")
    error = _chat(server, "hi").json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length" in error["message"]
    assert server.request_count == 4


def test_server_latency_is_simulated():
    import time

    with FakeOpenAIServer(latency_s=0.2) as server:
        start = time.perf_counter()
        assert _chat(server, "hi").status_code == 200
        assert time.perf_counter() - start >= 0.2


async def test_server_handles_hundreds_of_concurrent_requests(server: FakeOpenAIServer):
    import asyncio

    limits = httpx.Limits(max_connections=300)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
        body = {"model": "m", "messages": USER_HI, "tools": [SEND_MESSAGE_TOOL]}
        responses = await asyncio.gather(*(client.post("/chat/completions", json=body) for _ in range(300)))
    assert {r.status_code for r in responses} == {200}
    assert server.request_count == 300


def test_a_long_running_server_keeps_only_its_newest_calls():
    """A server answering a long benchmark must not hold a copy of every prompt it got."""
    with FakeOpenAIServer(keep_requests=3) as server:
        replies = [_chat(server, f"hi {i}").json() for i in range(10)]
        assert server.request_count == 10 and server.llm.calls == 10
        assert 3 <= len(server.llm.history) < 6 and len(server.requests) == 3
        assert server.llm.last.messages[-1]["content"] == "hi 9"
    assert "You said: hi 9" in json.dumps(replies[-1])
    with FakeOpenAIServer(keep_requests=0) as server:
        assert _chat(server, "hi").status_code == 200
        assert server.llm.calls == 1 and server.llm.history == []
        with pytest.raises(AssertionError, match="keeps no history"):
            _ = server.llm.last
    with FakeOpenAIServer([reply("one"), reply("two"), reply("three")], keep_requests=1) as server:
        assert [_chat(server, "hi").status_code for _ in range(3)] == [200, 200, 200]
        assert server.llm.calls == 3 and len(server.llm.history) == 1


async def test_fake_llm_history_can_be_capped():
    llm = FunctionLLM(lambda messages, info: f"answer {info.index}", keep_history=2)
    for i in range(7):
        response = await llm.complete([{"role": "user", "content": f"q{i}"}], [], LLMConfig(model="fake-model"))
        assert response.content == f"answer {i}"  # the call index counts every call, kept or not
    assert llm.calls == 7 and [c.messages[0]["content"] for c in llm.history][-2:] == ["q5", "q6"]
    assert len(llm.history) < 4
