"""Letta's REST shapes: request bodies and response views of the HTTP API.

Our core models (``AgentState``, ``Block``, ``Passage``, ``Tool``, the message events)
stay the source of truth. These are views of them in the shape Letta's server speaks,
so that Letta's SDK reads them unchanged, plus the conversions in both directions.
Request bodies ignore fields they don't know (the SDK sends many Letta-cloud fields).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from letta_ray.base_tools import BASE_TOOLS
from letta_ray.errors import BlockLimitError, InvalidInputError
from letta_ray.messages import ApprovalDecision, MessageCreate
from letta_ray.schemas import (
    DEFAULT_CONTEXT_WINDOW,
    AgentState,
    Block,
    ClientTool,
    CreateBlock,
    EmbeddingConfig,
    LLMConfig,
    Passage,
    Tool,
    ToolRule,
    new_id,
    utcnow,
)


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore")


_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?$")


def _date_time_string(value: Any) -> Any:
    # pydantic alone also reads a number (or a numeric string) as Unix time, which the
    # schema's ``format: date-time`` does not allow
    if isinstance(value, datetime) or (isinstance(value, str) and _DATE_TIME.match(value)):
        return value
    raise ValueError("a date-time is an ISO 8601 string, e.g. 2025-01-31T12:00:00Z")


DateTime = Annotated[datetime, BeforeValidator(_date_time_string)]
"""A date-time in a request: an ISO 8601 string, as the schema says (no Unix times)."""


def _json_integer(value: Any) -> Any:
    # pydantic alone reads true as 1 and "5" as 5; JSON's integers include 5.0, which it reads
    if isinstance(value, bool | str):
        raise ValueError("an integer is a JSON number, not a boolean or a string")
    return value


Integer = Annotated[int, BeforeValidator(_json_integer)]
"""An integer in a request body: a JSON number (5 or 5.0), not true or "5"."""

PositiveInteger = Annotated[int, Field(ge=1), BeforeValidator(_json_integer)]
"""An integer ≥ 1 in a request body. The bound goes before the validator: after it, pydantic
writes ``ge`` into the JSON schema instead of ``minimum`` (the schema then allows 0)."""

# A block label: no whitespace (str.isspace: Unicode spaces and the separators \x1c-\x1f) nor < >.
BLOCK_LABEL_PATTERN = r"^[^\s\x1c-\x1f<>]+$"


# --------------------------------------------------------------------------- configs

# litellm provider prefix <-> Letta's model_endpoint_type, where they differ or matter.
# A block's character limit, at most (a bigger one is a 422): far above any context window.
MAX_BLOCK_LIMIT = 10_000_000

_ENDPOINT_TYPE_OF_PROVIDER = {
    "openai": "openai", "anthropic": "anthropic", "gemini": "google_ai", "vertex_ai": "google_vertex",
    "azure": "azure", "groq": "groq", "ollama": "ollama", "mistral": "mistral", "together_ai": "together",
    "bedrock": "bedrock", "deepseek": "deepseek", "xai": "xai", "hosted_vllm": "vllm",
    "lm_studio": "lmstudio",
}
_PROVIDER_OF_ENDPOINT_TYPE = {v: k for k, v in _ENDPOINT_TYPE_OF_PROVIDER.items()}


def _provider(model: str) -> str | None:
    head, sep, _ = model.partition("/")
    return head if sep else None


class LLMConfigView(_Shape):
    """Letta's ``llm_config``; ``model`` is our litellm model string."""

    model: str = Field(pattern=r"\S", description="litellm model string, or a bare model name with model_endpoint_type")
    model_endpoint_type: str = Field(default="openai", description="provider kind (Letta's names)")
    model_endpoint: str | None = Field(default=None, description="base URL of an OpenAI-compatible server")
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, ge=256)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)
    handle: str | None = None
    provider_name: str | None = None
    put_inner_thoughts_in_kwargs: bool = False
    api_key_env: str | None = Field(default=None, description="letta_ray: env var holding the API key")

    @classmethod
    def of(cls, config: LLMConfig) -> LLMConfigView:
        provider = _provider(config.model)
        return cls(model=config.model, model_endpoint_type=_ENDPOINT_TYPE_OF_PROVIDER.get(provider or "", "openai"),
                   model_endpoint=config.model_endpoint, context_window=config.context_window,
                   temperature=config.temperature, max_tokens=config.max_tokens,
                   handle=config.handle or config.model, provider_name=provider or "openai",
                   api_key_env=config.api_key_env)

    def to_core(self) -> LLMConfig:
        model = self.model.strip()
        provider = _PROVIDER_OF_ENDPOINT_TYPE.get(self.model_endpoint_type)
        # A bare name of a non-OpenAI provider needs its litellm prefix; OpenAI-compatible
        # servers (vllm, lmstudio, ...) are reached by model_endpoint as they are.
        if _provider(model) is None and provider not in (None, "openai", "hosted_vllm", "lm_studio"):
            model = f"{provider}/{model}"
        try:
            return LLMConfig(model=model, model_endpoint=self.model_endpoint, context_window=self.context_window,
                             temperature=self.temperature, max_tokens=self.max_tokens, handle=self.handle,
                             api_key_env=self.api_key_env)
        except ValueError as exc:
            raise InvalidInputError(f"invalid llm_config: {exc}") from exc


