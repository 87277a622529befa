"""Entities of the agent model: agents, blocks, passages, tools, tool rules, configs.

These pydantic models are the single source of truth: the DuckDB and LanceDB layouts
and the HTTP shapes are derived from them. Field names follow Letta's so that agent
files and Letta clients map onto them directly.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import zoneinfo
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from letta_ray.errors import BlockLimitError, InvalidInputError, describe_validation_error

DEFAULT_BLOCK_LIMIT = 20_000
DEFAULT_CONTEXT_WINDOW = 32_000

Order = Literal["asc", "desc"]
"""The direction of a listing, by creation time (then id)."""

Cursor = str | tuple[Any, Any]
"""Where a page of a list starts or ends: a row's id, or (within the stores, when shards
page one list together) the values of the columns the list is ordered by."""


def time_cursors(order: Order, after: str | None, before: str | None) -> tuple[str | None, str | None]:
    """Letta's cursors are positions in the requested order: the ``(later than, earlier than)``
    ids they mean in time order."""
    return (after, before) if order == "asc" else (before, after)


def new_id(prefix: str) -> str:
    """A Letta-style id: ``<prefix>-<uuid4>``."""
    return f"{prefix}-{uuid.uuid4()}"


def utcnow() -> datetime:
    return datetime.now(UTC)


M = TypeVar("M", bound=BaseModel)


def changed(model: M, changes: dict[str, Any]) -> M:
    """``model`` with ``changes``, validated as a new one would be (``model_copy(update=...)``
    does not validate: a ``None`` name or a list for metadata would be stored, and break
    every later read); InvalidInputError naming what is wrong."""
    try:
        return type(model).model_validate({**model.model_dump(), **changes, "updated_at": utcnow()})
    except ValidationError as exc:
        raise InvalidInputError(describe_validation_error(exc)) from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=False)


# --------------------------------------------------------------------------- configs


class LLMConfig(_Model):
    """Which model an agent thinks with, as a litellm model string."""

    model: str = Field(description="litellm model string, e.g. 'openai/gpt-4o-mini'")
    model_endpoint: str | None = Field(
        default=None, description="base URL of an OpenAI-compatible server, if not the default"
    )
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, ge=256)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)
    api_key_env: str | None = Field(
        default=None, description="name of the environment variable holding the API key"
    )
    handle: str | None = None

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("model must be a non-empty litellm model string")
        return value.strip()

    @classmethod
    def from_handle(cls, handle: str, **overrides: Any) -> LLMConfig:
        """Build a config from a 'provider/model' handle as Letta and litellm write them."""
        return cls(model=handle, handle=handle, **overrides)


class LLMLimit(BaseModel):
    """Limits of one model (``None``: no limit)."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent: int | None = Field(default=None, ge=1, description="requests in flight at once, cluster-wide")
    requests_per_minute: int | None = Field(default=None, ge=1, description="requests started in any 60 s window")

    @property
    def unlimited(self) -> bool:
        return self.max_concurrent is None and self.requests_per_minute is None


class EmbeddingConfig(_Model):
    """Which embedder turns archival passages into vectors."""

    embedding_model: str = Field(
        default="hash", description="'hash', 'local/all-MiniLM-L6-v2' or a litellm model string"
    )
    embedding_endpoint: str | None = None
    embedding_dim: int = Field(default=384, ge=8, le=8192)
    embedding_chunk_size: int = 300
    handle: str | None = None


# --------------------------------------------------------------------------- memory


class Block(_Model):
    """A labelled piece of core memory, rendered into the system prompt."""

    id: str = Field(default_factory=lambda: new_id("block"))
    label: str = Field(min_length=1, max_length=200)
    value: str = ""
    limit: int = Field(default=DEFAULT_BLOCK_LIMIT, ge=1)
    description: str | None = None
    read_only: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    updated_at: datetime = Field(default_factory=utcnow)

    @field_validator("label")
    @classmethod
    def _label_is_identifier(cls, value: str) -> str:
        if any(ch.isspace() for ch in value) or "<" in value or ">" in value:
            raise ValueError(f"block label {value!r} must not contain spaces or angle brackets")
        return value

    @model_validator(mode="after")
    def _value_within_limit(self) -> Block:
        if len(self.value) > self.limit:
            raise BlockLimitError(self.label, len(self.value), self.limit)
        return self

    def updated(self, **changes: Any) -> Block:
        """A validated copy with ``changes``; BlockLimitError / InvalidInputError if they don't fit."""
        merged = {**self.model_dump(), **changes, "updated_at": utcnow()}
        value, limit = merged.get("value") or "", merged.get("limit")
        if isinstance(limit, int) and len(value) > limit:
            raise BlockLimitError(self.label, len(value), limit)
        try:
            return Block.model_validate(merged)
        except ValueError as exc:
            raise InvalidInputError(f"invalid change to block {self.label!r}: {exc}") from exc

    def with_value(self, value: str) -> Block:
        """A copy holding ``value``; raises BlockLimitError past the limit."""
        if len(value) > self.limit:
            raise BlockLimitError(self.label, len(value), self.limit)
        return self.model_copy(update={"value": value, "updated_at": utcnow()})


