"""The litellm boundary, through the real litellm path against FakeOpenAIServer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from letta_ray.deps import LLM, LLMDelta, LLMResponse
from letta_ray.errors import LLMError
from letta_ray.fake_llm_server import FakeOpenAIServer
from letta_ray.llm import ContextWindowExceededError, LiteLLM, TokenCounter, aembed, count_tokens
from letta_ray.messages import ToolCall
from letta_ray.schemas import LLMConfig
from letta_ray.testing import forbid_real_llm_calls, reply

SEND_MESSAGE_TOOL = {
    "type": "function",
    "function": {
        "name": "send_message",
        "description": "Sends a message to the human user.",
        "parameters": {
            "type": "object",
            "properties": {"message": {"type": "string"}},
            "required": ["message"],
        },
    },
}
HELLO = [
    {"role": "system", "content": "You are a helpful agent."},
    {"role": "user", "content": "hello"},
]


@pytest.fixture(autouse=True)
def _no_real_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_real_llm_calls(monkeypatch)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(embedding_dim=24) as running:
        yield running


@pytest.fixture(scope="module")
def llm() -> LiteLLM:
    return LiteLLM(max_retries=3, base_delay=0.001)


# --------------------------------------------------------------------------- completions


async def test_tool_call_round_trip(server: FakeOpenAIServer, llm: LiteLLM):
    assert isinstance(llm, LLM)
    response = await llm.complete(HELLO, [SEND_MESSAGE_TOOL], server.llm_config())

    assert [call.name for call in response.tool_calls] == ["send_message"]
    assert json.loads(response.tool_calls[0].arguments) == {"message": "You said: hello"}
    assert response.tool_calls[0].id
    assert response.finish_reason == "tool_calls"
    assert response.prompt_tokens > 0 and response.completion_tokens > 0
    sent = server.requests[-1]["body"]
    assert sent["messages"] == HELLO
    assert sent["tools"][0]["function"]["name"] == "send_message"


async def test_plain_text_with_reasoning():
    with FakeOpenAIServer([reply("Hi there!", reasoning="The user greeted me.")]) as server:
        response = await LiteLLM().complete(HELLO, [], server.llm_config())
    assert response.content == "Hi there!"
    assert response.reasoning == "The user greeted me."
    assert response.tool_calls == []
    assert response.finish_reason == "stop"
    assert "tools" not in server.requests[-1]["body"]


async def test_tool_arguments_come_back_exactly_as_the_model_wrote_them(llm: LiteLLM):
    broken = '{"message": "unterminated'
    call = ToolCall(id="call-1", name="send_message", arguments=broken)
    with FakeOpenAIServer([LLMResponse(tool_calls=[call])]) as server:
        response = await llm.complete(HELLO, [SEND_MESSAGE_TOOL], server.llm_config())
    assert response.tool_calls == [call]


async def test_a_streamed_call_gives_its_pieces_as_they_come_and_the_same_whole_answer(
        server: FakeOpenAIServer, llm: LiteLLM):
    whole = await llm.complete(HELLO, [SEND_MESSAGE_TOOL], server.llm_config())
    deltas: list[LLMDelta] = []

    async def sink(delta: LLMDelta) -> None:
        deltas.append(delta)

    streamed = await llm.complete(HELLO, [SEND_MESSAGE_TOOL], server.llm_config(), on_delta=sink)
    body = server.requests[-1]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert [c.name for c in streamed.tool_calls] == ["send_message"]
    assert streamed.tool_calls[0].arguments == whole.tool_calls[0].arguments
    assert streamed.prompt_tokens == whole.prompt_tokens and streamed.completion_tokens > 0
    assert streamed.finish_reason == "tool_calls"
    # the first piece of the call names it; the arguments come in several pieces
    first = deltas[0]
    assert (first.tool_index, first.tool_call_id, first.tool_name) == (0, streamed.tool_calls[0].id, "send_message")
    arguments = [d.arguments for d in deltas if d.arguments]
    assert len(arguments) > 1 and "".join(arguments) == whole.tool_calls[0].arguments


async def test_a_streamed_answer_with_reasoning_streams_both_in_order(llm: LiteLLM):
    deltas: list[LLMDelta] = []

    async def sink(delta: LLMDelta) -> None:
        deltas.append(delta)

    with FakeOpenAIServer([reply("Hi there, how are you?", reasoning="The user greeted me.")]) as server:
        response = await llm.complete(HELLO, [], server.llm_config(), on_delta=sink)
    assert (response.content, response.reasoning) == ("Hi there, how are you?", "The user greeted me.")
    assert "".join(d.reasoning for d in deltas) == "The user greeted me."
    assert "".join(d.content for d in deltas) == "Hi there, how are you?"
    kinds = ["reasoning" if d.reasoning else "content" for d in deltas]
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning") and len(kinds) > 2


async def test_a_stream_cut_off_after_its_first_piece_is_an_llm_error_not_retried(
        server: FakeOpenAIServer, llm: LiteLLM):
    deltas: list[LLMDelta] = []

    async def sink(delta: LLMDelta) -> None:
        deltas.append(delta)

    server.inject("reset", 1)
    with pytest.raises(LLMError, match="cut off"):
        await llm.complete(HELLO, [], server.llm_config(), on_delta=sink)
    assert server.request_count == 1  # the piece was out: a retry would send it twice
    assert [d.content for d in deltas] == ["I was ab"]
    # a failure before any piece is retried as any call is
    server.fail_next(1, status=503)
    response = await llm.complete(HELLO, [SEND_MESSAGE_TOOL], server.llm_config(), on_delta=sink)
    assert response.tool_calls[0].name == "send_message" and server.request_count == 3


async def test_the_fake_can_stream_a_word_at_a_time_at_a_fixed_rate(llm: LiteLLM):
    import itertools
    import time

    arrived: list[tuple[float, str]] = []

    async def sink(delta: LLMDelta) -> None:
        arrived.append((time.perf_counter(), delta.content))

    with FakeOpenAIServer([reply("one two three four five")] * 2, token_interval_s=0.05) as server:
        response = await llm.complete(HELLO, [], server.llm_config(), on_delta=sink)
        [first_out] = server.first_pieces
        began = time.perf_counter()  # not streamed: whole, when its last word would have been
        assert (await llm.complete(HELLO, [], server.llm_config())).content == "one two three four five"
        assert time.perf_counter() - began > 0.18
    assert response.content == "one two three four five"
    assert [text for _, text in arrived] == ["one ", "two ", "three ", "four ", "five"]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(arrived)]
    assert min(gaps) > 0.03 and 0.15 < arrived[-1][0] - arrived[0][0] < 1.0
    assert first_out <= arrived[0][0]  # the fake's own clock of its first word, before it arrived


async def test_config_reaches_the_provider(server: FakeOpenAIServer, llm: LiteLLM, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LETTA_RAY_TEST_KEY", "sk-test-123")
    config = server.llm_config(temperature=0.2, max_tokens=77, api_key_env="LETTA_RAY_TEST_KEY")
    await llm.complete(HELLO, [SEND_MESSAGE_TOOL], config, tool_choice="required")
    request = server.requests[-1]
    assert request["body"]["model"] == "fake-model"
    assert request["body"]["temperature"] == 0.2
    assert request["body"]["max_tokens"] == 77
    assert request["body"]["tool_choice"] == "required"
    assert request["headers"]["authorization"] == "Bearer sk-test-123"


async def test_missing_api_key_env_is_an_llm_error_before_any_request(server: FakeOpenAIServer, llm: LiteLLM):
    config = server.llm_config(api_key_env="LETTA_RAY_TEST_KEY_THAT_IS_NOT_SET")
    with pytest.raises(LLMError, match="LETTA_RAY_TEST_KEY_THAT_IS_NOT_SET"):
        await llm.complete(HELLO, [], config)
    assert server.request_count == 0


async def test_known_provider_prefix_is_kept_with_an_endpoint(server: FakeOpenAIServer, llm: LiteLLM):
    response = await llm.complete(HELLO, [], server.llm_config(model="openai/fake-model"))
    assert response.content == "You said: hello"
    assert server.requests[-1]["body"]["model"] == "fake-model"


async def test_a_model_only_the_endpoint_knows_is_described_to_litellm_once(server: FakeOpenAIServer,
                                                                           llm: LiteLLM):
    """litellm prices each response; for a model missing from its map that lookup is slow
    fuzzy matching, so the model is registered: free, with the agent's context window."""
    import litellm

    model = "served-only-here-7b"
    assert model not in litellm.model_cost
    await llm.complete(HELLO, [], server.llm_config(model=model, context_window=12_345))
    entry = litellm.model_cost[model]
    assert entry["max_input_tokens"] == 12_345
    assert entry["input_cost_per_token"] == 0.0 and entry["output_cost_per_token"] == 0.0
    assert litellm.get_model_info(model, custom_llm_provider="openai")["max_input_tokens"] == 12_345
    assert model not in litellm.open_ai_chat_completion_models  # the bare name still means no provider

    # a model litellm knows keeps its own entry (and price), endpoint or not
    known = dict(litellm.model_cost["gpt-4o-mini"])
    await llm.complete(HELLO, [], server.llm_config(model="gpt-4o-mini", context_window=1_000))
    assert litellm.model_cost["gpt-4o-mini"] == known
    assert known["input_cost_per_token"] > 0


