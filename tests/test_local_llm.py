"""The bundled local model: prompt, decoding plan, steering, model resolution, its HTTP routes.

Everything above the ``local_llm`` marker runs without llama.cpp (CI). The marked tests
load SmolLM2-135M and need the ``letta-ray[local-llm]`` extra; they skip without it.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from letta_ray.base_tools import BASE_TOOLS, DEFAULT_SYSTEM_PROMPTS, DEFAULT_TOOLS
from letta_ray.local_llm.model import (
    LOCAL_LLM_MODEL,
    LOCAL_LLM_NAME,
    TEXT_OPTION,
    local_llm_available,
    plan_request,
    render_chatml,
    states_a_fact,
    steer,
    tool_choice_prompt,
    with_block_labels,
    writable_labels,
)
from letta_ray.memory import MemoryStats, compile_system_prompt
from letta_ray.schemas import Block
from letta_ray.settings import LOCAL_LLM_BANNER, Settings
from letta_ray.tools import openai_schema

needs_llama = pytest.mark.skipif(not local_llm_available(), reason="needs the local-llm extra (llama.cpp + SmolLM2)")


def agent_tools(agent_type: str = "memgpt_v2_agent") -> list[dict[str, Any]]:
    return [openai_schema(BASE_TOOLS[n].tool, with_heartbeat=n != "send_message") for n in DEFAULT_TOOLS[agent_type]]


def system_prompt(human: str = "", *, persona_read_only: bool = False) -> str:
    blocks = [Block(label="human", value=human, description="What you know about the user."),
              Block(label="persona", value="I am Sam.", read_only=persona_read_only)]
    return compile_system_prompt(DEFAULT_SYSTEM_PROMPTS["memgpt_v2_agent"], blocks, MemoryStats())


def chat(*turns: dict[str, Any], human: str = "") -> list[dict[str, Any]]:
    return [{"role": "system", "content": system_prompt(human)}, *turns]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


_INSERT = '{"label": "human", "new_str": "Name: Ada", "request_heartbeat": true}'
AFTER_AN_EDIT = [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "memory_insert", "arguments": _INSERT}}]},
    {"role": "tool", "tool_call_id": "c1", "name": "memory_insert", "content": '{"status": "OK", "message": "done"}'},
]


# --------------------------------------------------------------------------- prompt and plan


def test_chatml_renders_every_role_and_tool_calls_as_tagged_text() -> None:
    prompt = render_chatml([*chat(user("my name is Ada")), *AFTER_AN_EDIT])
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant")
    assert "<|im_start|>user\nmy name is Ada<|im_end|>\n" in prompt
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "memory_insert", "arguments": {"label": "human", '
            '"new_str": "Name: Ada", "request_heartbeat": true}}\n</tool_call><|im_end|>') in prompt
    assert prompt.endswith('<tool_response>\nmemory_insert: {"status": "OK", "message": "done"}\n'
                           "</tool_response><|im_end|>\n")
    assert prompt.count("<|im_start|>") == prompt.count("<|im_end|>") == 4


def test_plan_reads_tools_and_tool_choice() -> None:
    tools = agent_tools()
    assert plan_request({"messages": []}).mode == "text"
    assert plan_request({"tools": tools, "tool_choice": "none"}).mode == "text"
    named = plan_request({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "send_message"}}})
    assert (named.mode, named.options) == ("tool", ["send_message"])
    auto = plan_request({"tools": tools, "tool_choice": "auto"})
    assert auto.options == DEFAULT_TOOLS["memgpt_v2_agent"]  # send_message is how it replies: no text option
    v1 = plan_request({"tools": agent_tools("letta_v1_agent")})
    assert v1.options[-1] == TEXT_OPTION  # a letta_v1 agent may answer in plain text
    assert TEXT_OPTION not in plan_request({"tools": agent_tools("letta_v1_agent"), "tool_choice": "required"}).options
    with pytest.raises(ValueError, match="not among the request's tools"):
        plan_request({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "nope"}}})


def test_tool_choice_prompt_lists_the_options_with_their_first_description_line() -> None:
    tools = [t["function"] for t in agent_tools("letta_v1_agent")]
    prompt = tool_choice_prompt(tools, ["memory_replace", TEXT_OPTION])
    assert "- memory_replace: Replace one exact, unique piece of text in a memory block." in prompt
    assert "line-number prefixes" not in prompt  # only the first line of the description
    assert f"- {TEXT_OPTION}: answer the user in plain text" in prompt
    assert "memory_insert" not in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


# --------------------------------------------------------------------------- steering


@pytest.mark.parametrize(("text", "fact"), [
    ("Hi! My name is Ada and I live in Lisbon.", True),
    ("I'm a nurse", True),
    ("i love green tea", True),
    ("What is my name?", False),
    ("Tell me a joke.", False),
    ("how are you", False),
    ("", False),
])
def test_states_a_fact_means_a_first_person_statement(text: str, fact: bool) -> None:
    assert states_a_fact(text) is fact


def test_a_stated_fact_offers_only_the_adding_tools_into_the_human_block() -> None:
    plan = plan_request({"tools": agent_tools()})
    steering = steer(chat(user("My name is Ada.")), plan)
    assert (steering.options, steering.labels) == (["memory_insert"], ["human"])
    memgpt = steer(chat(user("My name is Ada.")), plan_request({"tools": agent_tools("memgpt_agent")}))
    assert memgpt.options == ["core_memory_append"]


def test_without_a_stated_fact_the_model_chooses_among_all_tools() -> None:
    plan = plan_request({"tools": agent_tools()})
    steering = steer(chat(user("What is my name?")), plan)
    assert steering.options == plan.options
    assert steering.labels == ["human", "persona"]
    only_reply = plan_request({"tools": [openai_schema(BASE_TOOLS["send_message"].tool, with_heartbeat=False)],
                               "tool_choice": "auto"})
    assert steer(chat(user("My name is Ada.")), only_reply).options == ["send_message"]


def test_right_after_a_successful_call_that_tool_is_not_offered_again() -> None:
    plan = plan_request({"tools": agent_tools()})
    after = steer([*chat(user("My name is Ada."), human="Name: Ada"), *AFTER_AN_EDIT], plan)
    assert after.options == [o for o in plan.options if o != "memory_insert"]
    failed = [*AFTER_AN_EDIT[:1], {**AFTER_AN_EDIT[1], "content": '{"status": "Failed", "message": "no block"}'}]
    assert steer([*chat(user("My name is Ada.")), *failed], plan).options == plan.options  # it may retry


def test_block_labels_come_from_the_system_prompt_and_skip_read_only_blocks() -> None:
    assert writable_labels(chat(user("hi"))) == ["human", "persona"]
    assert writable_labels([{"role": "system", "content": system_prompt(persona_read_only=True)}]) == ["human"]
    assert writable_labels([user("no system prompt")]) == []
    params = openai_schema(BASE_TOOLS["memory_insert"].tool, with_heartbeat=True)["function"]["parameters"]
    narrowed = with_block_labels(params, ["human"])
    assert narrowed["properties"]["label"]["enum"] == ["human"]
    assert "enum" not in params["properties"]["label"]  # the tool's own schema is untouched
    search = openai_schema(BASE_TOOLS["conversation_search"].tool, with_heartbeat=True)["function"]["parameters"]
    assert with_block_labels(search, ["human"]) is search


# --------------------------------------------------------------------------- model resolution


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from letta_ray.settings import PROVIDER_KEYS

    for env, _ in PROVIDER_KEYS:
        monkeypatch.delenv(env, raising=False)
    for env in ("LETTA_RAY_DEFAULT_MODEL", "LETTA_RAY_LOCAL_LLM", "LETTA_RAY_RAY_ADDRESS"):
        monkeypatch.delenv(env, raising=False)


def test_a_provider_key_or_a_configured_model_wins_over_the_local_model(no_keys: None,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    resolution = Settings().resolve_model(local_available=True)
    assert (resolution.model, resolution.source) == ("anthropic/claude-3-5-haiku-latest", "provider")
    configured = Settings(default_model="ollama/llama3").resolve_model(local_available=True)
    assert (configured.model, configured.source) == ("ollama/llama3", "configured")


def test_with_no_key_the_local_model_is_chosen_and_announced(no_keys: None) -> None:
    resolution = Settings().resolve_model(local_available=True)
    assert (resolution.model, resolution.source) == (LOCAL_LLM_MODEL, "local")
    assert resolution.why == LOCAL_LLM_BANNER
    assert LOCAL_LLM_BANNER.startswith("no provider key found: using the bundled local model SmolLM2-135M")
    assert "set OPENAI_API_KEY or --model" in LOCAL_LLM_BANNER


def test_no_local_model_when_missing_disabled_or_on_a_cluster(no_keys: None) -> None:
    missing = Settings().resolve_model(local_available=False)
    assert (missing.model, missing.source) == (None, "none")
    assert "pip install 'letta-ray[local-llm]'" in missing.why
    assert Settings(local_llm=False).resolve_model(local_available=True).model is None
    assert Settings(ray_address="auto").resolve_model(local_available=True).model is None


def test_the_default_endpoint_serves_the_default_model_only() -> None:
    settings = Settings(default_model=LOCAL_LLM_MODEL, default_model_endpoint="http://127.0.0.1:1/local-llm/v1")
    assert settings.endpoint_for(None) == settings.endpoint_for(LOCAL_LLM_MODEL) == "http://127.0.0.1:1/local-llm/v1"
    assert settings.endpoint_for("openai/gpt-4o-mini") is None
    proxy = Settings(default_model_endpoint="http://127.0.0.1:2/v1")  # no default model: any model
    assert proxy.endpoint_for("openai/gpt-4o-mini") == "http://127.0.0.1:2/v1"


# --------------------------------------------------------------------------- the HTTP routes, on a fake model


class _EchoModel:
    """Stands in for ``LocalModel`` behind the routes: a tool call to the first tool, or text."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def card(self) -> dict[str, Any]:
        return {"id": LOCAL_LLM_NAME, "object": "model", "created": 0, "owned_by": "letta-ray"}

    def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        if not request["messages"]:
            raise ValueError("messages must not be empty")
        tools = request.get("tools") or []
        message: dict[str, Any] = {"role": "assistant", "content": None if tools else "hello"}
        if tools:
            message["tool_calls"] = [{"id": "call_1", "type": "function",
                                      "function": {"name": tools[0]["function"]["name"], "arguments": "{}"}}]
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": request["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tools else "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def test_routes_answer_like_an_openai_server() -> None:
    from fastapi.testclient import TestClient

    from letta_ray.local_llm.app import create_app

    model = _EchoModel()
    http = TestClient(create_app(model))  # type: ignore[arg-type]
    assert http.get("/v1/models").json()["data"][0]["id"] == LOCAL_LLM_NAME
    tools = agent_tools()[:1]
    reply = http.post("/v1/chat/completions", json={"model": LOCAL_LLM_NAME, "messages": [user("hi")],
                                                    "tools": tools})
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == tools[0]["function"]["name"]
    for name in (f"openai/{LOCAL_LLM_NAME}", LOCAL_LLM_MODEL):
        assert http.post("/v1/chat/completions", json={"model": name, "messages": [user("hi")]}).status_code == 200
    wrong = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": [user("hi")]})
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"
    assert http.post("/v1/chat/completions", json={"model": LOCAL_LLM_NAME}).status_code == 400
    assert http.post("/v1/chat/completions", json={"model": LOCAL_LLM_NAME, "messages": []}).status_code == 400
    stream = http.post("/v1/chat/completions", json={"model": LOCAL_LLM_NAME, "messages": [user("hi")],
                                                     "stream": True})
    events = [line.removeprefix("data: ") for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    first, last = json.loads(events[0]), json.loads(events[1])
    assert first["choices"][0]["delta"]["content"] == "hello"
    assert last["choices"][0]["finish_reason"] == "stop" and last["usage"]["total_tokens"] == 5


def test_with_an_api_token_other_machines_need_it_and_loopback_callers_do_not() -> None:
    from fastapi.testclient import TestClient

    from letta_ray.local_llm.app import create_app

    app = create_app(_EchoModel(), api_token="s3cret")  # type: ignore[arg-type]
    body = {"model": LOCAL_LLM_NAME, "messages": [user("hi")]}
    remote = TestClient(app, client=("203.0.113.7", 50000))
    refused = remote.post("/v1/chat/completions", json=body)
    assert refused.status_code == 401 and "Bearer" in refused.json()["error"]["message"]
    assert remote.get("/v1/models").status_code == 401
    wrong = remote.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert remote.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert TestClient(app, client=("127.0.0.1", 50000)).post("/v1/chat/completions", json=body).status_code == 200


def test_the_model_url_is_loopback_when_serve_listens_on_every_interface() -> None:
    from letta_ray.local_llm.app import loopback_url
    from letta_ray.serve.startup import free_port

    assert loopback_url("0.0.0.0", 8283) == "http://127.0.0.1:8283/local-llm/v1"
    assert loopback_url("127.0.0.1", 9) == "http://127.0.0.1:9/local-llm/v1"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert free_port(taken) != taken


# --------------------------------------------------------------------------- the real model (local-llm extra)


@pytest.fixture(scope="module")
def local_model() -> Any:
    from letta_ray.local_llm.model import LocalModel

    return LocalModel()


def _call(response: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    [call] = response["choices"][0]["message"]["tool_calls"]
    return call["function"]["name"], json.loads(call["function"]["arguments"])


@pytest.mark.local_llm
@needs_llama
def test_the_model_states_a_fact_into_the_human_block_then_replies(local_model: Any) -> None:
    tools = agent_tools()
    name, args = _call(local_model.chat({"messages": chat(user("Hi! My name is Ada and I live in Lisbon.")),
                                         "tools": tools}))
    assert name == "memory_insert"
    assert args["label"] == "human" and args["new_str"].strip() and isinstance(args["request_heartbeat"], bool)
    name, args = _call(local_model.chat({"messages": [*chat(user("My name is Ada."), human="Name: Ada"),
                                                      *AFTER_AN_EDIT], "tools": tools}))
    assert name != "memory_insert" and all(str(v).strip() for v in args.values())


@pytest.mark.local_llm
@needs_llama
@pytest.mark.parametrize("tool", DEFAULT_TOOLS["memgpt_v2_agent"] + ["core_memory_replace", "memory_rethink"])
def test_a_named_tool_choice_always_gives_valid_arguments(local_model: Any, tool: str) -> None:
    schemas = [openai_schema(BASE_TOOLS[n].tool, with_heartbeat=n != "send_message")
               for n in {*DEFAULT_TOOLS["memgpt_v2_agent"], tool}]
    response = local_model.chat({"messages": chat(user("Tell me what you remember.")), "tools": schemas,
                                 "tool_choice": {"type": "function", "function": {"name": tool}}})
    name, args = _call(response)
    parameters = next(s["function"]["parameters"] for s in schemas if s["function"]["name"] == tool)
    assert name == tool
    assert list(args) == [p for p in parameters["properties"] if p in parameters["required"]]
    assert response["usage"]["prompt_tokens"] > 100 and response["usage"]["completion_tokens"] > 0


@pytest.mark.local_llm
@needs_llama
def test_without_tools_it_answers_in_text(local_model: Any) -> None:
    response = local_model.chat({"messages": [user("Say hello.")], "max_tokens": 16})
    message = response["choices"][0]["message"]
    assert message["content"] and "tool_calls" not in message
    assert response["usage"]["completion_tokens"] <= 16


@pytest.fixture(scope="module")
def served_model(ray_session: Any) -> Any:
    from ray import serve

    from letta_ray.local_llm.app import start_local_llm
    from letta_ray.serve.startup import free_port

    url = start_local_llm(Settings(), host="127.0.0.1", port=free_port(18283))
    yield url
    serve.shutdown()


@pytest.mark.ray
@pytest.mark.local_llm
@needs_llama
async def test_on_ray_serve_litellm_reaches_it_and_an_agent_edits_its_memory(served_model: str, client: Any) -> None:
    from letta_ray.llm import LiteLLM
    from letta_ray.local_llm.model import LOCAL_LLM_CONTEXT_WINDOW
    from letta_ray.schemas import LLMConfig

    assert served_model.startswith("http://127.0.0.1:") and served_model.endswith("/local-llm/v1")
    config = LLMConfig(model=LOCAL_LLM_MODEL, model_endpoint=served_model)
    tools = agent_tools()
    response = await LiteLLM().complete(chat(user("What is my name?"), human="Name: Ada"), tools, config,
                                        tool_choice={"type": "function", "function": {"name": "send_message"}})
    [call] = response.tool_calls
    assert call.name == "send_message" and json.loads(call.arguments)["message"].strip()

    agent = await client.create_agent_async(
        "local-sam", model=LOCAL_LLM_MODEL, model_endpoint=served_model, context_window=LOCAL_LLM_CONTEXT_WINDOW,
        memory_blocks=[{"label": "human", "value": "", "description": "What you know about the user."},
                       {"label": "persona", "value": "I am Sam."}])
    reply = await agent.send_async("Hi! My name is Ada and I live in Lisbon.")
    kinds = [e.message_type for e in reply.messages]
    assert reply.stop_reason.stop_reason == "end_turn", reply.stop_reason
    assert "tool_call_message" in kinds and kinds[-1] == "assistant_message"
    assert reply.assistant_text().strip()
    human = (await agent.state_async()).block("human").value
    assert human.strip()  # the model wrote it


# --------------------------------------------------------------------------- its address: looked up, never stored


def test_the_local_models_address_is_looked_up_at_use_not_stored() -> None:
    from letta_ray.actors.local_model import LocalModelLLM, stored_endpoint
    from letta_ray.errors import LLMError
    from letta_ray.schemas import LLMConfig

    published: list[str | None] = ["http://127.0.0.1:9001/local-llm/v1"]
    lookups = 0

    def lookup() -> str | None:
        nonlocal lookups
        lookups += 1
        return published[0]

    llm = LocalModelLLM(None, ttl_s=60.0, lookup=lookup)  # type: ignore[arg-type]
    local = LLMConfig(model=LOCAL_LLM_MODEL)
    assert llm.resolve(local).model_endpoint == "http://127.0.0.1:9001/local-llm/v1"
    stale = LLMConfig(model=LOCAL_LLM_MODEL, model_endpoint="http://127.0.0.1:8283/local-llm/v1")
    assert llm.resolve(stale).model_endpoint == "http://127.0.0.1:9001/local-llm/v1"  # the old port is gone
    elsewhere = LLMConfig(model=LOCAL_LLM_MODEL, model_endpoint="http://gpu-box:8000/v1")
    assert llm.resolve(elsewhere) is elsewhere  # served on another machine on purpose
    other = LLMConfig(model="openai/gpt-4o-mini", model_endpoint="http://127.0.0.1:4000/v1")
    assert llm.resolve(other) is other
    assert lookups == 1  # read once per ttl

    published[0] = None
    fresh = LocalModelLLM(None, lookup=lookup)  # type: ignore[arg-type]
    with pytest.raises(LLMError, match="local model is not running"):
        fresh.resolve(local)
    assert fresh.resolve(stale) is stale  # nothing published: a stored address is all there is

    assert stored_endpoint(LOCAL_LLM_MODEL, "http://127.0.0.1:8283/local-llm/v1") is None
    assert stored_endpoint(LOCAL_LLM_MODEL, "http://gpu-box:8000/v1") == "http://gpu-box:8000/v1"
    assert stored_endpoint("openai/gpt-4o-mini", "http://127.0.0.1:4000/v1") == "http://127.0.0.1:4000/v1"


def test_serve_makes_the_local_model_the_default_without_an_address(monkeypatch: pytest.MonkeyPatch,
                                                                   no_keys: None) -> None:
    import letta_ray.local_llm.app as local_app
    from letta_ray.cli.serving import _with_local_llm

    started: list[tuple[str | None, int | None]] = []
    monkeypatch.setattr(local_app, "start_local_llm",
                        lambda settings, host, port: started.append((host, port)) or "http://127.0.0.1:1/local-llm/v1")
    monkeypatch.setattr("letta_ray.settings.local_llm_available", lambda: True)
    settings = _with_local_llm(Settings(), host="127.0.0.1", port=8999, on_ready=lambda _: None)
    assert started == [("127.0.0.1", 8999)]
    assert settings.default_model == LOCAL_LLM_MODEL and settings.default_model_endpoint is None
    assert settings.endpoint_for(LOCAL_LLM_MODEL) is None


def test_agents_on_the_local_model_answer_after_a_restart_on_another_port(ray_session: Any, tmp_path: Any) -> None:
    """Two fake servers on two ports stand in for the local model before and after a restart."""
    import letta_ray
    from letta_ray.actors.local_model import publish_local_model
    from letta_ray.fake_llm_server import FakeOpenAIServer
    from letta_ray.schemas import LLMConfig

    home = str(tmp_path / "home")
    before = FakeOpenAIServer(model=LOCAL_LLM_MODEL).start()
    old_port = before.port
    try:
        publish_local_model(before.url)  # what start_local_llm does
        first = letta_ray.connect(home=home)
        try:
            agent = first.create_agent("on-local", model=LOCAL_LLM_MODEL, model_endpoint=before.url)
            assert agent.state().llm_config.model_endpoint is None  # a name, not an address
            # as stored by an older version: the address of the server it was made on
            legacy = first.create_agent("legacy", llm_config=LLMConfig(model=LOCAL_LLM_MODEL,
                                                                       model_endpoint=before.url))
            assert legacy.state().llm_config.model_endpoint == before.url
            assert agent.send("hello").assistant_text() == "You said: hello"
        finally:
            first.close()
    finally:
        before.stop()
    answered_before = before.request_count

    with FakeOpenAIServer(model=LOCAL_LLM_MODEL) as after:
        assert after.port != old_port
        publish_local_model(after.url)
        second = letta_ray.connect(home=home)
        try:
            for name in ("on-local", "legacy"):
                reply = second.get_agent(name).send("still there?")
                assert reply.stop_reason.stop_reason == "end_turn", name
                assert reply.assistant_text() == "You said: still there?"
            assert after.request_count >= 2 and before.request_count == answered_before
            publish_local_model(None)  # the local model stopped: a clear error, the agent intact
            time.sleep(1.1)  # the hosts' cached address expires
            failed = second.get_agent("on-local").send("and now?")
            assert failed.stop_reason.stop_reason == "llm_api_error"
            publish_local_model(after.url)
            time.sleep(1.1)
            assert second.get_agent("on-local").send("back").assistant_text() == "You said: back"
        finally:
            publish_local_model(None)
            second.close()