class CreateBlock(_Model):
    """What a caller gives to make a block (Letta's ``memory_blocks`` entries)."""

    label: str
    value: str = ""
    limit: int | None = None
    description: str | None = None
    read_only: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)

    def to_block(self) -> Block:
        return Block(
            label=self.label,
            value=self.value,
            limit=self.limit if self.limit is not None else max(DEFAULT_BLOCK_LIMIT, len(self.value)),
            description=self.description,
            read_only=self.read_only,
            metadata=self.metadata,
        )


class Passage(_Model):
    """One archival memory: text with tags, a timestamp and an embedding."""

    id: str = Field(default_factory=lambda: new_id("passage"))
    agent_id: str
    text: str
    tags: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    embedding: list[float] | None = None
    score: float | None = Field(default=None, description="relevance, set on search results")


class Archive(_Model):
    """Archival memory several agents share: passages attached agents search and insert into."""

    id: str = Field(default_factory=lambda: new_id("archive"))
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding_config: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Folder(_Model):
    """A folder of documents (Letta's source): attached to agents, its files are theirs to read."""

    id: str = Field(default_factory=lambda: new_id("source"))
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    instructions: str | None = Field(default=None, description="how agents should use these files")
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding_config: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


FileStatus = Literal["pending", "parsing", "embedding", "completed", "error"]


class FileMetadata(_Model):
    """A file of a folder and how far its processing got (its text is stored beside it)."""

    id: str = Field(default_factory=lambda: new_id("file"))
    folder_id: str
    file_name: str
    original_file_name: str
    file_type: str
    file_size: int = 0
    processing_status: FileStatus = "pending"
    error_message: str | None = None
    total_chunks: int | None = None
    chunks_embedded: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class OpenFile(_Model):
    """A window onto a file an agent has open: shown in its context, lines first..last."""

    file_id: str
    file_name: str = Field(description="folder name / file name, as the agent refers to it")
    offset: int = 0
    length: int | None = None
    view: str = ""
    first_line: int = 1
    last_line: int = 0
    opened_at: datetime = Field(default_factory=utcnow)


class IdentityProperty(_Model):
    key: str = Field(min_length=1)
    value: str | int | float | bool | dict[str, Any]
    type: Literal["string", "number", "boolean", "json"]


class Identity(_Model):
    """Someone agents talk to (a user, an organisation): agents and blocks are attached to it."""

    id: str = Field(default_factory=lambda: new_id("identity"))
    identifier_key: str = Field(min_length=1, max_length=400, description="the caller's own id for it")
    name: str = Field(min_length=1, max_length=200)
    identity_type: Literal["org", "user", "other"] = "user"
    project_id: str | None = None
    block_ids: list[str] = Field(default_factory=list)
    properties: list[IdentityProperty] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Conversation(_Model):
    """A thread of an agent's: its own context window (messages and summary) over the agent's
    one memory. The agent's own context is its default conversation."""

    id: str = Field(default_factory=lambda: new_id("conv"))
    agent_id: str
    summary: str | None = None
    description: str | None = None
    message_ids: list[str] = Field(default_factory=list, description="in-context message ids")
    archived: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    last_message_at: datetime | None = None


# --------------------------------------------------------------------------- tools