class EmbeddingConfigView(_Shape):
    embedding_model: str
    embedding_endpoint_type: str = "hugging-face"
    embedding_endpoint: str | None = None
    embedding_dim: int
    embedding_chunk_size: int = 300
    handle: str | None = None

    @classmethod
    def of(cls, config: EmbeddingConfig) -> EmbeddingConfigView:
        provider = _provider(config.embedding_model)
        kind = _ENDPOINT_TYPE_OF_PROVIDER.get(provider or "", "hugging-face")
        return cls(embedding_model=config.embedding_model, embedding_endpoint_type=kind,
                   embedding_endpoint=config.embedding_endpoint, embedding_dim=config.embedding_dim,
                   embedding_chunk_size=config.embedding_chunk_size,
                   handle=config.handle or config.embedding_model)


# --------------------------------------------------------------------------- blocks


class BlockView(_Shape):
    id: str
    label: str
    value: str
    limit: int
    description: str | None = None
    read_only: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    is_template: bool = False
    hidden: bool | None = None
    tags: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, block: Block) -> BlockView:
        return cls(id=block.id, label=block.label, value=block.value, limit=block.limit,
                   description=block.description, read_only=block.read_only, metadata=block.metadata)


class CreateBlockRequest(_Shape):
    """A new block: an entry of ``memory_blocks``, or the body of ``POST /v1/blocks``."""

    label: str = Field(pattern=BLOCK_LABEL_PATTERN)
    value: str
    limit: int | None = Field(default=None, ge=1, le=MAX_BLOCK_LIMIT)
    description: str | None = None
    read_only: StrictBool = False
    metadata: dict[str, Any] | None = None

    def to_core(self) -> Block:
        """The block; BlockLimitError when the value is over the limit."""
        if self.limit is not None and len(self.value) > self.limit:
            raise BlockLimitError(self.label, len(self.value), self.limit)
        try:
            spec = CreateBlock(label=self.label, value=self.value, limit=self.limit, description=self.description,
                               read_only=self.read_only, metadata=self.metadata or {})
        except ValueError as exc:
            raise InvalidInputError(f"invalid block: {exc}") from exc
        return spec.to_block()


class UpdateBlockRequest(_Shape):
    value: str | None = None
    limit: int | None = Field(default=None, ge=1, le=MAX_BLOCK_LIMIT)
    description: str | None = None
    read_only: StrictBool | None = None
    label: str | None = Field(default=None, pattern=BLOCK_LABEL_PATTERN)
    metadata: dict[str, Any] | None = None

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class MemoryView(_Shape):
    blocks: list[BlockView]
    file_blocks: list[dict[str, Any]] = Field(default_factory=list)
    prompt_template: str | None = None
    agent_type: str | None = None


# --------------------------------------------------------------------------- tools

_BASE_TOOL_NAMESPACE = uuid.UUID("6f0c8a52-3d1e-4f7a-9a57-2f1b8c4e9d10")


def base_tool_id(name: str) -> str:
    """Built-in tools live in code, not the store: their ids are derived from their names."""
    return f"tool-{uuid.uuid5(_BASE_TOOL_NAMESPACE, name)}"


BASE_TOOL_IDS: dict[str, str] = {base_tool_id(name): name for name in BASE_TOOLS}


class PipRequirementView(_Shape):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-\[\],]*$")
    version: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z0-9._+!*\-]+$")