async def test_litellm_logs_and_prices_only_when_a_callback_listens(server: FakeOpenAIServer, llm: LiteLLM,
                                                                    monkeypatch: pytest.MonkeyPatch):
    """With no litellm callback configured, the post-call logging and pricing work is
    skipped; a user who registers one (langfuse, a CustomLogger...) still gets every
    call, priced."""
    import litellm
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.litellm_core_utils.litellm_logging import Logging

    handled: list[str] = []
    priced: list[Any] = []
    original = Logging.async_success_handler
    original_price = litellm.response_cost_calculator

    async def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        handled.append(self.model)
        return await original(self, *args, **kwargs)

    def pricing(*args: Any, **kwargs: Any) -> Any:
        priced.append(kwargs.get("model"))
        return original_price(*args, **kwargs)

    monkeypatch.setattr(Logging, "async_success_handler", counting)
    monkeypatch.setattr(litellm, "response_cost_calculator", pricing)

    await llm.complete(HELLO, [], server.llm_config())
    await asyncio.sleep(0.2)
    assert handled == [] and priced == []

    class Recorder(CustomLogger):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[Any] = []

        async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any):
            self.events.append(response_obj)

    recorder = Recorder()
    monkeypatch.setattr(litellm, "callbacks", [recorder])
    response = await llm.complete(HELLO, [], server.llm_config())
    for _ in range(50):  # litellm logs from a background task
        if recorder.events:
            break
        await asyncio.sleep(0.05)
    assert handled and len(recorder.events) == 1 and priced
    assert recorder.events[0].choices[0].message.content == response.content


