"""Limits on what callers may send: each has a default, a setting and a clear error.

``Settings.input_limits()`` gives them; the client checks them where input enters (a
message sent, a block stored, a tool registered), so a driver script gets an
``InputTooLargeError`` and the HTTP API a 413 with the same sentence, before anything
reaches an agent or storage. The HTTP request body and page sizes are bounded in the API
itself (``serve``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InputTooLargeError


@dataclass(frozen=True)
class InputLimits:
    """The defaults are the settings' (``Settings().input_limits()``)."""

    max_message_chars: int
    max_messages_per_request: int
    max_blocks_per_agent: int
    max_block_chars: int
    max_tool_source_kb: int

    def check_messages(self, messages: Sequence[Any]) -> None:
        """``messages`` (``MessageCreate`` or ``Message``) of one request."""
        if len(messages) > self.max_messages_per_request:
            raise InputTooLargeError(f"{len(messages)} messages in one request; at most "
                                     f"{self.max_messages_per_request} (setting LETTA_RAY_MAX_MESSAGES_PER_REQUEST)")
        for message in messages:
            length = _chars(message)
            if length > self.max_message_chars:
                raise InputTooLargeError(f"a message of {length:,} characters; at most {self.max_message_chars:,} "
                                         "(setting LETTA_RAY_MAX_MESSAGE_CHARS)")

    def check_blocks(self, blocks: Iterable[Any], *, already: int = 0) -> None:
        """Blocks an agent will have (``already`` attached besides them)."""
        blocks = list(blocks)
        if already + len(blocks) > self.max_blocks_per_agent:
            raise InputTooLargeError(f"an agent with {already + len(blocks)} memory blocks; at most "
                                     f"{self.max_blocks_per_agent} (setting LETTA_RAY_MAX_BLOCKS_PER_AGENT)")
        for block in blocks:
            self.check_block(block.label, block.value, block.limit)

    def check_block(self, label: str, value: str | None, limit: int | None) -> None:
        for what, size in (("value", len(value or "")), ("limit", limit or 0)):
            if size > self.max_block_chars:
                raise InputTooLargeError(f"block {label!r}: a {what} of {size:,} characters; at most "
                                         f"{self.max_block_chars:,} (setting LETTA_RAY_MAX_BLOCK_CHARS)")

    def check_tool_source(self, name: str, source: str | None) -> None:
        size = len((source or "").encode())
        if size > self.max_tool_source_kb * 1024:
            raise InputTooLargeError(f"tool {name!r}: {size / 1024:,.0f} KB of source code; at most "
                                     f"{self.max_tool_source_kb} KB (setting LETTA_RAY_MAX_TOOL_SOURCE_KB)")


def _chars(message: Any) -> int:
    content = getattr(message, "content", "")
    if isinstance(content, str):
        return len(content)
    return sum(_strings(part) for part in content or [])  # text parts, and images inlined as data


def _strings(value: Any) -> int:
    """Characters of the strings in a content part (its ``type`` tags aside)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_strings(v) for k, v in value.items() if k != "type")
    if isinstance(value, list):
        return sum(_strings(v) for v in value)
    return 0