class ToolView(_Shape):
    id: str
    name: str
    description: str | None = None
    json_schema: dict[str, Any]
    args_json_schema: dict[str, Any] | None = None
    source_code: str | None = None
    source_type: str = "python"
    tool_type: str = "custom"
    tags: list[str] = Field(default_factory=list)
    return_char_limit: int = 50_000
    pip_requirements: list[PipRequirementView] | None = None
    default_requires_approval: bool | None = None
    metadata_: dict[str, Any] | None = None

    @classmethod
    def of(cls, tool: Tool) -> ToolView:
        tool_id = base_tool_id(tool.name) if tool.name in BASE_TOOLS else tool.id
        return cls(id=tool_id, name=tool.name, description=tool.description, json_schema=tool.json_schema,
                   source_code=tool.source_code, source_type=tool.source_type, tool_type=tool.tool_type,
                   tags=tool.tags, return_char_limit=tool.return_char_limit,
                   pip_requirements=[PipRequirementView(name=r.name, version=r.version)
                                     for r in tool.pip_requirements] or None,
                   default_requires_approval=tool.default_requires_approval, metadata_=tool.metadata or None)


BASE_TOOL_VIEWS: dict[str, ToolView] = {name: ToolView.of(tf.tool) for name, tf in BASE_TOOLS.items()}


class CreateToolRequest(_Shape):
    """A tool from Python source: one typed function whose docstring is its description."""

    source_code: str = Field(min_length=1, max_length=1_000_000)
    source_type: str = "python"
    tags: list[str] | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = None
    args_json_schema: dict[str, Any] | None = None
    return_char_limit: int | None = Field(default=None, ge=1, le=1_000_000)
    pip_requirements: list[PipRequirementView] | None = None
    default_requires_approval: bool | None = None


class UpdateToolRequest(_Shape):
    """Letta's ToolUpdate: what a tool's PATCH may change."""

    source_code: str | None = Field(default=None, min_length=1, max_length=1_000_000)
    tags: list[str] | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = None
    return_char_limit: int | None = Field(default=None, ge=1, le=1_000_000)
    pip_requirements: list[PipRequirementView] | None = None
    default_requires_approval: bool | None = None


class RunToolFromSourceRequest(_Shape):
    """Letta's ToolRunFromSource: run a tool's source on arguments, with no agent."""

    source_code: str = Field(min_length=1, max_length=1_000_000)
    args: dict[str, Any] = Field(default_factory=dict)
    env_vars: dict[str, str] | None = None
    name: str | None = None
    source_type: str | None = None
    args_json_schema: dict[str, Any] | None = None
    json_schema: dict[str, Any] | None = None
    pip_requirements: list[PipRequirementView] | None = None


class ToolSearchRequest(_Shape):
    """Letta's ToolSearchRequest."""

    query: str | None = Field(default=None, max_length=2000)
    search_mode: Literal["vector", "fts", "hybrid"] = "hybrid"
    tool_types: list[str] | None = None
    tags: list[str] | None = None
    limit: int = Field(default=50, ge=1, le=100)


class ToolSearchResultView(_Shape):
    tool: ToolView
    embedded_text: str | None = None
    fts_rank: int | None = None
    vector_rank: int | None = None


class RunAgentToolRequest(_Shape):
    """Letta's ToolExecuteRequest."""

    args: dict[str, Any] = Field(default_factory=dict)


class ToolRunView(_Shape):
    """Letta's ToolReturnMessage, as ``POST /v1/tools/run`` answers."""

    id: str = Field(default_factory=lambda: new_id("message"))
    date: datetime = Field(default_factory=utcnow)
    message_type: Literal["tool_return_message"] = "tool_return_message"
    name: str | None = None
    tool_return: str
    status: Literal["success", "error"]
    tool_call_id: str = Field(default_factory=lambda: new_id("call"))
    stdout: list[str] | None = None
    stderr: list[str] | None = None


class ImportedAgentsView(_Shape):
    """Letta's ImportedAgentsResponse."""

    agent_ids: list[str]


class ToolExecutionResultView(_Shape):
    """Letta's ToolExecutionResult, as ``POST /v1/agents/{id}/tools/{name}/run`` answers."""

    status: Literal["success", "error"]
    func_return: Any = None
    stdout: list[str] | None = None
    stderr: list[str] | None = None


# --------------------------------------------------------------------------- agents


class AgentSecretView(_Shape):
    """Letta's AgentEnvironmentVariable: one environment variable of an agent's tools."""

    key: str
    value: str
    agent_id: str | None = None