class PipRequirement(_Model):
    """A package a tool needs, as Letta writes it: a name, and optionally an exact version."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-\[\],]*$")
    version: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z0-9._+!*\-]+$")

    def __str__(self) -> str:
        return f"{self.name}=={self.version}" if self.version else self.name


class Tool(_Model):
    """A function the model can call: its name, description, JSON schema and source."""

    id: str = Field(default_factory=lambda: new_id("tool"))
    name: str
    description: str | None = None
    json_schema: dict[str, Any]
    source_code: str | None = None
    source_type: Literal["python"] = "python"
    tool_type: str = "custom"
    tags: list[str] = Field(default_factory=list)
    return_char_limit: int = Field(default=50_000, ge=1, le=1_000_000)
    pip_requirements: list[PipRequirement] = Field(
        default_factory=list, description="packages the tool's sandbox installs for it (pip)")
    default_requires_approval: bool | None = None
    takes_agent_state: bool = Field(
        default=False, description="the function's first parameter is agent_state: it is handed the agent's state")
    metadata: dict[str, Any] = Field(default_factory=dict, description="e.g. the MCP server a tool comes from")



class _ToolRuleBase(_Model):
    tool_name: str


class ContinueToolRule(_ToolRuleBase):
    """After this tool the agent always takes another step."""

    type: Literal["continue_loop"] = "continue_loop"


class TerminalToolRule(_ToolRuleBase):
    """This tool ends the turn."""

    type: Literal["exit_loop"] = "exit_loop"


class InitToolRule(_ToolRuleBase):
    """This tool must be the first call of a turn."""

    type: Literal["run_first"] = "run_first"


class ChildToolRule(_ToolRuleBase):
    """After this tool only ``children`` may be called."""

    type: Literal["constrain_child_tools"] = "constrain_child_tools"
    children: list[str]


class MaxCountPerStepToolRule(_ToolRuleBase):
    """This tool may be called at most ``max_count_limit`` times in a turn."""

    type: Literal["max_count_per_step"] = "max_count_per_step"
    max_count_limit: int = Field(ge=1)


class ParentToolRule(_ToolRuleBase):
    """``children`` may be called only right after this tool (and then only they)."""

    type: Literal["parent_last_tool"] = "parent_last_tool"
    children: list[str]


class ConditionalToolRule(_ToolRuleBase):
    """After this tool, the next tool depends on its output: ``child_output_mapping`` maps an
    output to the tool that must follow; otherwise ``default_child`` (or any tool, or none
    with ``require_output_mapping``)."""

    type: Literal["conditional"] = "conditional"
    default_child: str | None = None
    child_output_mapping: dict[str, str] = Field(min_length=1)
    require_output_mapping: bool = False

    @field_validator("child_output_mapping", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # JSON keys are text; Letta also takes true/false and numbers, matched as their text.
        if isinstance(value, dict):
            return {(str(k).lower() if isinstance(k, bool) else str(k)): v for k, v in value.items()}
        return value


class RequiresApprovalToolRule(_ToolRuleBase):
    """A call to this tool waits for a person's approval (the turn stops, ``requires_approval``)."""

    type: Literal["requires_approval"] = "requires_approval"


class RequiredBeforeExitToolRule(_ToolRuleBase):
    """The turn may not end until this tool was called."""

    type: Literal["required_before_exit"] = "required_before_exit"


class PendingToolCall(_Model):
    """A tool call that waits for a person's approval before it runs."""

    tool_call_id: str
    name: str
    arguments: str = "{}"
    message_id: str | None = Field(default=None, description="the assistant message that made the call")
    step_id: str | None = None
    client_side: bool = Field(default=False, description="a client-side tool: the caller runs it and sends "
                              "back its result")


