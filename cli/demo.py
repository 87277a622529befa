"""The offline demo model behind ``letta-ray run --demo``: a tiny rule-based agent.

It is not intelligent; it exists so that a user with no provider key and no network
still sees the whole MemGPT loop work: a fact said in chat is stored in the ``human``
block with ``memory_insert``, confirmed with ``send_message``, and read back on request.
It is served by ``FakeOpenAIServer`` on 127.0.0.1 under the model name ``DEMO_MODEL``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from letta_ray.deps import LLMResponse
from letta_ray.testing import CallInfo, last_user_text, send_message, tool_call

DEMO_MODEL = "letta-ray-demo"

_FACT_END = r"(?=\s+and\s|[.,!?;\n]|$)"
_FACTS = [
    (re.compile(rf"\bmy name is\s+(.+?){_FACT_END}", re.I), "Name: {}"),
    (re.compile(rf"\b(?:call me|i am called|i'm called)\s+(.+?){_FACT_END}", re.I), "Name: {}"),
    (re.compile(rf"\bi live in\s+(.+?){_FACT_END}", re.I), "Lives in {}"),
    (re.compile(rf"\bi(?: am|'m) from\s+(.+?){_FACT_END}", re.I), "Comes from {}"),
    (re.compile(rf"\bi work\s+((?:as|at|for|on)\s+.+?){_FACT_END}", re.I), "Works {}"),
    (re.compile(rf"\bi (?:like|love|enjoy)\s+(.+?){_FACT_END}", re.I), "Likes {}"),
]
_ASKS_ABOUT_ME = re.compile(r"\b(what(?:'s| is) my name|who am i|what do you (?:know|remember)|about me)\b", re.I)


def _facts(text: str) -> list[str]:
    found: list[tuple[int, str]] = []
    for pattern, template in _FACTS:
        for match in pattern.finditer(text):
            found.append((match.start(), template.format(match.group(1).strip())))
    return [fact for _, fact in sorted(found)]


def _block_value(messages: list[dict[str, Any]], label: str) -> str:
    """A block's value as rendered into the system prompt (line numbers removed)."""
    system = next((m.get("content") for m in messages if m.get("role") == "system"), None) or ""
    if isinstance(system, list):
        system = "".join(str(part.get("text", "")) for part in system if isinstance(part, dict))
    match = re.search(rf"<{re.escape(label)}>.*?<value>\n?(.*?)\n?</value>", str(system), re.S)
    value = match.group(1) if match else ""
    return "\n".join(re.sub(r"^\d+→ ", "", line) for line in value.splitlines())


def _say(text: str, info: CallInfo, thought: str) -> LLMResponse:
    if "send_message" in info.tool_names:
        return LLMResponse(content=thought, tool_calls=[send_message(text)])
    return LLMResponse(content=text, reasoning=thought)


def _after_memory_edit(messages: list[dict[str, Any]], info: CallInfo) -> LLMResponse:
    try:
        result = json.loads(messages[-1].get("content") or "{}")
    except json.JSONDecodeError:
        result = {}
    if isinstance(result, dict) and result.get("status") == "Failed":
        return _say(f"I tried to remember that, but my memory edit failed: {result.get('message')}", info,
                    thought="The memory edit failed; telling the user.")
    saved: list[str] = []
    for m in reversed(messages[:-1]):
        if m.get("role") == "assistant" and m.get("tool_calls"):
            try:
                args = json.loads(m["tool_calls"][-1]["function"]["arguments"] or "{}")
            except (json.JSONDecodeError, KeyError, TypeError):
                args = {}
            saved = str(args.get("new_str") or args.get("content") or "").splitlines()
            break
    names = [fact.removeprefix("Name: ") for fact in saved if fact.startswith("Name: ")]
    greeting = f"Nice to meet you, {names[0]}! " if names else "Got it! "
    return _say(f"{greeting}I saved this in my memory: {'; '.join(saved) or 'your note'}.", info,
                thought="Saved; now replying to the user.")


def demo_responder(messages: list[dict[str, Any]], info: CallInfo) -> LLMResponse:
    """The model behind ``run --demo``: a tiny rule-based agent, so the loop is visible offline.

    "my name is X", "I live in X", "I like X" (and a few more) go into the ``human``
    block with ``memory_insert``, then it confirms with ``send_message``; "what do you
    know about me" reads the block back; anything else is echoed.
    """
    if messages and messages[-1].get("role") == "tool":
        return _after_memory_edit(messages, info)
    text = last_user_text(messages)
    known = _block_value(messages, "human")
    facts = _facts(text)
    new = [f for f in facts if f.lower() not in known.lower()]
    if new and info.tool_names & {"memory_insert", "core_memory_append"}:
        call = (tool_call("memory_insert", label="human", new_str="\n".join(new), request_heartbeat=True)
                if "memory_insert" in info.tool_names
                else tool_call("core_memory_append", label="human", content="\n".join(new), request_heartbeat=True))
        return LLMResponse(content="The user told me something about themselves: saving it to my human block.",
                           tool_calls=[call])
    if _ASKS_ABOUT_ME.search(text):
        lines = [line for line in known.splitlines() if line.strip()]
        answer = (f"Here is what I remember about you: {'; '.join(lines)}." if lines else
                  "I don't know anything about you yet. Tell me, e.g. \"my name is Ada\".")
        return _say(answer, info, thought="The user asks what I know about them: reading my human block.")
    if facts:
        return _say(f"I know that already: {'; '.join(facts)}.", info, thought="Nothing new to remember.")
    return _say(f"You said: {text}", info, thought="Nothing to remember here; echoing.")