class AgentStateView(_Shape):
    """Letta's AgentState: blocks both flat and under ``memory``, tools as Tool objects."""

    id: str
    name: str
    agent_type: str
    system: str
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    tags: list[str]
    memory: MemoryView
    blocks: list[BlockView]
    tools: list[ToolView]
    tool_rules: list[ToolRule] = Field(default_factory=list)
    sources: list[dict[str, Any]] = Field(default_factory=list)
    llm_config: LLMConfigView
    embedding_config: EmbeddingConfigView
    model: str | None = None
    embedding: str | None = None
    message_ids: list[str] = Field(default_factory=list)
    identity_ids: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    message_buffer_autoclear: bool = False
    response_format: dict[str, Any] | None = None
    secrets: list[AgentSecretView] = Field(default_factory=list)
    tool_exec_environment_variables: list[AgentSecretView] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, state: AgentState, tools: dict[str, Tool] | None = None) -> AgentStateView:
        """The view of ``state``; ``tools`` maps the names of its custom tools to the stored tools."""
        blocks = [BlockView.of(b) for b in state.blocks]
        secrets = [AgentSecretView(key=k, value=v, agent_id=state.id) for k, v in state.secrets.items()]
        views = []
        for name in state.tools:
            if name in BASE_TOOL_VIEWS:
                views.append(BASE_TOOL_VIEWS[name])
            elif tools is not None and name in tools:
                views.append(ToolView.of(tools[name]))
        return cls(id=state.id, name=state.name, agent_type=state.metadata.get(LETTA_AGENT_TYPE, state.agent_type),
                   system=state.system, identity_ids=state.identity_ids, timezone=state.timezone,
                   message_buffer_autoclear=state.message_buffer_autoclear,
                   description=state.description, metadata=state.metadata, tags=state.tags,
                   memory=MemoryView(blocks=blocks, agent_type=state.agent_type), blocks=blocks, tools=views,
                   tool_rules=state.tool_rules, llm_config=LLMConfigView.of(state.llm_config),
                   embedding_config=EmbeddingConfigView.of(state.embedding_config),
                   model=state.llm_config.handle or state.llm_config.model,
                   embedding=state.embedding_config.handle or state.embedding_config.embedding_model,
                   message_ids=state.message_ids, secrets=secrets, tool_exec_environment_variables=secrets,
                   created_at=state.created_at, updated_at=state.updated_at)


# The metadata key that keeps the Letta agent type an agent was created as (react_agent, ...).
LETTA_AGENT_TYPE = "letta_agent_type"


class CreateAgentRequest(_Shape):
    """Letta's CreateAgent, the fields letta_ray acts on."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    agent_type: str = Field(default="letta_v1_agent", description="letta_v1_agent (Letta's default), "
                            "memgpt_v2_agent, memgpt_agent, sleeptime_agent; react_agent and workflow_agent run on "
                            "the letta_v1 loop")
    embedding: str | None = Field(default=None, description="accepted: agents here use the deployment's embedder")
    embedding_config: dict[str, Any] | None = Field(default=None, description="accepted, as embedding")
    embedding_chunk_size: PositiveInteger | None = None
    model_settings: dict[str, Any] | None = Field(default=None, description="temperature, max_output_tokens "
                                                  "(others are the provider's defaults here)")
    initial_message_sequence: list[MessageCreateRequest] | None = None
    include_base_tool_rules: bool | None = Field(default=None, description="accepted: the base rules (send_message "
                                                 "ends a turn) are built into the loop")
    timezone: str | None = None
    message_buffer_autoclear: bool = False
    identity_ids: list[str] | None = None
    folder_ids: list[str] | None = None
    source_ids: list[str] | None = None
    response_format: dict[str, Any] | None = None
    system: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None
    tags: list[str] | None = None
    memory_blocks: list[CreateBlockRequest] | None = None
    block_ids: list[str] | None = None
    tools: list[str] | None = None
    tool_ids: list[str] | None = None
    include_base_tools: bool = True
    tool_rules: list[ToolRule] | None = None
    model: str | None = Field(default=None, description="a model handle / litellm model string")
    model_endpoint: str | None = Field(default=None, description="letta_ray: base URL for `model`")
    llm_config: LLMConfigView | None = None
    context_window_limit: int | None = Field(default=None, ge=256)
    max_tokens: int | None = Field(default=None, ge=1)
    max_steps: int | None = Field(default=None, ge=1, description="letta_ray: most steps in one turn")
    secrets: dict[str, str] | None = Field(default=None, description="environment variables of this agent's tools")
    tool_exec_environment_variables: dict[str, str] | None = Field(default=None, description="Deprecated: secrets")
    enable_sleeptime: bool = Field(default=False, description="also create a sleep-time agent sharing the blocks")
    sleeptime_agent_frequency: int = Field(default=5, ge=1, description="letta_ray: wake it every N turns")


class UpdateAgentRequest(_Shape):
    """Letta's UpdateAgent, the fields letta_ray can change."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    system: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None
    tags: list[str] | None = None
    tool_ids: list[str] | None = None
    tool_rules: list[ToolRule] | None = None
    model: str | None = None
    model_endpoint: str | None = None
    llm_config: LLMConfigView | None = None
    context_window_limit: int | None = Field(default=None, ge=256)
    max_tokens: int | None = Field(default=None, ge=1)
    block_ids: list[str] | None = None
    max_steps: int | None = Field(default=None, ge=1)
    secrets: dict[str, str] | None = None
    tool_exec_environment_variables: dict[str, str] | None = None
    model_settings: dict[str, Any] | None = None
    timezone: str | None = None
    message_buffer_autoclear: bool | None = None
    identity_ids: list[str] | None = None
    response_format: dict[str, Any] | None = None


