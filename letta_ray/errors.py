"""Typed exceptions raised by letta_ray.

Errors the *model* caused never raise: they go back to it as a failed tool result.
Everything here is an error of the program or of its caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class LettaRayError(Exception):
    """Base class of every error letta_ray raises on purpose."""


class NotFoundError(LettaRayError, LookupError):
    """An agent, block, tool, passage or group that does not exist."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not found")
        self.kind = kind
        self.key = key

    def __reduce__(self) -> tuple[object, ...]:  # errors cross process boundaries (Ray)
        return (type(self), (self.kind, self.key))


class ConflictError(LettaRayError):
    """The request contradicts what is stored (a duplicate name, say)."""


class InvalidInputError(LettaRayError, ValueError):
    """A caller passed something malformed: a bad config, an unknown label, a bad limit."""


class InputTooLargeError(InvalidInputError):
    """A request over one of the server's input limits (``InputLimits``); over HTTP a 413."""


class BlockLimitError(InvalidInputError):
    """A block value longer than the block's character limit."""

    def __init__(self, label: str, length: int, limit: int) -> None:
        super().__init__(
            f"block {label!r} value is {length} characters, over its limit of {limit}"
        )
        self.label = label
        self.length = length
        self.limit = limit

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.label, self.length, self.limit))


class LLMError(LettaRayError):
    """The LLM provider failed (after retries, where the failure was transient)."""

    def __init__(self, message: str, *, status_code: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_llm_error, (type(self), str(self), self.status_code, self.retryable))


class ToolDefinitionError(InvalidInputError):
    """A tool whose source or signature cannot become a tool schema."""


class StorageError(LettaRayError):
    """A store failed to read or write."""


class AgentBusyTimeout(LettaRayError, TimeoutError):
    """Waiting on another agent took longer than allowed."""


class AgentCycleError(LettaRayError):
    """Waiting on an agent that (directly or through others) is waiting on the caller."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__("waiting would deadlock: " + " -> ".join(cycle))
        self.cycle = cycle

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.cycle,))


class ToolError(Exception):
    """Raised inside a tool when the *model* did something wrong.

    The message is written for the model: it goes back as a failed tool result and
    the loop goes on. It deliberately does not derive from LettaRayError, because it
    never reaches a caller.
    """


def _rebuild_llm_error(cls: type[LLMError], message: str, status_code: int | None, retryable: bool) -> LLMError:
    return cls(message, status_code=status_code, retryable=retryable)


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic validation error as one line a person (or a model) can act on."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
