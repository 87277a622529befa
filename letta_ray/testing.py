"""Test doubles for the LLM boundary: ``FunctionLLM``, ``ScriptedLLM`` and a fake server.

Each scenario is one local function (``FunctionLLM``) or one list of turns
(``ScriptedLLM``), written with ``tool_call`` / ``send_message`` / ``reply``::

    llm = ScriptedLLM([tool_call("core_memory_append", label="human", content="likes tea"),
                       send_message("Noted!")])

``letta_ray.fake_llm_server.FakeOpenAIServer`` (a shell of its own: it needs a web
stack) serves the same fakes over an OpenAI-compatible HTTP API on 127.0.0.1, so the
real litellm path (``letta_ray.llm``) runs end to end without a provider.
``forbid_real_llm_calls(monkeypatch)`` makes any litellm call that would leave the
machine raise.

This module imports neither litellm nor ``letta_ray.llm``.
"""

from __future__ import annotations

import inspect
import json
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from letta_ray._urls import is_loopback_url
from letta_ray.deps import DeltaSink, LLMResponse, stream_whole
from letta_ray.messages import ToolCall
from letta_ray.schemas import LLMConfig

__all__ = [
    "CallInfo",
    "FunctionLLM",
    "LLMCall",
    "ScriptExhausted",
    "ScriptedLLM",
    "echo_responder",
    "estimate_tokens",
    "forbid_real_llm_calls",
    "is_loopback_url",
    "last_user_text",
    "memory_responder",
    "reply",
    "send_message",
    "tool_call",
]

Response: TypeAlias = LLMResponse | str | ToolCall | list[ToolCall]
"""What a fake may return: a full response, plain assistant text, or tool call(s)."""

TokenCounter: TypeAlias = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], int]


# --------------------------------------------------------------------------- helpers


def tool_call(name: str, /, **arguments: Any) -> ToolCall:
    """A call of tool ``name`` with ``arguments`` JSON-encoded, as a model would write it."""
    return ToolCall(name=name, arguments=json.dumps(arguments))


def send_message(text: str) -> ToolCall:
    """The memgpt-style turn end: ``send_message(message=text)``."""
    return tool_call("send_message", message=text)


def reply(text: str, *, reasoning: str | None = None, tool_calls: Iterable[ToolCall] = ()) -> LLMResponse:
    """A plain assistant answer (the letta_v1 turn end), optionally with reasoning."""
    return LLMResponse(content=text, reasoning=reasoning, tool_calls=list(tool_calls))


def estimate_tokens(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    *,
    tokens_per_char: float = 0.25,
) -> int:
    """A cheap deterministic token estimate: characters of the JSON times ``tokens_per_char``."""
    chars = len(json.dumps(messages, default=str))
    if tools:
        chars += len(json.dumps(tools, default=str))
    return max(1, math.ceil(chars * tokens_per_char))


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message; unwraps MemGPT's JSON-packed user messages."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        text = str(content or "")
        if text.startswith("{"):
            try:
                packed = json.loads(text)
            except json.JSONDecodeError:
                return text
            if isinstance(packed, dict) and isinstance(packed.get("message"), str):
                return packed["message"]
        return text
    return ""


def _tool_names(tools: list[dict[str, Any]]) -> set[str]:
    names = set()
    for tool in tools:
        function = tool.get("function", tool)
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


# --------------------------------------------------------------------------- fakes


@dataclass(frozen=True)
class CallInfo:
    """What a ``FunctionLLM`` function learns about the call besides the messages."""

    tools: list[dict[str, Any]]
    config: LLMConfig
    tool_choice: str | dict[str, Any] | None
    index: int
    """0 for the fake's first call, 1 for the next, ..."""

    @property
    def tool_names(self) -> set[str]:
        return _tool_names(self.tools)