# --------------------------------------------------------------------------- messages


class MessageCreateRequest(_Shape):
    """One input message: Letta's MessageCreate, its ApprovalCreate (``type: "approval"``), or
    its ToolReturnCreate (``type: "tool_return"``: the results of client-side tools)."""

    type: Literal["message", "approval", "tool_return"] | None = None
    role: Literal["user", "system", "assistant"] = "user"
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    otid: str | None = None
    sender_id: str | None = None
    approvals: list[ApprovalDecision] | None = None  # Letta's ApprovalReturn or ToolReturn
    tool_returns: list[dict[str, Any]] | None = None  # Letta's ToolReturns (type "tool" implied)
    approve: bool | None = None
    approval_request_id: str | None = None
    reason: str | None = None

    def to_core(self) -> MessageCreate:
        """The core message (which checks that an approval carries answers and a message content)."""
        if self.type == "tool_return":
            if not self.tool_returns:
                raise InvalidInputError("a tool_return message needs tool_returns")
            return MessageCreate(type="approval", otid=self.otid, approvals=[
                ApprovalDecision(**{**r, "type": "tool"}) for r in self.tool_returns])
        if self.type == "approval":
            return MessageCreate(type="approval", approvals=self.approvals or None,
                                 approve=self.approve, approval_request_id=self.approval_request_id,
                                 reason=self.reason, otid=self.otid)
        if self.content is None:
            raise InvalidInputError("a message needs content")
        return MessageCreate(role=self.role, content=self.content, name=self.name, otid=self.otid,
                             sender_id=self.sender_id)


class ModifyApprovalRequest(_Shape):
    """Letta's ModifyApprovalRequest."""

    requires_approval: bool


class ClientToolRequest(_Shape):
    """Letta's ClientToolSchema."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class SendMessageRequest(_Shape):
    """Letta's LettaRequest / LettaStreamingRequest."""

    # messages or input, one of them not empty: the schema says so too
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
        {"required": ["input"], "properties": {"input": {"type": ["string", "array"]}}}]})

    messages: list[MessageCreateRequest] | None = Field(default=None, min_length=1)
    input: Annotated[str, Field(min_length=1)] | Annotated[list[dict[str, Any]], Field(min_length=1)] | None = Field(
        default=None, description="shorthand for one user message")
    max_steps: int | None = Field(default=None, ge=1)
    streaming: bool = False
    stream_tokens: bool = False
    include_pings: bool = True
    background: bool = False
    use_assistant_message: bool = True
    include_return_message_types: list[str] | None = None
    override_model: str | None = Field(default=None, description="a model handle for this request only")
    enable_thinking: str | bool | None = Field(default=None, description="accepted: reasoning is the model's own")
    include_compaction_messages: bool | None = None
    client_tools: list[ClientToolRequest] | None = Field(
        default=None, description="tools the client runs: a call to one stops the turn (requires_approval) "
        "until the client sends its result back as an approval message with a tool return")

    @model_validator(mode="after")
    def _has_messages(self) -> SendMessageRequest:
        if not self.messages and not self.input:
            raise ValueError("messages must not be empty")
        return self

    def core_client_tools(self) -> list[ClientTool] | None:
        return [ClientTool(**t.model_dump()) for t in self.client_tools] if self.client_tools else None

    def to_core(self) -> list[MessageCreate]:
        if self.messages:
            return [m.to_core() for m in self.messages]
        assert self.input is not None
        return [MessageCreate(content=self.input)]


