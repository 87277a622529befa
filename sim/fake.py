"""A deterministic fake model for simulations: townsfolk passing news along.

``town_responder`` answers from the prompt alone (the agent's persona, the round's
inbox), so the same config and seed give the same transcript. Each agent has a piece
of news of its own; in later rounds it passes on the first piece it heard, and every
third round it notes in its ``human`` block whom it heard from (a real memory edit,
then the reply). Serve it on 127.0.0.1 with::

    python -m letta_ray.fake_llm_server --responder letta_ray.sim.fake:town_responder
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from letta_ray.deps import LLMResponse
from letta_ray.testing import CallInfo, last_user_text, reply, send_message, tool_call

NEWS = (
    "the bakery is hiring",
    "the river bridge reopens on Monday",
    "a travelling circus is camping by the mill",
    "the library extends its hours",
    "the harvest fair moved to the square",
    "the old clock tower is being repaired",
    "a new doctor arrived in town",
    "the school choir won the regional prize",
    "the ferry fares go up next month",
    "someone found a lost dog near the station",
    "the market will sell fresh oysters on Friday",
    "the mayor plans a new park by the harbour",
)

_NAME = re.compile(r"\bI am ([^,.\n]+)")
_INBOX_LINE = re.compile(r"^- ([^:\n]+): (.*)$", re.M)
_NEWS_OF = re.compile(r"news: (.+?)(?:\.|$)")
_ROUND = re.compile(r"\bRound (\d+)")


def _system_text(messages: list[dict[str, Any]]) -> str:
    content = next((m.get("content") for m in messages if m.get("role") == "system"), "") or ""
    if isinstance(content, list):
        content = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def _pick(key: str, options: tuple[str, ...]) -> str:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return options[int.from_bytes(digest, "big") % len(options)]


def _say(text: str, info: CallInfo) -> LLMResponse:
    if "send_message" in info.tool_names:
        return LLMResponse(tool_calls=[send_message(text)])
    return reply(text)


def town_responder(messages: list[dict[str, Any]], info: CallInfo) -> LLMResponse:
    """One townsperson's next move, decided from the prompt alone."""
    system = _system_text(messages)
    found = _NAME.search(system)
    name = found.group(1).strip() if found else "someone"
    prompt = last_user_text(messages)
    round_match = _ROUND.search(prompt)
    round_no = int(round_match.group(1)) if round_match else 0
    heard = _INBOX_LINE.findall(prompt)
    last = messages[-1] if messages else {}

    if last.get("role") == "tool":  # after a memory edit: now the reply
        news = _passed_on(heard) or _pick(name, NEWS)
        return _say(f"{name} here, passing it on: news: {news}.", info)
    if heard and round_no % 3 == 0 and "memory_insert" in info.tool_names:
        sources = ", ".join(sorted({who for who, _ in heard})[:3])
        return LLMResponse(tool_calls=[tool_call("memory_insert", label="human",
                                                 new_str=f"Round {round_no}: heard from {sources}.",
                                                 **_heartbeat(info))])
    if heard:
        news = _passed_on(heard) or _pick(name, NEWS)
        return _say(f"{name} here. {heard[0][0]} told me something: news: {news}.", info)
    return _say(f"Hello, I am {name}. My news: {_pick(name, NEWS)}.", info)


def _passed_on(heard: list[tuple[str, str]]) -> str | None:
    for _, text in heard:
        match = _NEWS_OF.search(text)
        if match:
            return match.group(1)
    return None


def _heartbeat(info: CallInfo) -> dict[str, Any]:
    """memgpt-style agents must ask to continue after a tool; letta_v1 agents continue anyway."""
    for tool in info.tools:
        function = tool.get("function", tool)
        if function.get("name") == "memory_insert":
            properties = json.dumps(function.get("parameters", {}).get("properties", {}))
            if "request_heartbeat" in properties:
                return {"request_heartbeat": True}
    return {}
