"""The server-sent event stream of a turn (serve/_messages.sse_of), with no Ray: frames,
keep-alive pings while the turn is quiet, and a client leaving mid-turn."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from letta_ray.messages import AssistantMessage, StopReason, UserMessage
from letta_ray.serve._messages import sse_of

NOW = datetime.now(UTC)


async def _turn(pauses: list[float], closed: list[str]) -> AsyncIterator[Any]:
    try:
        yield UserMessage(id="message-u", date=NOW, content="hi")
        for index, pause in enumerate(pauses):
            await asyncio.sleep(pause)
            yield AssistantMessage(id="message-a", date=NOW, content=f"piece {index} ")
        yield StopReason(stop_reason="end_turn")
    finally:
        closed.append("closed")


async def _frames(response: Any, limit: int | None = None) -> list[dict[str, Any] | str]:
    out: list[dict[str, Any] | str] = []
    iterator = response.body_iterator
    async for text in iterator:
        assert text.startswith("data: ") and text.endswith("\n\n"), text
        data = text[len("data: "):-2]
        out.append(data if data == "[DONE]" else json.loads(data))
        if limit is not None and len(out) >= limit:
            await iterator.aclose()
            break
    return out


async def test_a_quiet_turn_sends_pings_between_its_events_and_only_when_asked() -> None:
    closed: list[str] = []
    frames = await _frames(await sse_of(_turn([0.05, 0.45], closed), None, ping_s=0.1))
    kinds = [f if isinstance(f, str) else f["message_type"] for f in frames]
    # no user message; the events in order; pings only in the long pause, each a frame of its own
    assert [k for k in kinds if k != "ping"] == ["assistant_message", "assistant_message", "stop_reason", "[DONE]"]
    first, second = kinds.index("assistant_message"), len(kinds) - 1 - kinds[::-1].index("assistant_message")
    assert "ping" not in kinds[:first + 1] and 3 <= kinds[first:second].count("ping") <= 5
    ping = next(f for f in frames if isinstance(f, dict) and f["message_type"] == "ping")
    assert ping["id"].startswith("ping-") and ping["date"]
    assert closed == ["closed"]

    quiet = await _frames(await sse_of(_turn([0.3], []), None))
    assert [f if isinstance(f, str) else f["message_type"] for f in quiet] == [
        "assistant_message", "stop_reason", "[DONE]"]


async def test_a_client_leaving_while_the_turn_is_quiet_closes_the_turns_stream() -> None:
    closed: list[str] = []
    frames = await _frames(await sse_of(_turn([0.0, 5.0], closed), None, ping_s=0.05), limit=3)
    assert [f["message_type"] for f in frames if isinstance(f, dict)] == ["assistant_message", "ping", "ping"]
    assert closed == ["closed"]  # not left waiting 5 s for the next event


async def test_the_return_message_types_filter_the_events_not_the_pings() -> None:
    frames = await _frames(await sse_of(_turn([0.0, 0.25], []), ["stop_reason"], ping_s=0.1))
    kinds = [f if isinstance(f, str) else f["message_type"] for f in frames]
    assert "assistant_message" not in kinds and "ping" in kinds and kinds[-2:] == ["stop_reason", "[DONE]"]