# --------------------------------------------------------------------------- archival memory


class PassageView(_Shape):
    id: str
    text: str
    tags: list[str] = Field(default_factory=list)
    agent_id: str | None = None
    archive_id: str | None = None
    created_at: datetime
    updated_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding: list[float] | None = None
    embedding_config: EmbeddingConfigView | None = None
    is_deleted: bool = False

    @classmethod
    def of(cls, passage: Passage) -> PassageView:
        shared = passage.agent_id.startswith("archive-")  # an archive's passage (actors/archives_api.py)
        return cls(id=passage.id, text=passage.text, tags=passage.tags, created_at=passage.created_at,
                   agent_id=None if shared else passage.agent_id, archive_id=passage.agent_id if shared else None)


class CreatePassageRequest(_Shape):
    text: str = Field(min_length=1)
    tags: list[str] | None = None


class ArchivalSearchResult(_Shape):
    id: str
    timestamp: str
    content: str
    tags: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, passage: Passage) -> ArchivalSearchResult:
        return cls(id=passage.id, timestamp=passage.created_at.isoformat(), content=passage.text, tags=passage.tags)


class ArchivalSearchResponse(_Shape):
    results: list[ArchivalSearchResult]
    count: int


# --------------------------------------------------------------------------- runs, health, models

RunStatus = Literal["created", "running", "completed", "failed", "cancelled"]


class RunView(_Shape):
    """A run: one request's turn (``background`` when it ran detached from the request)."""

    id: str = Field(default_factory=lambda: f"run-{uuid.uuid4()}")
    agent_id: str
    status: RunStatus = "created"
    background: bool = False
    created_at: datetime
    completed_at: datetime | None = None
    stop_reason: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    request_config: dict[str, Any] = Field(default_factory=dict)
    total_duration_ns: int | None = None
    usage: dict[str, Any] | None = Field(default=None, description="letta_ray: token usage of the turn")
    error: str | None = Field(default=None, description="letta_ray: why the run failed")


class ErrorView(_Shape):
    """An error: what went wrong; a 5xx adds the id under which the server logged it."""

    detail: Any
    error_id: str | None = None


# The error statuses every route may answer with (besides FastAPI's 422), in the published schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorView, "description": "the request is well-formed but not acceptable (a block over its "
                                             "limit, a tool without a docstring, ...)"},
    401: {"model": ErrorView, "description": "a token is set and this request has none, or the wrong one"},
    404: {"model": ErrorView, "description": "no such agent, block, tool, ..."},
    409: {"model": ErrorView, "description": "it conflicts with what is there (a name taken, ...)"},
    413: {"model": ErrorView, "description": "over a size limit: the body, a message, a block, a tool's source, ..."},
    422: {"model": ErrorView, "description": "the request does not match the schema"},
    500: {"model": ErrorView, "description": "an internal error; its detail is in the server's log under error_id"},
    502: {"model": ErrorView, "description": "the LLM provider failed"},
    503: {"model": ErrorView, "description": "a part of the service is unavailable (storage, a host, an MCP server)"},
    504: {"model": ErrorView, "description": "timed out"},
}


class HealthView(_Shape):
    version: str
    status: str


class ModelView(_Shape):
    handle: str
    name: str
    model: str
    display_name: str
    provider_type: str
    provider_name: str
    model_type: Literal["llm"] = "llm"
    model_endpoint_type: str
    model_endpoint: str | None = None
    context_window: int
    max_context_window: int

    @classmethod
    def of(cls, config: LLMConfig) -> ModelView:
        view = LLMConfigView.of(config)
        return cls(handle=view.handle or config.model, name=config.model.rpartition("/")[2], model=config.model,
                   display_name=config.model, provider_type=view.model_endpoint_type,
                   provider_name=view.provider_name or "openai", model_endpoint_type=view.model_endpoint_type,
                   model_endpoint=config.model_endpoint, context_window=config.context_window,
                   max_context_window=config.context_window)


class EmbeddingModelView(EmbeddingConfigView):
    embedding_model_type: Literal["embedding"] = "embedding"