@dataclass
class LLMCall:
    """One recorded call of a fake: what it was given and what it answered."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    config: LLMConfig
    tool_choice: str | dict[str, Any] | None
    response: LLMResponse | None = None
    error: BaseException | None = None

    @property
    def last_user_text(self) -> str:
        return last_user_text(self.messages)


ResponseFunction: TypeAlias = Callable[[list[dict[str, Any]], CallInfo], Response | Awaitable[Response]]


def echo_responder(messages: list[dict[str, Any]], info: CallInfo) -> Response:
    """The default fake model: answers "You said: <last user message>".

    With a ``send_message`` tool on offer it answers through that tool (memgpt-style
    agents), otherwise as plain text.
    """
    text = f"You said: {last_user_text(messages)}"
    if "send_message" in info.tool_names:
        return send_message(text)
    return text



def memory_responder(messages: list[dict[str, Any]], info: CallInfo) -> Response:
    """``echo_responder``, and "remember <fact>" appends the fact to the ``human`` block
    (``memory_insert``) before answering "Noted.": a fake that edits memory, importable on
    every node of a cluster (the multi-node tests and benchmarks use it)."""
    last = messages[-1]
    text = last_user_text(messages)
    if last.get("role") == "user" and text.startswith("remember ") and "memory_insert" in info.tool_names:
        return tool_call("memory_insert", label="human", new_str=text.removeprefix("remember "),
                         request_heartbeat=True)
    if last.get("role") == "tool" and "send_message" in info.tool_names:
        return send_message("Noted.")
    return echo_responder(messages, info)

class _FakeLLM:
    """Shared machinery: history, token counting and turning shorthands into responses."""

    def __init__(
        self, *, tokens_per_char: float = 0.25, counter: TokenCounter | None = None, model: str = "fake-model",
        keep_history: int | None = None,
    ) -> None:
        """``keep_history`` bounds ``history`` for a fake that serves a long run (each call
        holds a copy of its messages): it keeps the newest ``keep_history`` calls at
        least and fewer than twice that (it is trimmed in batches); ``0`` keeps none,
        ``None`` (the default) all. ``calls`` counts every call either way."""
        self.tokens_per_char = tokens_per_char
        self.counter = counter
        self.model = model
        self.keep_history = keep_history
        self.history: list[LLMCall] = []
        self._calls = 0

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def _keeps_history(self) -> bool:
        return self.keep_history is None or self.keep_history > 0

    def _record(self, call: LLMCall) -> None:
        self._calls += 1
        if not self._keeps_history:
            return
        self.history.append(call)
        keep = self.keep_history
        if keep is not None and len(self.history) >= 2 * keep:
            del self.history[:-keep]

    @property
    def last(self) -> LLMCall:
        if not self.history:
            if self._calls:
                raise AssertionError(f"{type(self).__name__} keeps no history (keep_history=0); "
                                     f"it was called {self._calls} times")
            raise AssertionError(f"{type(self).__name__} was never called")
        return self.history[-1]

    def count_tokens(
        self, messages: list[dict[str, Any]], config: LLMConfig, tools: list[dict[str, Any]] | None = None
    ) -> int:
        if self.counter is not None:
            return self.counter(messages, tools)
        return estimate_tokens(messages, tools, tokens_per_char=self.tokens_per_char)

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        config: LLMConfig,
        *,
        tool_choice: str | dict[str, Any] | None = None,
        on_delta: DeltaSink | None = None,
    ) -> LLMResponse:
        # History keeps a snapshot of what it was given; a fake keeping none needs no copy.
        given = [dict(m) for m in messages] if self._keeps_history else messages
        call = LLMCall(given, list(tools or []), config, tool_choice)
        info = CallInfo(call.tools, config, tool_choice, self._calls)
        self._record(call)
        try:
            value = await self._next(call.messages, info)
            call.response = self._to_response(value, messages, tools, config)
        except BaseException as exc:
            call.error = exc
            raise
        if on_delta is not None:  # in a few pieces each, as a provider streams
            await stream_whole(call.response, on_delta, parts=4)
        return call.response

    async def _next(self, messages: list[dict[str, Any]], info: CallInfo) -> Response:
        raise NotImplementedError

    def _to_response(
        self,
        value: Any,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        config: LLMConfig,
    ) -> LLMResponse:
        if isinstance(value, str):
            response = LLMResponse(content=value)
        elif isinstance(value, ToolCall):
            response = LLMResponse(tool_calls=[value])
        elif isinstance(value, list) and all(isinstance(v, ToolCall) for v in value):
            response = LLMResponse(tool_calls=list(value))
        elif isinstance(value, LLMResponse):
            response = value
        else:
            raise TypeError(
                f"{type(self).__name__}: a fake response must be an LLMResponse, str, ToolCall "
                f"or list[ToolCall], got {type(value).__name__}: {value!r}"
            )
        # Fill what a provider always fills, keeping anything the script set explicitly.
        updates: dict[str, Any] = {}
        if not response.prompt_tokens:
            updates["prompt_tokens"] = self.count_tokens(messages, config, tools or None)
        if not response.completion_tokens:
            updates["completion_tokens"] = _output_tokens(response, self.tokens_per_char)
        if response.finish_reason is None:
            updates["finish_reason"] = "tool_calls" if response.tool_calls else "stop"
        if response.model is None:
            updates["model"] = config.model
        return response.model_copy(update=updates) if updates else response


def _output_tokens(response: LLMResponse, tokens_per_char: float) -> int:
    chars = len(response.content or "") + len(response.reasoning or "")
    chars += sum(len(call.name) + len(call.arguments) for call in response.tool_calls)
    return max(1, math.ceil(chars * tokens_per_char))


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class FunctionLLM(_FakeLLM):
    """A fake LLM whose every answer comes from ``fn(messages, info)`` (sync or async).

    ``fn`` returns an ``LLMResponse``, a ``str`` (plain assistant text), a ``ToolCall``
    or a ``list[ToolCall]``; raising from ``fn`` raises from ``complete``.
    """

    def __init__(
        self,
        fn: ResponseFunction = echo_responder,
        *,
        tokens_per_char: float = 0.25,
        counter: TokenCounter | None = None,
        model: str = "fake-model",
        keep_history: int | None = None,
    ) -> None:
        super().__init__(tokens_per_char=tokens_per_char, counter=counter, model=model, keep_history=keep_history)
        self.fn = fn

    async def _next(self, messages: list[dict[str, Any]], info: CallInfo) -> Response:
        return await _resolve(self.fn(messages, info))


class ScriptExhausted(AssertionError):
    """A ``ScriptedLLM`` was called more often than it had responses for."""


ScriptItem: TypeAlias = Response | BaseException | ResponseFunction
"""A scripted turn: a response, an exception to raise, or a ``FunctionLLM``-style function."""


class ScriptedLLM(_FakeLLM):
    """A fake LLM that answers with its script, in order, and records every call.

    Script items are responses (as for ``FunctionLLM``), exceptions (raised from that
    call, e.g. an ``LLMError`` to test error handling) or ``fn(messages, info)``
    functions for a turn that depends on its input.
    """

    def __init__(
        self,
        responses: Iterable[ScriptItem] = (),
        *,
        tokens_per_char: float = 0.25,
        counter: TokenCounter | None = None,
        model: str = "fake-model",
        keep_history: int | None = None,
    ) -> None:
        super().__init__(tokens_per_char=tokens_per_char, counter=counter, model=model, keep_history=keep_history)
        self._script: deque[ScriptItem] = deque(responses)
        self._scripted = len(self._script)

    def enqueue(self, *responses: ScriptItem) -> ScriptedLLM:
        """Append turns to the script."""
        self._script.extend(responses)
        self._scripted += len(responses)
        return self

    @property
    def remaining(self) -> int:
        return len(self._script)

    async def _next(self, messages: list[dict[str, Any]], info: CallInfo) -> Response:
        try:
            item = self._script.popleft()
        except IndexError:
            raise ScriptExhausted(
                f"ScriptedLLM has no response left for call #{info.index + 1} "
                f"(it was scripted with {self._scripted}); the last user message was "
                f"{last_user_text(messages)!r}. Add turns with enqueue()."
            ) from None
        if isinstance(item, BaseException) or (isinstance(item, type) and issubclass(item, BaseException)):
            raise item
        if callable(item):
            return await _resolve(item(messages, info))
        return item


# --------------------------------------------------------------------------- no real calls

def forbid_real_llm_calls(monkeypatch: Any) -> None:
    """Make every litellm call that would reach a real provider raise ``RuntimeError``.

    Calls whose ``api_base`` (or ``base_url``) is loopback, such as those to
    ``FakeOpenAIServer``, go through. Use from a fixture::

        @pytest.fixture(autouse=True)
        def _no_real_llm(monkeypatch):
            forbid_real_llm_calls(monkeypatch)

    The patching itself lives in ``letta_ray.llm``, the one module that imports litellm.
    """
    from letta_ray.llm import refuse_non_loopback_calls

    refuse_non_loopback_calls(monkeypatch)


def tiny_pdf(text_lines: list[str]) -> bytes:
    """A valid one-page PDF showing ``text_lines`` (built by hand: no PDF writer needed)."""
    stream = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({line}) Tj 0 -16 Td" for line in text_lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = "%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n"
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    return out.encode()