# --------------------------------------------------------------------------- retries


def test_the_litellm_internals_letta_ray_relies_on_are_where_it_left_them():
    """Fails loudly on a litellm upgrade that moved them (the behaviour tests beside this
    one check that each still does its job)."""
    from letta_ray.llm import check_litellm_internals

    check_litellm_internals()


def test_a_moved_litellm_internal_is_named(monkeypatch: pytest.MonkeyPatch):
    from litellm.litellm_core_utils.litellm_logging import Logging

    from letta_ray.llm import check_litellm_internals

    monkeypatch.delattr(Logging, "response_cost_calculator")
    with pytest.raises(RuntimeError, match=r"response_cost_calculator is gone"):
        check_litellm_internals()


@pytest.mark.parametrize("switch", ["true", "false"])
async def test_litellms_own_http_client_or_the_openai_sdk_carries_the_call(
        server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, switch: str):
    """With the switch on (what hosts use), not through the openai SDK underneath litellm
    (~1 ms of CPU a call more); with it off, through the SDK as litellm does by default."""
    from openai import AsyncOpenAI

    from letta_ray.llm import HTTP_HANDLER_ENV

    sdk_requests: list[Any] = []
    original = AsyncOpenAI.request

    async def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        sdk_requests.append(args)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(AsyncOpenAI, "request", recording)
    monkeypatch.setenv(HTTP_HANDLER_ENV, switch)
    response = await LiteLLM(max_retries=0).complete(HELLO, [SEND_MESSAGE_TOOL], server.llm_config())
    assert response.tool_calls[0].name == "send_message"
    assert server.request_count == 1
    assert len(sdk_requests) == (0 if switch == "true" else 1)