class ClientTool(_Model):
    """A tool the caller runs (Letta's ``ClientToolSchema``): offered to the model for one
    request; a call to it stops the turn until the caller sends back the result."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None

    def as_tool(self) -> Tool:
        """The tool the model sees; its id depends only on its definition (schemas are cached by id)."""
        parameters = self.parameters or {"type": "object", "properties": {}}
        parameters = {"required": [], **parameters}
        digest = hashlib.sha256(json.dumps([self.name, self.description, parameters], sort_keys=True,
                                           default=str).encode()).hexdigest()[:24]
        description = self.description or f"{self.name} (runs on the client)"
        return Tool(id=f"tool-client-{digest}", name=self.name, description=description, tool_type="client",
                    json_schema={"name": self.name, "description": description, "parameters": parameters})


ToolRule = Annotated[
    ContinueToolRule
    | TerminalToolRule
    | InitToolRule
    | ChildToolRule
    | MaxCountPerStepToolRule
    | RequiredBeforeExitToolRule
    | ParentToolRule
    | ConditionalToolRule
    | RequiresApprovalToolRule,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- agent

AgentType = Literal["memgpt_v2_agent", "letta_v1_agent", "memgpt_agent", "sleeptime_agent"]

# Letta's other agent types, run by the loop of one of ours: (our type, with base tools?,
# clears its message buffer after each turn?).
LETTA_AGENT_TYPES: dict[str, tuple[AgentType, bool, bool]] = {
    "react_agent": ("letta_v1_agent", False, False),  # tools and plain-text answers, no memory tools
    "workflow_agent": ("letta_v1_agent", False, True),  # tool rules drive it; no memory of past runs
}
UNSUPPORTED_AGENT_TYPES = {
    "split_thread_agent": "it needs a second, concurrent thread of the model",
    "voice_convo_agent": "it needs a voice (speech) pipeline",
    "voice_sleeptime_agent": "it needs a voice (speech) pipeline",
}


def resolve_agent_type(name: str) -> tuple[AgentType, bool, bool]:
    """The loop an agent type runs here: ``(type, include base tools, autoclear the buffer)``;
    InvalidInputError for a type that cannot run here, saying why."""
    if name in get_args(AgentType):
        return name, True, False  # type: ignore[return-value]
    if name in LETTA_AGENT_TYPES:
        return LETTA_AGENT_TYPES[name]
    if name in UNSUPPORTED_AGENT_TYPES:
        raise InvalidInputError(f"agent_type {name!r} is not supported here: {UNSUPPORTED_AGENT_TYPES[name]}; "
                                "use letta_v1_agent (the default) or memgpt_v2_agent")
    known = [*get_args(AgentType), *LETTA_AGENT_TYPES]
    raise InvalidInputError(f"unknown agent_type {name!r}; one of {', '.join(known)}")


class AgentState(_Model):
    """Everything that defines an agent except its message history.

    The in-context messages are referenced by id; the hosting runtime keeps the
    Message objects themselves beside this state.
    """

    id: str = Field(default_factory=lambda: new_id("agent"))
    name: str = Field(min_length=1, max_length=200)
    agent_type: AgentType = "memgpt_v2_agent"
    system: str
    blocks: list[Block] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list, description="names of attached tools")
    tool_rules: list[ToolRule] = Field(default_factory=list)
    llm_config: LLMConfig
    embedding_config: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    tags: list[str] = Field(default_factory=list)
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    pending_approvals: list[PendingToolCall] = Field(
        default_factory=list, description="tool calls of the last turn that wait for approval")
    secrets: dict[str, str] = Field(default_factory=dict, description="environment variables this agent's "
                                    "tools run with (Letta's secrets / tool_exec_environment_variables)")
    message_ids: list[str] = Field(default_factory=list, description="in-context message ids")
    summary: str | None = None
    max_steps: int = Field(default=50, ge=1)
    archive_ids: list[str] = Field(default_factory=list, description="shared archives attached: archival "
                                   "search covers them, and inserts go into the first")
    identity_ids: list[str] = Field(default_factory=list, description="the identities (users) it talks to")
    folder_ids: list[str] = Field(default_factory=list, description="folders whose files it reads")
    open_files: list[OpenFile] = Field(default_factory=list, description="files shown in its context")
    max_files_open: int = Field(default=5, ge=1, le=50)
    timezone: str = Field(default="UTC", description="IANA time zone of the times the agent is shown")
    message_buffer_autoclear: bool = Field(default=False, description="forget the messages of each turn once it "
                                           "ends (they stay in recall); memory blocks carry over")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}; an IANA name like 'Europe/Lisbon'") from exc
        return value
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _labels_unique(self) -> AgentState:
        labels = [b.label for b in self.blocks]
        dupes = sorted({lbl for lbl in labels if labels.count(lbl) > 1})
        if dupes:
            raise InvalidInputError(f"duplicate block labels: {', '.join(dupes)}")
        return self

    @property
    def archive_owners(self) -> list[str]:
        """Whose passages make up this agent's archival memory: its own and its archives'."""
        return [self.id, *self.archive_ids]

    @property
    def insert_owner(self) -> str:
        """Where this agent's archival inserts go: its first shared archive, else its own."""
        return self.archive_ids[0] if self.archive_ids else self.id

    @property
    def uses_send_message(self) -> bool:
        """memgpt-style turns end with send_message; letta_v1 turns end with plain text."""
        return self.agent_type != "letta_v1_agent"

    def block(self, label: str) -> Block | None:
        return next((b for b in self.blocks if b.label == label), None)

    def replace_block(self, block: Block) -> AgentState:
        """A copy with ``block`` replacing the block of the same label."""
        blocks = [block if b.label == block.label else b for b in self.blocks]
        return self.model_copy(update={"blocks": blocks, "updated_at": utcnow()})
