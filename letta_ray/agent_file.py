"""Letta's Agent File (``.af``): read one into agents to create, write agents out as one.

The format is the one Letta 0.16 writes (``AgentFileSchema``): top-level lists of agents,
groups, blocks, tools, sources, files and MCP servers, each with an id local to the file
(``agent-0``, ``block-3``), and agents that name their blocks and tools by those ids and
carry their messages, ``in_context_message_ids`` saying which were in the context window.
Also read: the older single-agent layout (inline ``core_memory``, ``tools`` and
``in_context_message_indices``), and files whose JSON was encoded twice.

``plan_import`` turns a file into new agents, blocks, tools, messages and groups with new
ids and every reference remapped, without writing anything; the runtime then writes the
plan, all of it or none. ``export_agents`` writes agents, their tools, messages and group
back in the same format. Fields of the file this runtime has no place for are kept in the
agent's metadata and written back on export.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from letta_ray.errors import InvalidInputError
from letta_ray.mcp import MCPServer, SSEServerConfig, StdioServerConfig, StreamableHTTPServerConfig, server_of
from letta_ray.messages import Message, ToolCall
from letta_ray.schemas import (
    AgentState,
    Block,
    EmbeddingConfig,
    FileMetadata,
    Folder,
    LLMConfig,
    OpenFile,
    PipRequirement,
    Tool,
    ToolRule,
    new_id,
    utcnow,
)

KEPT = "letta_agent_file"  # agent metadata key: the file's fields we have no place for
_RULES: TypeAdapter[Any] = TypeAdapter(list[ToolRule])
_AGENT_TYPES = {"memgpt_v2_agent", "letta_v1_agent", "memgpt_agent", "sleeptime_agent"}
# Letta's endpoint types -> litellm's provider prefixes (where they differ).
_PROVIDERS = {"google_ai": "gemini", "google_vertex": "vertex_ai", "together": "together_ai",
              "bedrock": "bedrock", "azure": "azure", "openai": "openai", "anthropic": "anthropic"}
_DEFAULT_ENDPOINTS = {"https://api.openai.com/v1", "https://api.anthropic.com/v1", "https://api.anthropic.com",
                      "https://generativelanguage.googleapis.com", "https://api.groq.com/openai/v1",
                      "https://api.mistral.ai/v1"}
# Letta's tool types of our built-in tools, as Letta files them.
_BASE_TOOL_TYPES = {"core_memory_append": "letta_memory_core", "core_memory_replace": "letta_memory_core",
                    "memory_insert": "letta_sleeptime_core", "memory_replace": "letta_sleeptime_core",
                    "memory_rethink": "letta_sleeptime_core", "memory_finish_edits": "letta_sleeptime_core"}


class AgentFileError(InvalidInputError):
    """An agent file that cannot be imported; says which element is wrong and why."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"agent file: {where}: {why}" if where else f"agent file: {why}")
        self.where = where
        self.why = why

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.where, self.why))


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")

    def extras(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class FileBlock(_Lenient):
    id: str
    label: str
    value: str | None = ""
    limit: int | None = None
    description: str | None = None
    read_only: bool | None = False
    metadata: dict[str, Any] | None = None


class FileTool(_Lenient):
    id: str
    name: str | None = None
    tool_type: str | None = "custom"
    description: str | None = None
    source_code: str | None = None
    json_schema: dict[str, Any] | None = None
    tags: list[str] | None = None
    return_char_limit: int | None = None
    pip_requirements: list[dict[str, Any]] | None = None
    default_requires_approval: bool | None = None
    metadata_: dict[str, Any] | None = None


class FileMessage(_Lenient):
    id: str
    role: str
    content: Any = None
    name: str | None = None
    otid: str | None = None
    sender_id: str | None = None
    group_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    tool_returns: list[dict[str, Any]] | None = None
    approvals: list[dict[str, Any]] | None = None
    created_at: datetime | None = None


class FileAgent(_Lenient):
    id: str
    name: str | None = None
    agent_type: str | None = None
    system: str | None = None
    description: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    llm_config: dict[str, Any] | None = None
    embedding_config: dict[str, Any] | None = None
    model: str | None = None
    tool_rules: list[dict[str, Any]] | None = None
    tool_ids: list[str] | None = None
    block_ids: list[str] | None = None
    messages: list[FileMessage] = Field(default_factory=list)
    in_context_message_ids: list[str] = Field(default_factory=list)
    tool_exec_environment_variables: dict[str, str] | None = None
    secrets: dict[str, str] | None = None
    group_ids: list[str] | None = None
    source_ids: list[str] | None = None
    folder_ids: list[str] | None = None
    files_agents: list[dict[str, Any]] | None = None


class FileGroup(_Lenient):
    id: str
    agent_ids: list[str]
    description: str | None = ""
    manager_config: dict[str, Any] | None = None


class AgentFile(_Lenient):
    agents: list[FileAgent]
    groups: list[FileGroup] = Field(default_factory=list)
    blocks: list[FileBlock] = Field(default_factory=list)
    tools: list[FileTool] = Field(default_factory=list)
    mcp_servers: list[dict[str, Any]] = Field(default_factory=list)
    sources: list[dict[str, Any]] = Field(default_factory=list)
    files: list[dict[str, Any]] = Field(default_factory=list)


# --------------------------------------------------------------------------- reading


def read_agent_file(raw: bytes | str | dict[str, Any]) -> AgentFile:
    """Parse an agent file (bytes, text or the decoded JSON); AgentFileError says what is wrong."""
    doc: Any = raw
    if isinstance(doc, bytes):
        try:
            doc = doc.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise AgentFileError("", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for _ in range(3):  # JSON, or JSON encoded as a JSON string (twice, some real files)
        if not isinstance(doc, str):
            break
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as exc:
            raise AgentFileError("", f"not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise AgentFileError("", f"the document is a JSON {type(doc).__name__}, not an object")
    if not isinstance(doc.get("agents"), list):
        if "core_memory" in doc or "in_context_message_indices" in doc:
            doc = _from_single_agent_layout(doc)
        else:
            raise AgentFileError("agents", "missing: an agent file lists its agents under 'agents'")
    try:
        return AgentFile.model_validate(doc)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
        raise AgentFileError(where, error["msg"]) from None


def _from_single_agent_layout(doc: dict[str, Any]) -> dict[str, Any]:
    """The older layout (one agent, blocks and tools inline, in-context messages by index)
    in the current one."""
    blocks = [{**b, "id": f"block-{i}", "metadata": b.get("metadata_") or b.get("metadata")}
              for i, b in enumerate(doc.get("core_memory") or [])]
    tools = [{**t, "id": f"tool-{i}"} for i, t in enumerate(doc.get("tools") or [])]
    messages = [{**m, "id": f"message-{i}"} for i, m in enumerate(doc.get("messages") or [])]
    indices = doc.get("in_context_message_indices") or []
    env = doc.get("tool_exec_environment_variables")
    if isinstance(env, list):
        env = {e.get("key"): e.get("value") or "" for e in env if isinstance(e, dict) and e.get("key")}
    tags = [t.get("tag") if isinstance(t, dict) else t for t in doc.get("tags") or []]
    skip = {"core_memory", "tools", "messages", "in_context_message_indices", "tool_exec_environment_variables",
            "tags", "metadata_", "multi_agent_group", "version"}
    agent = {k: v for k, v in doc.items() if k not in skip}
    agent.update(id="agent-0", block_ids=[b["id"] for b in blocks], tool_ids=[t["id"] for t in tools],
                 messages=messages, tags=tags, metadata=doc.get("metadata_") or doc.get("metadata") or {},
                 in_context_message_ids=[f"message-{i}" for i in indices if isinstance(i, int)
                                         and 0 <= i < len(messages)],
                 tool_exec_environment_variables=env or {})
    return {"agents": [agent], "blocks": blocks, "tools": tools, "groups": []}


# --------------------------------------------------------------------------- the import plan


@dataclass
class ImportOptions:
    """The import options of Letta's SDK (``agents.import_file``)."""

    name: str | None = None
    append_copy_suffix: bool = False
    model: str | None = None  # a Letta handle ("openai/gpt-4o-mini") or a litellm model string
    embedding: str | None = None
    strip_messages: bool = False
    override_existing_tools: bool = True
    secrets: dict[str, str] | None = None


@dataclass
class ImportPlan:
    """What importing a file creates: agents (each with the messages in its context window,
    in order), their other messages, the custom tools, and the groups (by manager type)."""

    agents: list[AgentState]
    context: list[list[Message]]
    history: list[Message]
    tools: list[Tool]
    groups: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    mcp_servers: list[MCPServer] = field(default_factory=list)
    # per agent (by new id): names of MCP servers' tools it had; attached if their server lists them here
    mcp_tools: dict[str, list[str]] = field(default_factory=dict)
    folders: list[Folder] = field(default_factory=list)
    files: list[tuple[FileMetadata, str]] = field(default_factory=list)  # each with its text


def litellm_model(handle_or_model: str, endpoint_type: str | None = None) -> str:
    """A litellm model string for a Letta handle ("google_ai/gemini-2.0-flash" -> "gemini/...")
    or for a model and its endpoint type."""
    if endpoint_type is None:
        provider, _, model = handle_or_model.partition("/")
        if not model:
            return handle_or_model
        return f"{_PROVIDERS.get(provider, provider)}/{model}"
    return f"{_PROVIDERS.get(endpoint_type, endpoint_type)}/{handle_or_model}"


def _llm_config(raw: dict[str, Any] | None, model: str | None, override: str | None, where: str) -> LLMConfig:
    raw = raw or {}
    window = raw.get("context_window") or 32_000
    try:
        if override:
            return LLMConfig(model=litellm_model(override), handle=override, context_window=window)
        handle = raw.get("handle") or model
        if raw.get("model"):
            name = litellm_model(raw["model"], raw.get("model_endpoint_type") or "openai")
        elif handle:
            name = litellm_model(handle)
        else:
            raise AgentFileError(where, "no llm_config (and no model): which model does the agent think with?")
        endpoint = raw.get("model_endpoint")
        temperature = raw.get("temperature")
        return LLMConfig(model=name, handle=handle, context_window=window,
                         model_endpoint=None if endpoint in _DEFAULT_ENDPOINTS else endpoint,
                         temperature=0.7 if temperature is None else temperature,
                         max_tokens=raw.get("max_tokens") or None)
    except ValidationError as exc:
        raise AgentFileError(f"{where}.llm_config", exc.errors()[0]["msg"]) from None


def _text(content: Any) -> tuple[str | None, str | None]:
    """(text, reasoning) of a message's content: a string, or Letta's list of parts."""
    if content is None or isinstance(content, str):
        return content, None
    texts, reasoning = [], []
    for part in content if isinstance(content, list) else [content]:
        if not isinstance(part, dict):
            texts.append(str(part))
        elif part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        elif part.get("type") == "reasoning":
            reasoning.append(str(part.get("reasoning") or ""))
        elif part.get("type") == "image":
            texts.append("[image]")
    return ("\n".join(texts) if texts else None), ("\n".join(reasoning) if reasoning else None)


def _tool_status(text: str | None) -> str:
    try:
        status = json.loads(text or "").get("status")
    except (json.JSONDecodeError, AttributeError):
        return "success"
    return "error" if status in ("Failed", "error") else "success"


def _messages_of(fm: FileMessage, agent_id: str, where: str) -> list[Message]:
    """Our messages for one of the file's (a tool message with several returns is several)."""
    text, reasoning = _text(fm.content)
    created = fm.created_at or utcnow()
    common = {"agent_id": agent_id, "created_at": created, "otid": fm.otid, "sender_id": fm.sender_id}
    calls = [ToolCall(id=c.get("id") or new_id("call"), name=(c.get("function") or {}).get("name", ""),
                      arguments=(c.get("function") or {}).get("arguments") or "{}") for c in fm.tool_calls or []]
    role = fm.role
    if role in ("tool", "function") or (role == "approval" and not calls and (fm.approvals or fm.tool_returns)):
        returns = fm.tool_returns or [a for a in fm.approvals or [] if "func_response" in a or "tool_return" in a]
        if not returns:
            return [Message(role="tool", content=text or "", tool_call_id=fm.tool_call_id, name=fm.name,
                            tool_status=_tool_status(text), **common)]  # type: ignore[arg-type]
        out = []
        for r in returns:
            body = r.get("func_response", r.get("tool_return"))
            body_text = body if isinstance(body, str) or body is None else _text(body)[0]
            out.append(Message(role="tool", content=body_text or "", tool_call_id=r.get("tool_call_id"),
                               name=fm.name, tool_status="error" if r.get("status") == "error" else "success",
                               **common))
        return out
    if role in ("assistant", "approval"):
        return [Message(role="assistant", content=text, reasoning=reasoning, tool_calls=calls, **common)]
    if role in ("user", "system"):
        return [Message(role=role, content=text or "", name=fm.name, **common)]  # type: ignore[arg-type]
    if role == "summary":
        return [Message(role="user", content=text or "", **common)]
    raise AgentFileError(where, f"unknown message role {role!r}")


def _tool_from_file(ft: FileTool, where: str) -> Tool:
    if not ft.name or not ft.name.isidentifier():
        raise AgentFileError(where, f"tool name {ft.name!r} is not a Python identifier")
    if not ft.source_code:
        raise AgentFileError(where, f"custom tool {ft.name!r} has no source_code")
    try:
        tree = ast.parse(ft.source_code)
    except SyntaxError as exc:
        raise AgentFileError(where, f"the source of {ft.name!r} does not parse: {exc.msg} (line {exc.lineno})"
                             ) from None
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == ft.name),
              None)
    if fn is None:
        raise AgentFileError(where, f"the source of {ft.name!r} defines no function of that name")
    schema = ft.json_schema or {}
    if not isinstance(schema.get("parameters"), dict):
        raise AgentFileError(where, f"tool {ft.name!r} has no json_schema with parameters")
    props = {k: v for k, v in schema["parameters"].get("properties", {}).items() if k != "request_heartbeat"}
    required = [r for r in schema["parameters"].get("required", []) if r != "request_heartbeat"]
    schema = {**schema, "name": ft.name, "parameters": {**schema["parameters"], "properties": props,
                                                         "required": required}}
    first = fn.args.args[0].arg if fn.args.args else None
    try:
        return Tool(name=ft.name, description=ft.description or schema.get("description"), json_schema=schema,
                    source_code=ft.source_code, tags=ft.tags or [], return_char_limit=ft.return_char_limit or 50_000,
                    pip_requirements=[PipRequirement.model_validate(r) for r in ft.pip_requirements or []],
                    default_requires_approval=ft.default_requires_approval,
                    takes_agent_state=first == "agent_state", metadata=ft.metadata_ or {})
    except ValidationError as exc:
        raise AgentFileError(where, exc.errors()[0]["msg"]) from None


def plan_import(af: AgentFile, options: ImportOptions, *, embedding: EmbeddingConfig,
                base_tools: dict[str, Tool], default_system: dict[str, str]) -> ImportPlan:
    """New agents, tools, messages and groups for a file, with new ids; AgentFileError names
    the element that cannot be imported. Nothing is written."""
    warnings: list[str] = []
    blocks: dict[str, Block] = {}
    for i, fb in enumerate(af.blocks):
        where = f"blocks[{i}] ({fb.id})"
        if fb.id in blocks:
            raise AgentFileError(where, "this block id is used twice")
        try:
            value = fb.value or ""
            limit = 100_000 if fb.limit is None else fb.limit
            if limit < 1:
                raise AgentFileError(where, f"block {fb.label!r} has a limit of {limit}; it must be at least 1")
            extras = fb.extras()
            if len(value) > limit:  # Letta 0.16 no longer checks: real files have such blocks
                warnings.append(f"block {fb.label!r} holds {len(value)} characters, over its limit of {limit}: "
                                "its limit is raised to fit (the file's limit is written back on export)")
                extras["limit"] = limit
                limit = len(value)
            blocks[fb.id] = Block(label=fb.label, value=value, limit=limit,
                                  description=fb.description, read_only=bool(fb.read_only),
                                  metadata={**(fb.metadata or {}), **({KEPT: extras} if extras else {})})
        except ValidationError as exc:
            raise AgentFileError(where, exc.errors()[0]["msg"]) from None
    tools_by_id: dict[str, FileTool] = {}
    custom: dict[str, Tool] = {}
    for i, ft in enumerate(af.tools):
        where = f"tools[{i}] ({ft.name or ft.id})"
        if ft.id in tools_by_id:
            raise AgentFileError(where, "this tool id is used twice")
        tools_by_id[ft.id] = ft
        if ft.name in base_tools:
            continue
        if (ft.tool_type or "custom").startswith("letta_"):
            warnings.append(f"tool {ft.name!r} is a Letta built-in this server does not have; "
                            "agents keep its name but cannot call it")
            continue
        if ft.tool_type == "external_mcp":
            continue  # its server's, attached once the server is registered here
        custom[ft.name] = _tool_from_file(ft, where)  # type: ignore[index]

    mcp_tools: dict[str, list[str]] = {}
    servers = [_mcp_server_of(raw, f"mcp_servers[{i}]") for i, raw in enumerate(af.mcp_servers)]
    new_ids = {fa.id: new_id("agent") for fa in af.agents}
    if len(new_ids) != len(af.agents):
        raise AgentFileError("agents", "an agent id is used twice")
    folders, files = _folders_and_files(af, embedding)
    agents: list[AgentState] = []
    contexts: list[list[Message]] = []
    history: list[Message] = []
    for i, fa in enumerate(af.agents):
        where = f"agents[{i}] ({fa.name or fa.id})"
        agent_id = new_ids[fa.id]
        agent_blocks = []
        for block_id in fa.block_ids or []:
            if block_id not in blocks:
                raise AgentFileError(where, f"block_ids names {block_id!r}, which the file does not have")
            agent_blocks.append(blocks[block_id])
        tool_names, unavailable = [], []
        for tool_id in fa.tool_ids or []:
            ft = tools_by_id.get(tool_id)
            if ft is None or not ft.name:
                raise AgentFileError(where, f"tool_ids names {tool_id!r}, which the file does not have")
            if ft.tool_type == "external_mcp" and ft.name not in base_tools:
                mcp_tools.setdefault(agent_id, []).append(ft.name)
                continue
            (tool_names if ft.name in base_tools or ft.name in custom else unavailable).append(ft.name)
        try:
            rules = _RULES.validate_python(fa.tool_rules or [])
        except ValidationError as exc:
            raise AgentFileError(f"{where}.tool_rules", exc.errors()[0]["msg"]) from None
        agent_type = fa.agent_type if fa.agent_type in _AGENT_TYPES else "letta_v1_agent"
        name = options.name or fa.name or f"imported-{i}"
        if options.append_copy_suffix and not options.name:
            name += "_copy"
        secrets = dict(fa.secrets or fa.tool_exec_environment_variables or {})
        if options.secrets:
            secrets = {k: options.secrets.get(k, v) for k, v in secrets.items()} | {
                k: v for k, v in options.secrets.items() if k not in secrets}
        embedding_config = fa.embedding_config
        if options.embedding:  # here every agent uses the deployment's embedder: the handle is kept for export
            provider, _, model_name = options.embedding.partition("/")
            embedding_config = {**(embedding_config or {}), "handle": options.embedding,
                                "embedding_endpoint_type": provider, "embedding_model": model_name or provider}
        kept = {**fa.extras(), "agent_type": fa.agent_type, "embedding_config": embedding_config,
                "unavailable_tools": unavailable, "llm_config": fa.llm_config,
                "unavailable_tool_defs": {ft.name: ft.model_dump(exclude={"id"}) for ft in tools_by_id.values()
                                          if ft.name in unavailable}}
        messages_by_id: dict[str, list[Message]] = {}
        for j, fm in enumerate(fa.messages):
            if fm.id in messages_by_id:
                raise AgentFileError(f"{where}.messages[{j}]", f"message id {fm.id!r} is used twice")
            messages_by_id[fm.id] = _messages_of(fm, agent_id, f"{where}.messages[{j}]")
        in_context: list[Message] = []
        for message_id in fa.in_context_message_ids:
            if message_id not in messages_by_id:
                raise AgentFileError(where, f"in_context_message_ids names {message_id!r}, which is not one "
                                            "of its messages")
            in_context += [m for m in messages_by_id[message_id] if m.role != "system" or in_context]
        if options.strip_messages:
            in_context, messages_by_id = [], {}
        context_ids = {m.id for m in in_context}
        history += [m for batch in messages_by_id.values() for m in batch if m.id not in context_ids]
        system = fa.system if fa.system is not None else default_system.get(agent_type, "")
        folder_ids, open_files = _agent_files(fa, folders, files, where)
        if folder_ids:  # the file tools come with folders
            tool_names += [t for t in ("open_files", "grep_files", "semantic_search_files")
                           if t in base_tools and t not in tool_names]
        try:
            state = AgentState(
                id=agent_id, name=name, agent_type=agent_type, system=system, blocks=agent_blocks, tools=tool_names,
                tool_rules=rules, llm_config=_llm_config(fa.llm_config, fa.model, options.model, where),
                embedding_config=embedding, tags=fa.tags or [], description=fa.description,
                metadata={**(fa.metadata or {}), KEPT: kept}, secrets=secrets,
                message_ids=[m.id for m in in_context], folder_ids=folder_ids, open_files=open_files)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise AgentFileError(f"{where}.{'.'.join(map(str, error['loc']))}", error["msg"]) from None
        agents.append(state)
        contexts.append(in_context)

    groups = []
    for i, fg in enumerate(af.groups):
        where = f"groups[{i}] ({fg.id})"
        config = dict(fg.manager_config or {"manager_type": "round_robin"})
        members = []
        for agent_ref in fg.agent_ids:
            if agent_ref not in new_ids:
                raise AgentFileError(where, f"agent_ids names {agent_ref!r}, which the file does not have")
            members.append(new_ids[agent_ref])
        if config.get("manager_agent_id") is not None:
            if config["manager_agent_id"] not in new_ids:
                raise AgentFileError(where, f"manager_agent_id {config['manager_agent_id']!r} is not in the file")
            config["manager_agent_id"] = new_ids[config["manager_agent_id"]]
        groups.append({"agent_ids": members, "description": fg.description or "", "manager_config": config})
    return ImportPlan(agents, contexts, history, list(custom.values()), groups, warnings, servers, mcp_tools,
                      list(folders.values()), list(files.values()))


def _folders_and_files(af: AgentFile, embedding: EmbeddingConfig
                       ) -> tuple[dict[str, Folder], dict[str, tuple[FileMetadata, str]]]:
    """The file's sources (folders here) and files with new ids, by their ids in the file."""
    folders: dict[str, Folder] = {}
    for i, raw in enumerate(af.sources):
        where = f"sources[{i}] ({raw.get('id')})"
        if not raw.get("id") or raw["id"] in folders:
            raise AgentFileError(where, "a source needs an id of its own")
        try:
            folders[raw["id"]] = Folder(name=raw.get("name") or raw["id"], description=raw.get("description"),
                                        instructions=raw.get("instructions"), metadata=raw.get("metadata") or {},
                                        embedding_config=embedding)
        except ValidationError as exc:
            raise AgentFileError(where, exc.errors()[0]["msg"]) from None
    files: dict[str, tuple[FileMetadata, str]] = {}
    for i, raw in enumerate(af.files):
        where = f"files[{i}] ({raw.get('id')})"
        source = raw.get("folder_id") or raw.get("source_id")
        if source not in folders:
            raise AgentFileError(where, f"source_id names {source!r}, which the file does not have")
        name = raw.get("file_name") or raw.get("original_file_name")
        if not name or not raw.get("id") or raw["id"] in files:
            raise AgentFileError(where, "a file needs an id of its own and a file_name")
        content = raw.get("content") or ""
        name = name.rsplit("/", 1)[-1]  # Letta writes the folder's path in front of the name
        files[raw["id"]] = (FileMetadata(
            folder_id=folders[source].id, file_name=name, original_file_name=raw.get("original_file_name") or name,
            file_type=raw.get("file_type") or "text/plain", file_size=raw.get("file_size") or len(content.encode())),
            content)
    return folders, files


def _agent_files(fa: FileAgent, folders: dict[str, Folder], files: dict[str, tuple[FileMetadata, str]],
                 where: str) -> tuple[list[str], list[OpenFile]]:
    """An agent's folders (new ids) and the files it had open, from the file's references."""
    folder_ids = []
    for ref in [*(fa.source_ids or []), *(fa.folder_ids or [])]:
        if ref not in folders:
            raise AgentFileError(where, f"source_ids names {ref!r}, which the file does not have")
        if folders[ref].id not in folder_ids:
            folder_ids.append(folders[ref].id)
    opened = []
    for link in fa.files_agents or []:
        if not link.get("is_open", True):
            continue
        if link.get("file_id") not in files:
            raise AgentFileError(where, f"files_agents names the file {link.get('file_id')!r}, which the file "
                                        "does not have")
        meta, _ = files[link["file_id"]]
        folder = next(f for f in folders.values() if f.id == meta.folder_id)
        view = link.get("visible_content") or ""
        first = int(link.get("start_line") or 1)
        when = {"opened_at": link["last_accessed_at"]} if link.get("last_accessed_at") else {}
        opened.append(OpenFile(file_id=meta.id, file_name=f"{folder.name}/{meta.file_name}", view=view,
                               offset=first - 1, first_line=first,
                               last_line=int(link.get("end_line") or first + max(view.count("\n"), 0)), **when))
    return folder_ids, opened


def _mcp_server_of(raw: dict[str, Any], where: str) -> MCPServer:
    """A server of the file (Letta writes no secrets: a stdio server's env and any token are
    left out, so they are set again here)."""
    kind = raw.get("server_type") or raw.get("mcp_server_type")
    try:
        if kind == "stdio":
            stdio = raw.get("stdio_config") or {}
            config: Any = StdioServerConfig(command=stdio.get("command", ""), args=stdio.get("args") or [],
                                            env=stdio.get("env"))
        elif kind == "sse":
            config = SSEServerConfig(server_url=raw.get("server_url") or "")
        elif kind == "streamable_http":
            config = StreamableHTTPServerConfig(server_url=raw.get("server_url") or "")
        else:
            raise AgentFileError(where, f"unknown MCP server_type {kind!r}")
        return MCPServer(server_name=raw.get("server_name") or "", config=config)
    except ValidationError as exc:
        raise AgentFileError(where, exc.errors()[0]["msg"]) from None


# --------------------------------------------------------------------------- writing


@dataclass
class ExportedAgent:
    """What exporting one agent needs: its state, the messages to write (oldest first) and
    which of them were in its context window."""

    state: AgentState
    messages: list[Message]
    system_prompt: str  # the compiled system message Letta keeps first in context


def export_agents(agents: list[ExportedAgent], tools: dict[str, Tool], groups: list[dict[str, Any]],
                  mcp_servers: dict[str, MCPServer] | None = None, folders: list[Folder] | None = None,
                  files: list[tuple[FileMetadata, str]] | None = None) -> dict[str, Any]:
    """The agent file of ``agents`` (secrets written with empty values), their tools, groups,
    the MCP servers their tools come from (``mcp_servers``, by id; no env or token), and
    their folders with their files (each with its text) as Letta's sources and files."""
    ids: dict[str, str] = {}
    counters: dict[str, int] = {}

    def local(kind: str, real: str) -> str:
        if real not in ids:
            ids[real] = f"{kind}-{counters.get(kind, 0)}"
            counters[kind] = counters.get(kind, 0) + 1
        return ids[real]

    file_agents, file_blocks, file_tools = [], {}, {}
    for exported in agents:
        state = exported.state
        agent_local = local("agent", state.id)
        kept = dict(state.metadata.get(KEPT) or {})
        llm_config = _letta_llm_config(state.llm_config, kept.get("llm_config"))
        system_id = local("message", new_id("message"))
        messages = [{"type": "message", "role": "system", "id": system_id, "agent_id": agent_local,
                     "content": [{"type": "text", "text": exported.system_prompt}],
                     "created_at": state.created_at.isoformat(), "model": llm_config["model"]}]
        messages += [_file_message(m, local("message", m.id), agent_local, llm_config["model"])
                     for m in exported.messages]
        in_context = [system_id, *(ids[m] for m in state.message_ids if m in ids)]
        for block in state.blocks:
            block_local = local("block", block.id)
            extra = dict(block.metadata.get(KEPT) or {})
            file_blocks[block_local] = {"limit": block.limit, **extra, "id": block_local, "label": block.label,
                                        "value": block.value, "description": block.description,
                                        "read_only": block.read_only,
                                        "metadata": {k: v for k, v in block.metadata.items() if k != KEPT}}
        tool_ids = []
        for name in [*state.tools, *kept.get("unavailable_tools", [])]:
            tool = tools.get(name)
            tool_local = local("tool", f"tool:{name}")
            tool_ids.append(tool_local)
            file_tools[tool_local] = _file_tool(tool_local, name, tool, kept.get("unavailable_tool_defs"))
            server_id = server_of(tool) if tool is not None else None
            if server_id is not None:
                file_tools[tool_local]["metadata_"] = {"mcp": {
                    "server_name": tool.metadata["mcp"].get("server_name"),  # type: ignore[union-attr]
                    "server_id": local("mcp_server", server_id)}}
        metadata = {k: v for k, v in state.metadata.items() if k != KEPT}
        agent = {k: v for k, v in kept.items()
                 if k not in ("unavailable_tools", "unavailable_tool_defs", "llm_config", "embedding_config")}
        agent.update({
            "id": agent_local, "name": state.name, "agent_type": kept.get("agent_type") or state.agent_type,
            "system": state.system, "description": state.description, "tags": state.tags, "metadata": metadata,
            "llm_config": llm_config,
            "embedding_config": kept.get("embedding_config") or _letta_embedding_config(state.embedding_config),
            "tool_rules": [r.model_dump(mode="json") for r in state.tool_rules],
            "tool_ids": tool_ids, "block_ids": [ids[b.id] for b in state.blocks],
            "source_ids": [local("source", f) for f in state.folder_ids],
            "files_agents": [{"id": local("file_agent", f"{state.id}:{o.file_id}"), "agent_id": agent_local,
                              "file_id": local("file", o.file_id), "file_name": o.file_name, "is_open": True,
                              "visible_content": o.view, "start_line": o.first_line, "end_line": o.last_line,
                              "last_accessed_at": o.opened_at.isoformat()} for o in state.open_files],
            "messages": messages, "in_context_message_ids": in_context, "group_ids": [],
            "secrets": dict.fromkeys(state.secrets, ""),
            "tool_exec_environment_variables": dict.fromkeys(state.secrets, ""),
            "memory_blocks": [], "tools": [], "include_base_tools": False, "enable_sleeptime": False,
            "model": None, "embedding": None})
        file_agents.append(agent)
    file_groups = []
    for group in groups:
        config = dict(group.get("manager_config") or {})
        if config.get("manager_agent_id") in ids:
            config["manager_agent_id"] = ids[config["manager_agent_id"]]
        members = [ids[a] for a in group.get("agent_ids", []) if a in ids]
        group_local = local("group", group.get("id") or new_id("group"))
        manager = config.get("manager_agent_id")
        for agent in file_agents:
            if agent["id"] == manager:
                agent["group_ids"].append(group_local)
        file_groups.append({"id": group_local, "agent_ids": members, "description": group.get("description", ""),
                            "manager_config": config, "shared_block_ids": [], "project_id": None, "hidden": None})
    return {"agents": file_agents, "groups": file_groups,
            "blocks": sorted(file_blocks.values(), key=lambda b: b["label"]),
            "sources": [{"id": local("source", f.id), "name": f.name, "description": f.description,
                         "instructions": f.instructions, "metadata": f.metadata,
                         "embedding_config": _letta_embedding_config(f.embedding_config)} for f in folders or []],
            "files": [{"id": local("file", meta.id), "source_id": local("source", meta.folder_id),
                       "file_name": meta.file_name, "original_file_name": meta.original_file_name,
                       "file_type": meta.file_type, "file_size": meta.file_size, "processing_status": "completed",
                       "content": text} for meta, text in files or []],
            "tools": sorted(file_tools.values(), key=lambda t: t["name"]),
            "mcp_servers": [_file_mcp_server(ids[sid], server) for sid, server in (mcp_servers or {}).items()
                            if sid in ids],
            "skills": [], "metadata": {"exported_by": "letta_ray"},
            "created_at": datetime.now(UTC).isoformat()}


def _file_message(m: Message, local_id: str, agent_local: str, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if m.reasoning:
        content.append({"type": "reasoning", "is_native": True, "reasoning": m.reasoning, "signature": None})
    out: dict[str, Any] = {"type": "message", "role": m.role, "id": local_id, "agent_id": agent_local,
                           "name": m.name, "otid": m.otid, "sender_id": m.sender_id, "group_id": None,
                           "model": model, "created_at": m.created_at.isoformat(), "tool_call_id": m.tool_call_id,
                           "tool_calls": [{"id": c.id, "type": "function",
                                           "function": {"name": c.name, "arguments": c.arguments}}
                                          for c in m.tool_calls] or None,
                           "tool_returns": []}
    if m.role == "tool":
        out["tool_returns"] = [{"tool_call_id": m.tool_call_id, "status": m.tool_status or "success",
                                "stdout": None, "stderr": None, "func_response": m.content or ""}]
    if m.content:
        content.append({"type": "text", "text": m.content, "signature": None})
    out["content"] = content
    return out


def _file_tool(local_id: str, name: str, tool: Tool | None, kept: dict[str, Any] | None) -> dict[str, Any]:
    if tool is None:  # a tool we do not have (a Letta built-in): written back as the file had it
        return {"name": name, "tool_type": "letta_builtin", "source_code": None, "json_schema": None, "tags": [],
                "source_type": "python", **((kept or {}).get(name) or {}), "id": local_id}
    builtin = tool.tool_type == "letta_core"
    return {"id": local_id, "name": tool.name, "description": tool.description,
            "tool_type": _BASE_TOOL_TYPES.get(tool.name, "letta_core") if builtin else tool.tool_type,
            "source_type": "python", "source_code": None if builtin else tool.source_code,
            "json_schema": tool.json_schema, "tags": tool.tags, "return_char_limit": tool.return_char_limit,
            "pip_requirements": [r.model_dump() for r in tool.pip_requirements] or None,
            "default_requires_approval": tool.default_requires_approval, "metadata_": tool.metadata or {}}


def _file_mcp_server(local_id: str, server: MCPServer) -> dict[str, Any]:
    config = server.config
    out: dict[str, Any] = {"id": local_id, "server_type": config.mcp_server_type, "server_name": server.server_name,
                           "server_url": None, "stdio_config": None, "metadata_": None}
    if isinstance(config, StdioServerConfig):
        out["stdio_config"] = {"server_name": server.server_name, "type": "stdio", "command": config.command,
                               "args": config.args}
    else:
        out["server_url"] = config.server_url
    return out


def _letta_llm_config(config: LLMConfig, original: dict[str, Any] | None) -> dict[str, Any]:
    provider, _, model = config.model.partition("/")
    back = {v: k for k, v in _PROVIDERS.items()}
    out = dict(original or {})
    if not model:
        provider, model = "openai", config.model
    out.update({"model": model, "model_endpoint_type": back.get(provider, provider),
                "model_endpoint": config.model_endpoint, "context_window": config.context_window,
                "temperature": config.temperature, "max_tokens": config.max_tokens,
                "handle": config.handle or config.model})
    if not config.model_endpoint:
        out["model_endpoint"] = (original or {}).get("model_endpoint") or (
            "https://api.openai.com/v1" if provider == "openai" else None)
    return out


def _letta_embedding_config(config: EmbeddingConfig) -> dict[str, Any]:
    provider, _, model = config.embedding_model.partition("/")
    return {"embedding_endpoint_type": provider if model else "hugging-face",
            "embedding_model": model or config.embedding_model, "embedding_dim": config.embedding_dim,
            "embedding_endpoint": config.embedding_endpoint, "embedding_chunk_size": config.embedding_chunk_size,
            "handle": config.handle}
