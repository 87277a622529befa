"""The protocols the agent step talks to, and the bundle it receives.

The step does no I/O of its own: the LLM, recall, archival memory, other agents and
the clock all arrive here. Production wires them to litellm and the store actors; tests
wire them to fakes and to the embedded engines in a temp dir.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from letta_ray.messages import Message, Role, ToolCall
from letta_ray.schemas import Block, FileMetadata, LLMConfig, Passage


class LLMResponse(BaseModel):
    """One assistant turn as the provider returned it."""

    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class LLMDelta:
    """A piece of an answer as the provider streams it: text, reasoning, or a piece of one
    tool call (``tool_index``; its id and name come with its first piece)."""

    content: str = ""
    reasoning: str = ""
    tool_index: int | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    arguments: str = ""


DeltaSink = Callable[[LLMDelta], Awaitable[None]]
"""Where an LLM streams the pieces of its answer (``LLM.complete(on_delta=...)``)."""


def pieces(text: str, parts: int) -> list[str]:
    """``text`` in ``parts`` pieces or fewer (as a provider would stream it)."""
    if not text:
        return []
    size = max(1, -(-len(text) // max(1, parts)))
    return [text[i:i + size] for i in range(0, len(text), size)]


async def stream_whole(response: LLMResponse, on_delta: DeltaSink, parts: int = 1) -> None:
    """Stream an answer already complete (an LLM that cannot stream, a fake): its reasoning,
    its text, then each tool call, each in ``parts`` pieces."""
    for piece in pieces(response.reasoning or "", parts):
        await on_delta(LLMDelta(reasoning=piece))
    for piece in pieces(response.content or "", parts):
        await on_delta(LLMDelta(content=piece))
    for index, call in enumerate(response.tool_calls):
        await on_delta(LLMDelta(tool_index=index, tool_call_id=call.id, tool_name=call.name))
        for piece in pieces(call.arguments, parts):
            await on_delta(LLMDelta(tool_index=index, arguments=piece))


def delta_kwargs(on_delta: DeltaSink | None) -> dict[str, Any]:
    """``on_delta`` as a keyword for ``LLM.complete`` only when streaming: an LLM written
    before streaming existed (no ``on_delta`` parameter) still serves every other call."""
    return {"on_delta": on_delta} if on_delta is not None else {}


@runtime_checkable
class LLM(Protocol):
    """Chat completion with tools, and a token counter for the same model.

    With ``on_delta`` the answer is streamed there piece by piece as it is generated, and
    still returned whole. The step passes it only when a caller asked for tokens."""

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        config: LLMConfig,
        *,
        tool_choice: str | dict[str, Any] | None = None,
        on_delta: DeltaSink | None = None,
    ) -> LLMResponse: ...

    def count_tokens(
        self, messages: list[dict[str, Any]], config: LLMConfig, tools: list[dict[str, Any]] | None = None
    ) -> int: ...


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of a fixed dimension."""

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


TagMatchMode = Literal["any", "all"]


@runtime_checkable
class Archive(Protocol):
    """Archival memory of agents: passages with embeddings, searchable. A passage's
    ``agent_id`` is its owner: an agent, or a shared archive; search and count take one
    owner or several."""

    async def insert(self, agent_id: str, text: str, tags: list[str] | None = None) -> Passage: ...

    async def search(
        self,
        agent_id: str | list[str],
        query: str | None,
        *,
        tags: list[str] | None = None,
        tag_match_mode: TagMatchMode = "any",
        top_k: int = 5,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Passage]: ...

    async def count(self, agent_id: str | list[str]) -> int: ...


@runtime_checkable
class Recall(Protocol):
    """The whole message history of agents, searchable by text, role and date."""

    async def search_messages(
        self,
        agent_id: str,
        query: str | None,
        *,
        roles: list[Role] | None = None,
        limit: int = 10,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Message]: ...

    async def count_messages(self, agent_id: str) -> int: ...


class BlockStore(Protocol):
    """The owner of blocks shared between agents.

    Edits of a shared block are applied there, one at a time, so concurrent edits by
    several agents all land; ``fresh`` returns the current copies of shared blocks so
    each agent sees the others' edits at its next step.
    """

    async def fresh(self, blocks: list[Block]) -> list[Block]: ...

    async def apply(self, block: Block, op: str, args: dict[str, Any]) -> Block | None:
        """The edited block, or None if ``block`` is not shared (edit it locally)."""
        ...


class Messenger(Protocol):
    """Delivers messages to other agents (multi-agent tools).

    ``send_and_wait`` returns the other agent's reply; it raises NotFoundError for an
    unknown agent, AgentCycleError when waiting would deadlock, and AgentBusyTimeout
    when no reply comes in time. ``send_async`` returns once the message is queued.
    ``broadcast`` sends to every agent whose tags match and returns (agent id, reply).
    """

    async def send_and_wait(self, sender_id: str, target_id: str, text: str) -> str: ...

    async def send_async(self, sender_id: str, target_id: str, text: str) -> None: ...

    async def broadcast(
        self, sender_id: str, text: str, match_all: list[str], match_some: list[str]
    ) -> list[tuple[str, str]]: ...


@runtime_checkable
class Files(Protocol):
    """The files of agents' folders: what file tools read and search."""

    async def list_files(self, folder_ids: list[str]) -> list[tuple[FileMetadata, str]]:
        """The files of these folders, each with its folder's name."""
        ...

    async def read(self, file_id: str) -> str: ...

    async def search(self, file_ids: list[str], query: str, limit: int) -> list[Passage]:
        """Chunks of these files closest to ``query``; a passage's ``agent_id`` is its file's id."""
        ...


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class StepDeps:
    """What one agent step may touch besides its own state."""

    llm: LLM
    archive: Archive | None = None
    recall: Recall | None = None
    messenger: Messenger | None = None
    blocks: BlockStore | None = None
    files: Files | None = None
    clock: Callable[[], datetime] = system_clock
    extra: dict[str, Any] = field(default_factory=dict)