def test_hosts_switch_to_litellms_http_client_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch):
    import os

    from letta_ray.llm import HTTP_HANDLER_ENV, use_litellm_http_handler

    for name in (HTTP_HANDLER_ENV, "OPENAI_ORGANIZATION", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    assert use_litellm_http_handler() and os.environ[HTTP_HANDLER_ENV] == "true"
    monkeypatch.setenv(HTTP_HANDLER_ENV, "false")  # the user's choice stands
    assert not use_litellm_http_handler() and os.environ[HTTP_HANDLER_ENV] == "false"
    # An OpenAI organisation or project set in the environment only reaches OpenAI through the SDK.
    monkeypatch.delenv(HTTP_HANDLER_ENV)
    monkeypatch.setenv("OPENAI_ORG_ID", "org-123")
    assert not use_litellm_http_handler() and HTTP_HANDLER_ENV not in os.environ


async def test_rate_limits_are_retried_until_success(server: FakeOpenAIServer, llm: LiteLLM):
    server.fail_next(2, status=429)
    response = await llm.complete(HELLO, [SEND_MESSAGE_TOOL], server.llm_config())
    assert response.tool_calls[0].name == "send_message"
    assert server.request_count == 3


async def test_bad_request_is_not_retried(server: FakeOpenAIServer, llm: LiteLLM):
    server.fail_next(1, status=400, message="tools[0] is malformed")
    with pytest.raises(LLMError) as caught:
        await llm.complete(HELLO, [], server.llm_config())
    error = caught.value
    assert (error.status_code, error.retryable) == (400, False)
    assert "'fake-model'" in str(error) and "tools[0] is malformed" in str(error)
    assert '"error"' not in str(error)  # the provider's message, not its JSON error body
    assert not isinstance(error, ContextWindowExceededError)
    assert server.request_count == 1


@pytest.mark.parametrize(("text", "shown"), [
    ('litellm.BadRequestError: OpenAIException - {"error": {"message": "bad tools", "type": "x"}}', "bad tools"),
    ('litellm.BadRequestError: OpenAIException - {"detail": "model not loaded"}', "model not loaded"),
    ("litellm.BadRequestError: OpenAIException - plain words", "plain words"),
    ('litellm.BadRequestError: OpenAIException - {"error": {"message": ""}}', '{"error": {"message": ""}}'),
    ("litellm.BadRequestError: OpenAIException - {not json", "{not json"),
])
def test_the_providers_own_words_are_shown_not_its_json_body(text: str, shown: str):
    from letta_ray.llm import _provider_message

    assert _provider_message(RuntimeError(text)) == shown


async def test_persistent_server_error_gives_up_after_max_retries(server: FakeOpenAIServer):
    server.fail_next(100, status=503)
    with pytest.raises(LLMError) as caught:
        await LiteLLM(max_retries=2, base_delay=0.001).complete(HELLO, [], server.llm_config())
    assert (caught.value.status_code, caught.value.retryable) == (503, True)
    assert "after 3 attempts" in str(caught.value)
    assert server.request_count == 3


@pytest.mark.parametrize(
    ("failure", "text"),
    [
        ({"code": "context_length_exceeded"}, "maximum context length"),  # OpenAI's, mapped by litellm
        ({"message": "the request exceeds the available context size"}, "available context size"),  # llama.cpp
    ],
)
async def test_context_window_exceeded_is_a_distinct_unretried_llm_error(
    server: FakeOpenAIServer, llm: LiteLLM, failure: dict[str, str], text: str
):
    server.fail_next(1, status=400, **failure)
    with pytest.raises(ContextWindowExceededError) as caught:
        await llm.complete(HELLO, [], server.llm_config())
    error = caught.value
    assert isinstance(error, LLMError) and error.context_window_exceeded
    assert (error.status_code, error.retryable) == (400, False)
    assert text in str(error) and "'fake-model'" in str(error)
    assert server.request_count == 1


async def test_many_concurrent_calls_all_succeed(server: FakeOpenAIServer, llm: LiteLLM):
    config = server.llm_config()
    results = await asyncio.gather(
        *(llm.complete([{"role": "user", "content": f"n{i}"}], [SEND_MESSAGE_TOOL], config) for i in range(200))
    )
    said = {json.loads(r.tool_calls[0].arguments)["message"] for r in results}
    assert said == {f"You said: n{i}" for i in range(200)}


# --------------------------------------------------------------------------- tokens


def _context(n: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are Letta. " * 50}]
    for i in range(n - 1):
        messages.append({"role": "user", "content": f"message {i}: " + "lorem ipsum dolor " * 10})
    return messages


def test_count_tokens_is_close_to_litellm_and_grows_with_the_context():
    import litellm

    config = LLMConfig(model="openai/gpt-4o-mini")
    messages = _context(20)
    counted = count_tokens(messages, config, [SEND_MESSAGE_TOOL])
    direct = litellm.token_counter(model=config.model, messages=messages, tools=[SEND_MESSAGE_TOOL])
    assert isinstance(counted, int) and counted > 0
    assert counted == pytest.approx(direct, rel=0.02)
    assert count_tokens(messages[:10], config) < count_tokens(messages, config) < counted


def test_count_tokens_memoises_per_message(monkeypatch: pytest.MonkeyPatch):
    import litellm

    calls = 0
    original = litellm.token_counter

    def counting(*args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(litellm, "token_counter", counting)
    counter = TokenCounter()
    messages = _context(50)
    first = counter.count(messages, "gpt-4o-mini", [SEND_MESSAGE_TOOL])
    cold_calls = calls
    assert counter.count(messages, "gpt-4o-mini", [SEND_MESSAGE_TOOL]) == first
    assert calls == cold_calls  # nothing re-tokenised
    counter.count([*messages, {"role": "user", "content": "one more"}], "gpt-4o-mini", [SEND_MESSAGE_TOOL])
    assert calls == cold_calls + 1  # only the new message


def test_count_tokens_falls_back_to_an_estimate(monkeypatch: pytest.MonkeyPatch):
    import litellm

    def broken(*args: Any, **kwargs: Any) -> int:
        raise ValueError("no tokenizer for this model")

    monkeypatch.setattr(litellm, "token_counter", broken)
    counted = TokenCounter().count([{"role": "user", "content": "x" * 400}], "mystery-model")
    assert 100 <= counted <= 120


def test_the_prompt_head_counts_as_its_joined_text_and_its_stable_part_is_counted_once():
    """The system prompt is counted as its stable part (instructions, core memory) plus the
    per-turn memory metadata; the sum matches counting the joined prompt, and neither the
    stable part nor the tool schemas are tokenised again until they change."""
    from datetime import UTC, datetime

    from letta_ray.context import MessageCache
    from letta_ray.memory import MemoryStats, join_system_prompt, system_prompt_parts
    from letta_ray.schemas import Block

    llm = LiteLLM()
    config = LLMConfig(model="openai/gpt-4o-mini")
    seen: list[str] = []

    class Recording:
        def count_tokens(self, messages: list[dict[str, Any]], config: LLMConfig,
                         tools: list[dict[str, Any]] | None = None) -> int:
            seen.extend(str(m.get("content")) for m in messages)
            seen.extend(["<tools>"] if tools else [])
            return llm.count_tokens(messages, config, tools)

    cache = MessageCache()
    recording = Recording()
    blocks = [Block(label="human", value="Name: Ada. Likes proofs.\n" * 20), Block(label="persona", value="I am Sam.")]
    summary = [{"role": "user", "content": "[Summary of 40 earlier messages] They talked about engines."}]
    tools = [SEND_MESSAGE_TOOL]
    for turn in range(9):
        if turn == 4:  # a memory edit: the stable part changes once
            blocks[1] = Block(label="persona", value="I am Sam, and I keep notes.")
        if turn == 6:  # a tool attached: the schemas are counted again
            tools = [SEND_MESSAGE_TOOL, {**SEND_MESSAGE_TOOL, "function": {**SEND_MESSAGE_TOOL["function"],
                                                                           "name": "note_down"}}]
        if turn == 8:  # another model: both are counted again, with its tokenizer
            config = LLMConfig(model="anthropic/claude-3-5-haiku-latest")
        stats = MemoryStats(recall_messages=17 * turn, archival_passages=turn,
                            last_modified=datetime(2026, 11, 26, 12, turn, tzinfo=UTC))
        stable, metadata = system_prompt_parts("You are Letta, a helpful agent. " * 40, blocks, stats)
        head = [{"role": "system", "content": join_system_prompt(stable, metadata)}, *summary]
        counted = cache.head_tokens(stable, metadata, head[1:], tools, recording, config)
        whole = llm.count_tokens(head, config, tools)
        assert abs(counted - whole) <= 2, (turn, counted, whole)
    # turn 0, after the edit, for the other model
    assert sum(text.startswith("You are Letta") for text in seen) == 3
    assert seen.count("<tools>") == 3  # turn 0, the new tool, the other model


# --------------------------------------------------------------------------- embeddings


async def test_aembed_returns_one_vector_per_text_of_the_server_dimension(server: FakeOpenAIServer):
    vectors = await aembed("text-embedding-3-small", ["the cat sat", "a dog ran", "the cat sat"], api_base=server.url)
    assert [len(v) for v in vectors] == [24, 24, 24]
    assert vectors[0] == vectors[2] != vectors[1]
    assert await aembed("text-embedding-3-small", [], api_base=server.url) == []


# --------------------------------------------------------------------------- no real calls


async def test_real_provider_calls_are_forbidden_in_tests(server: FakeOpenAIServer, llm: LiteLLM, monkeypatch):
    # the environment guard (LETTA_RAY_OFFLINE_LLM, every process) stops it first...
    with pytest.raises(LLMError, match="only loopback"):
        await llm.complete(HELLO, [], LLMConfig(model="openai/gpt-4o-mini"))
    with pytest.raises(LLMError, match="only loopback"):
        await aembed("text-embedding-3-small", ["x"])
    # ...and with it off, litellm's own guard in this process still does
    monkeypatch.delenv("LETTA_RAY_OFFLINE_LLM")
    with pytest.raises(RuntimeError, match="real LLM provider call attempted in tests"):
        await llm.complete(HELLO, [], LLMConfig(model="openai/gpt-4o-mini"))
    with pytest.raises(RuntimeError, match="real LLM provider call attempted in tests"):
        await aembed("text-embedding-3-small", ["x"])
    # loopback stays allowed
    assert (await llm.complete(HELLO, [], server.llm_config())).content == "You said: hello"
