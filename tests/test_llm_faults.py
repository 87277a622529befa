"""A provider that fails, through the real litellm path: the loopback fake server with
injected faults (HTTP errors with and without Retry-After, a hang past the timeout, an
empty choice list, a connection dropped mid-answer, a context-window error) and a model
that writes malformed tool calls. Each is retried within its budget or ends the turn with
its stop reason; the agent's state is intact and its next message works."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from letta_ray.errors import LLMError
from letta_ray.fake_llm_server import FakeOpenAIServer
from letta_ray.llm import LiteLLM
from letta_ray.messages import ToolCall
from letta_ray.testing import echo_responder, last_user_text, send_message, tool_call

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server() -> Any:
    with FakeOpenAIServer() as s:
        yield s


@pytest.fixture
def llm() -> LiteLLM:
    return LiteLLM(max_retries=2, base_delay=0.05, max_delay=5.0, timeout=1.0)


async def answered(llm: LiteLLM, server: FakeOpenAIServer) -> tuple[str | None, float]:
    started = time.monotonic()
    response = await llm.complete(MESSAGES, [], server.llm_config())
    return response.content, time.monotonic() - started


@pytest.mark.parametrize(("kind", "params"), [
    ("status", {"status": 500}), ("status", {"status": 503}), ("status", {"status": 429}),
    ("hang", {"seconds": 3.0}),  # past the client's 1 s timeout
    ("reset", {}),  # the connection dropped after part of the answer
])
async def test_a_transient_fault_is_retried_within_the_budget(server: FakeOpenAIServer, llm: LiteLLM,
                                                             kind: Any, params: dict[str, Any]) -> None:
    before = server.request_count
    server.inject(kind, 2, **params)  # two failures, then an answer: within max_retries=2
    content, elapsed = await answered(llm, server)
    assert content == "You said: hi"
    assert server.request_count - before == 3
    assert elapsed < 4.0


@pytest.mark.parametrize(("kind", "params"), [("status", {"status": 503}), ("hang", {"seconds": 3.0}),
                                              ("reset", {})])
async def test_a_fault_that_outlasts_the_budget_is_an_llm_error_in_bounded_time(
        server: FakeOpenAIServer, llm: LiteLLM, kind: Any, params: dict[str, Any]) -> None:
    before = server.request_count
    server.inject(kind, 3, **params)
    started = time.monotonic()
    with pytest.raises(LLMError, match="after 3 attempts") as caught:
        await llm.complete(MESSAGES, [], server.llm_config())
    assert caught.value.retryable and server.request_count - before == 3
    assert time.monotonic() - started < 3 * 1.0 + 2 * 5.0  # three timeouts at most, and the backoff
    assert (await answered(llm, server))[0] == "You said: hi"


async def test_retry_after_is_waited_for_and_without_it_the_backoff_is_short(server: FakeOpenAIServer,
                                                                             llm: LiteLLM) -> None:
    server.fail_next(1, 429, retry_after=1.5)
    content, elapsed = await answered(llm, server)
    assert content == "You said: hi" and elapsed >= 1.5
    assert server.requests[-2]["path"].endswith("/chat/completions")
    server.fail_next(1, 429)
    content, elapsed = await answered(llm, server)
    assert content == "You said: hi" and elapsed < 1.0  # base_delay 0.05 s, jittered


async def test_an_empty_choice_list_and_a_context_window_error_are_not_retried(server: FakeOpenAIServer,
                                                                              llm: LiteLLM) -> None:
    before = server.request_count
    server.inject("empty")
    with pytest.raises(LLMError, match="returned no choices"):
        await llm.complete(MESSAGES, [], server.llm_config())
    server.fail_next(1, 400, code="context_length_exceeded")
    with pytest.raises(LLMError, match="context window") as caught:
        await llm.complete(MESSAGES, [], server.llm_config())
    assert getattr(caught.value, "context_window_exceeded", False)
    assert server.request_count - before == 2


# --------------------------------------------------------------------------- whole turns, on Ray


def misbehaving(messages: list[dict[str, Any]], info: Any) -> Any:
    """A model that writes the malformed call the user names, then answers once it sees
    the failed result."""
    last = messages[-1]
    if last.get("role") == "tool":
        return send_message(f"recovered from: {str(last.get('content'))[:200]}")
    text = last_user_text(messages)
    if text == "bad json":
        return ToolCall(name="memory_insert", arguments='{"label": "human", "new_str": ')
    if text == "unknown tool":
        return tool_call("launch_rockets", count=3)
    if text == "wrong types":
        return tool_call("memory_insert", label=["human"], new_str={"not": "a string"}, request_heartbeat=True)
    return echo_responder(messages, info)


@pytest.fixture(scope="module")
def faulty() -> Any:
    with FakeOpenAIServer(misbehaving) as s:
        yield s


def agent_on(client: Any, server: FakeOpenAIServer) -> Any:
    return client.create_agent(f"faulty-{uuid.uuid4().hex[:6]}", model="fake-model", model_endpoint=server.url,
                               memory_blocks=[{"label": "human", "value": "Name: Ada"}])


@pytest.mark.parametrize(("kind", "params"), [("status", {"status": 500}), ("status", {"status": 503}),
                                              ("reset", {}), ("empty", {})])  # (a 429 waits minutes: above)
def test_a_turn_the_provider_fails_ends_llm_api_error_and_loses_nothing(
        client: Any, faulty: FakeOpenAIServer, kind: Any, params: dict[str, Any]) -> None:
    agent = agent_on(client, faulty)
    assert agent.send("hello").assistant_text() == "You said: hello"
    before = [m.id for m in agent.messages(limit=None)]
    context = [m.id for m in agent.context()]
    faulty.inject(kind, 4, **params)  # more than the hosts' budget: 3 retries
    failed = agent.send("are you there?")
    assert failed.stop_reason.stop_reason == "llm_api_error"
    assert failed.stop_reason.detail
    faulty._failures.clear()  # the provider is back
    after = [m.id for m in agent.messages(limit=None)]
    assert after[: len(before)] == before  # nothing acknowledged went missing
    assert [m.id for m in agent.context()][: len(context)] == context
    assert not any(m.role == "assistant" and m.tool_calls for m in agent.context()
                   if m.id not in context)  # no dangling tool call from the failed turn
    assert agent.blocks["human"].value == "Name: Ada"
    assert agent.send("again").assistant_text() == "You said: again"


@pytest.mark.parametrize(("text", "said"), [("bad json", "arguments"), ("unknown tool", "launch_rockets"),
                                            ("wrong types", "Argument 'label'")])
def test_a_malformed_tool_call_goes_back_to_the_model_as_a_failed_result(client: Any, faulty: FakeOpenAIServer,
                                                                        text: str, said: str) -> None:
    agent = agent_on(client, faulty)
    reply = agent.send(text)
    assert reply.stop_reason.stop_reason == "end_turn"
    returns = [m for m in reply.messages if m.message_type == "tool_return_message"]
    assert returns and returns[0].status == "error" and said in returns[0].tool_return
    assert reply.assistant_text().startswith("recovered from:")
    assert agent.blocks["human"].value == "Name: Ada"  # the malformed edit changed nothing
    assert agent.send("fine?").assistant_text() == "You said: fine?"
